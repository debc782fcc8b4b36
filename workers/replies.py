"""Handing an activity's written reply to the channel its message came from, at most once."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from channels.registry import ChannelRegistry
from dispatch.language.i18n import language_of
from dispatch.policy.catalog import Catalog
from dispatch.record.activities import SENDING_HEARTBEAT_S, ActivityLog, ActivityView
from dispatch.record.delivery import Deliveries, DeliveryUpdate
from dispatch.record.messages import Choice, Media, OutboundMessage
from dispatch.record.models import Delivery
from dispatch.record.outbox import Outbox

__all__ = ["Delivered", "ReplySender"]

log = logging.getLogger("switchboard.replies")


class Delivered(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`ReplySender.deliver` did."""

    sent: int = 0
    """Replies handed to their channel by this call."""
    looked: bool = False
    """Whether the conversation's next activity was looked up as the last reply was recorded."""
    following: int | None = None
    """If ``looked``: that activity, if any."""


class _Outcome(msgspec.Struct, frozen=True, kw_only=True):
    status: Delivery
    following: int | None = None


class ReplySender:
    def __init__(
        self,
        *,
        deliveries: Deliveries,
        channels: ChannelRegistry,
        activities: ActivityLog,
        catalog: Catalog,
    ) -> None:
        self._deliveries = deliveries
        self._channels = channels
        self._activities = activities
        self._catalog = catalog

    async def deliver(
        self,
        activity: ActivityView,
        outbox: Outbox | None = None,
        *,
        turn: tuple[int, int] | None = None,
    ) -> Delivered:
        """Send the activity's pending replies (or ``outbox``, reserved for this call as its
        run ended); returns how many this call handed over and, if ``turn`` (its conversation
        and order key) is given and this call recorded the last reply it owes its
        conversation, the next activity waiting its turn there, looked up in that record's
        transaction (see :meth:`MessageStore.end_delivery`).

        Each reply is claimed (pending → sending) before the channel is called, so a crash in
        between loses that reply rather than ever sending it twice. A reply reserved for this
        call that it never handed over (it was stopped first) is given back to be sent later.
        """
        if outbox is None:
            outbox = await self._deliveries.outbox(activity.id, activity.source_message_id)
        if not outbox.replies:
            return Delivered()
        handed: set[int] = set()
        try:
            return await self._hand_over(activity, outbox, handed, turn)
        finally:
            if outbox.reserved is not None and outbox.reserved not in handed:
                await asyncio.shield(self._deliveries.release_replies([outbox.reserved]))

    async def _hand_over(
        self,
        activity: ActivityView,
        outbox: Outbox,
        handed: set[int],
        turn: tuple[int, int] | None,
    ) -> Delivered:
        action = self._catalog.action(activity.agent_name, activity.action_type)
        templates = action.templates if action else {}
        own_rows = [r.id for r in outbox.replies if r.conversation_id == activity.conversation_id]
        last_own = own_rows[-1] if turn is not None and own_rows else None
        sent = 0
        looked, following = False, None
        failed_part: dict[int, int] = {}  # per conversation: the part that failed
        for row in outbox.replies:
            conversation = outbox.conversations.get(row.conversation_id)
            if conversation is None:
                continue
            if row.id != outbox.reserved and not await self._deliveries.claim_reply(row.id):
                continue
            handed.add(row.id)
            ends = turn if row.id == last_own else None
            if conversation.id in failed_part:
                # Never leave a gap in a conversation: the rest to it is not sent either.
                error = f"not sent: part {failed_part[conversation.id]} of this reply failed"
                failed = DeliveryUpdate(message_id=row.id, status=Delivery.FAILED, error=error)
                outcome = await self._record(failed, turn=ends)
            else:
                own = conversation.id == activity.conversation_id
                outbound = OutboundMessage(
                    channel=row.channel,
                    conversation_key=conversation.key,
                    conversation_id=conversation.id,
                    text=row.text,
                    media=msgspec.convert(row.media or [], tuple[Media, ...]),
                    activity_id=activity.id,
                    message_id=row.id,
                    in_reply_to=outbox.in_reply_to if own else None,
                    last_inbound_at=conversation.last_inbound_at,
                    # The action's template stands in for its reply to the requester only.
                    template=templates.get(row.channel) if own else None,
                    language=language_of(activity.details),
                    author=(row.raw or {}).get("author"),
                    choices=msgspec.convert(
                        (row.raw or {}).get("choices") or [], tuple[Choice, ...]
                    ),
                )
                outcome = await self._send(outbound, row.id, ends)
                if outcome.status == Delivery.FAILED and row.part is not None:
                    failed_part[conversation.id] = row.part
                sent += 1
            if ends is not None:
                looked, following = True, outcome.following
        return Delivered(sent=sent, looked=looked, following=following)

    async def _send(
        self, outbound: OutboundMessage, message_id: int, turn: tuple[int, int] | None
    ) -> _Outcome:
        external_id: str | None
        error: str | None
        heartbeat = asyncio.create_task(self._still_sending(message_id))
        try:
            delivered = await self._channels.get(outbound.channel).send(outbound)
        except Exception as exc:
            log.exception("reply send failed", extra={"activity_id": outbound.activity_id})
            status = Delivery.FAILED
            external_id, error = None, repr(exc)
        else:
            status = Delivery(delivered.status)
            external_id, error = delivered.external_id, delivered.error
        finally:
            heartbeat.cancel()
        assert outbound.activity_id is not None
        kind = "reply_failed" if status == Delivery.FAILED else "reply_sent"
        change = DeliveryUpdate(
            message_id=message_id,
            status=status,
            external_id=external_id,
            error=error,
            event=(outbound.activity_id, kind),
        )
        return await self._record(change, turn=turn)

    async def _record(self, change: DeliveryUpdate, *, turn: tuple[int, int] | None) -> _Outcome:
        """A reply's outcome; with ``turn``, what waits behind it too (one transaction)."""
        if turn is None:
            await self._deliveries.update_delivery(change)
            return _Outcome(status=change.status)
        following = await self._deliveries.end_delivery(change, turn=turn)
        return _Outcome(status=change.status, following=following)

    async def _still_sending(self, message_id: int) -> None:
        """While a channel takes its time (retries, rate limits), the reply is marked as still
        being sent, so it keeps holding its conversation; a dead sender's stops doing so."""
        while True:
            await asyncio.sleep(SENDING_HEARTBEAT_S)
            try:
                await self._deliveries.touch_sending(message_id)
            except Exception:
                log.warning("could not mark a reply as still sending", exc_info=True)
