"""Language: words in and out, before any meaning is given to them.

Text normalized for matching (``text``), the gateway's own phrases in the user's language
(``i18n``) and typed values read from what someone typed (``slots``). It imports only
``dispatch.infra``.
"""
