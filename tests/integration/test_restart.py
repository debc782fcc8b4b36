"""The embedded default resumes unfinished work after a restart."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import update

from dispatch.record.messages import InboundMessage
from dispatch.record.models import Activity, ActivityStatus
from gateway.settings import Settings
from tests.support.flow import wait_for
from tests.support.runtime import runtime_for
from workers.recovery import recover


async def test_stored_message_and_queued_activity_resume_after_restart(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    settings = make_settings(database_url=sqlite_url)
    async with runtime_for(settings, "gateway") as services:
        # Stored and acknowledged, then the process died before any job ran.
        first = await services.store.accept(
            InboundMessage(
                channel="rest", external_id="r-1", conversation_key="k", sender="s", text="echo uno"
            )
        )
        await services.store.accept(
            InboundMessage(
                channel="rest", external_id="r-2", conversation_key="k", sender="s", text="echo dos"
            )
        )
        # The first got as far as its activity, left queued; the second was never looked at.
        dispatched = await services.dispatcher.dispatch_message(first.message_id, lease_s=30)
        assert dispatched is not None
        assert dispatched.created
        await services.queue.close(grace_s=0)  # "crash": the in-process queue dies with its jobs
        async with services.sessions.begin() as session:
            await session.execute(
                update(Activity).values(status=ActivityStatus.QUEUED.value, started_at=None)
            )

    async with runtime_for(settings, "gateway") as services:

        async def both() -> list[str] | None:
            messages = await services.store.list_messages(first.conversation_id)
            texts = [
                m.text for m in messages if m.direction == "outbound" and m.delivery != "pending"
            ]
            return texts if len(texts) == 2 else None

        assert await wait_for(both) == ["uno", "dos"]


async def test_a_message_is_acknowledged_even_when_the_queue_is_down(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    """Store first: a broken transport costs latency, never the message."""
    settings = make_settings(database_url=sqlite_url)
    async with runtime_for(settings, "gateway") as services:
        queue = services.queue

        async def broken(*_args: object, **_kwargs: object) -> bool:
            raise ConnectionError("queue down")

        original = queue._enqueue
        queue._enqueue = broken  # type: ignore[method-assign]
        accepted = await services.dispatcher.ingest(
            InboundMessage(
                channel="rest",
                external_id="down-1",
                conversation_key="d",
                sender="s",
                text="echo ok",
            )
        )
        assert not accepted.duplicate
        queue._enqueue = original  # type: ignore[method-assign]
        await recover(services, older_than_s=0)

        async def replied() -> list[str] | None:
            messages = await services.store.list_messages(accepted.conversation_id)
            texts = [
                m.text for m in messages if m.direction == "outbound" and m.delivery == "delivered"
            ]
            return texts or None

        assert await wait_for(replied) == ["ok"]
