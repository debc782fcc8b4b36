"""What every WhatsApp provider shares: people keyed by their E.164 number, and the 24-hour
customer-service window outside which only an approved template may be sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence

from dispatch.infra.phone import to_e164
from dispatch.record.messages import Delivered, OutboundMessage
from dispatch.record.models import Delivery
from dispatch.record.users import IdentityKind

__all__ = ["WHATSAPP", "WINDOW", "WindowClosed", "outside_window", "send_in_window"]

Send = Callable[[], Awaitable[Delivered]]

WHATSAPP = IdentityKind(
    name="whatsapp", normalize=to_e164, help="WhatsApp number, E.164 (+34600111222)"
)
"""A person is one user whichever WhatsApp provider carries them."""

WINDOW = dt.timedelta(hours=24)

NO_TEMPLATE = "outside WhatsApp's 24-hour window and no template is configured for this reply"


class WindowClosed(Exception):
    """The provider refused a free-form message: the window is closed (Twilio 63016, Meta
    131047). Raised by a channel's send of one part; :func:`send_in_window` decides."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def outside_window(message: OutboundMessage) -> bool:
    """Whether the user last wrote more than 24 hours ago (free-form text is refused then)."""
    last = message.last_inbound_at
    return last is not None and dt.datetime.now(dt.UTC) - last > WINDOW


async def send_in_window(
    message: OutboundMessage, parts: Sequence[Send], template: Send
) -> Delivered:
    """Send a reply's parts in order, or its template when the window is closed.

    Closed by our clock, or by the provider's answer to the first part, the action's template
    replaces the whole reply (it carries the text), and nothing else is sent; without one the
    reply fails with the reason. A window that closes after some parts went out fails the rest.
    """
    if outside_window(message):
        return await _template_or_fail(message, template, NO_TEMPLATE)
    last = Delivered(status=Delivery.SENT.value)
    for n, part in enumerate(parts):
        try:
            last = await part()
        except WindowClosed as closed:
            if n == 0:
                return await _template_or_fail(message, template, closed.reason)
            return Delivered(status=Delivery.FAILED.value, error=closed.reason)
        if last.status == Delivery.FAILED:
            return last
    return last


async def _template_or_fail(message: OutboundMessage, template: Send, reason: str) -> Delivered:
    if message.template is None:
        return Delivered(status=Delivery.FAILED.value, error=reason)
    try:
        return await template()
    except WindowClosed as closed:
        return Delivered(status=Delivery.FAILED.value, error=closed.reason)
