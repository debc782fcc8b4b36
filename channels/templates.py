"""Catalog templates: what a channel sends instead of a free-form reply it may not send (WhatsApp
outside its 24-hour window).

A catalog action's ``templates.<channel>`` entry has that channel's own shape; every string in it
is a format string over ``{text}`` (the reply) and ``{activity_id}``.
"""

from __future__ import annotations

from typing import Any

from dispatch.record.messages import OutboundMessage

__all__ = ["check_placeholders", "fill_template"]


def fill_template(value: Any, message: OutboundMessage) -> Any:
    """``value`` (a template's variables or components) with every string formatted over
    ``{text}`` (the reply) and ``{activity_id}``."""
    if isinstance(value, str):
        return value.format(text=message.text, activity_id=message.activity_id or "")
    if isinstance(value, dict):
        return {key: fill_template(item, message) for key, item in value.items()}
    if isinstance(value, list):
        return [fill_template(item, message) for item in value]
    return value


_SAMPLE = OutboundMessage(
    channel="", conversation_key="", conversation_id=0, text="", activity_id=1
)


def check_placeholders(value: Any) -> None:
    """Refuse a template whose strings use placeholders other than the two it may."""
    try:
        fill_template(value, _SAMPLE)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"placeholders may only be {{text}} and {{activity_id}} ({exc!r})"
        ) from None
