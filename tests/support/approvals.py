"""The catalog the channel tests of the approval gate share: refunds need a supervisor."""

from __future__ import annotations

REFUND_CATALOG = """
[fallback]
agent = "system"
action = "help"

[agents.billing.actions.refund]
description = "Refund an invoice"
handler = "echo"
public = true
[agents.billing.actions.refund.payload]
invoice = { type = "id" }
[agents.billing.actions.refund.approval]
approvers = ["supervisor"]

[[rules]]
id = "refund"
agent = "billing"
action = "refund"
patterns = ['^(?:refund|reembolsa)\\s+(?:la\\s+factura\\s+)?#?(?P<invoice>\\d+)$']
"""
