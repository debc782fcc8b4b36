"""Infrastructure: what every room stands on and nothing of Switchboard's own meaning.

Typed settings (``config``), the one error hierarchy (``errors``), log lines (``logs``),
telling an outage from our own load (``outage``), the one retry policy (``retry``), counters
(``metrics``), the job transport (``queue``) and its names (``constants``), inbound limits
(``throttle``), portable SQL helpers (``sql``), making provider data storable (``clean``), phone
numbers (``phone``) and what the core knows of channels (``routing``). It imports no other room
of ``dispatch``.
"""
