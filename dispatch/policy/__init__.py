"""Policy: what may be asked, by whom, and through which steps.

The catalog (``catalog``) and its schema (``specs``): agents, actions, payload schemas, approval
policies and intent rules; the reserved control words no rule may shadow (``control``); workflows
checked when the catalog loads (``workflows``); who may request what (``permissions``). It
imports ``dispatch.infra``, ``dispatch.language`` and ``dispatch.record``.
"""
