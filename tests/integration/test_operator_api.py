"""The operator API on the production parts: listing activities, cancelling them."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, select

from dispatch.record.models import Activity, ActivityStatus, Message
from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import ADMIN, count_rows, open_db
from tests.support.approvals import REFUND_CATALOG
from tests.support.cluster import redis_through
from tests.support.flow import outbound, post, wait_for
from tests.support.proxy import FaultProxy
from tests.support.runtime import running_worker, runtime_for
from workers.recovery import recover

pytestmark = pytest.mark.services


@pytest.fixture
def settings(make_settings: Callable[..., Settings], own_pg: str, redis_url: str) -> Settings:
    # A database of its own: listings and counts see only this test's activities.
    return make_settings(database_url=own_pg, redis_url=redis_url)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.headers.update(ADMIN)
        yield test_client


async def _answered(client: AsyncTestClient[Any], text: str, *, id: str, conversation: str) -> int:
    body = (await post(client, text, id=id, conversation=conversation)).json()
    [reply] = await outbound(client, body["conversation_id"])
    return int(reply["activity_id"])


async def test_activities_are_listed_newest_first_filtered_and_paged_by_cursor(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        ids = [
            await _answered(client, f"echo {n}", id=f"list-{n}", conversation=f"list-{n}")
            for n in range(5)
        ]
        helped = await _answered(client, "help", id="list-help", conversation="list-help")

    everything = (await client.get("/api/v1/activities")).json()
    assert [a["id"] for a in everything["items"]] == [helped, *reversed(ids)]
    assert everything["next_cursor"] is None
    assert "events" not in everything["items"][0] or everything["items"][0]["events"] == []

    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        query: dict[str, Any] = {"agent": "assistant", "action_type": "echo", "limit": 2}
        if cursor is not None:
            query["cursor"] = cursor
        page = (await client.get("/api/v1/activities", params=query)).json()
        pages += 1
        seen += [a["id"] for a in page["items"]]
        assert {a["action_type"] for a in page["items"]} <= {"echo"}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # every one once, in order, across pages
    assert pages == 3

    completed = (await client.get("/api/v1/activities", params={"status": "completed"})).json()
    assert len(completed["items"]) == 6
    failed = (await client.get("/api/v1/activities", params={"status": "failed"})).json()
    assert failed["items"] == []
    rest = (await client.get("/api/v1/activities", params={"channel": "rest"})).json()
    assert len(rest["items"]) == 6
    actor = everything["items"][0]["actor_user_id"]
    mine = (await client.get("/api/v1/activities", params={"actor": actor})).json()
    assert {a["actor_user_id"] for a in mine["items"]} == {actor}
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat()
    future = (await client.get("/api/v1/activities", params={"since": later})).json()
    assert future == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"status": "sleeping"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"since": "yesterday"}, "since"),
        ({"actor": "x"}, "actor"),
    ],
)
async def test_a_bad_listing_query_is_a_400_naming_the_parameter(
    client: AsyncTestClient[Any], query: dict[str, Any], names: str
) -> None:
    response = await client.get("/api/v1/activities", params=query)
    assert response.status_code == 400, response.text
    assert names in response.text


async def test_users_are_listed_a_page_at_a_time_with_their_addresses_in_two_statements(
    client: AsyncTestClient[Any],
) -> None:
    """However many users there are, a page is what is asked for (a deployment of ten
    thousand people listed them all, a statement each for their addresses, past the gateway's
    answer deadline); the next page starts after the last id; a role narrows it."""
    made = []
    for n in range(5):
        role = "supervisor" if n % 2 else "guest"
        user = (await client.post("/api/v1/users", json={"name": f"u{n}", "role": role})).json()
        linked = await client.post(
            f"/api/v1/users/{user['id']}/identities", json={"channel": "rest", "address": f"a{n}"}
        )
        assert linked.status_code == 200, linked.text
        made.append(user["id"])
    engine = client.app.state.runtime.engine
    statements: list[str] = []

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", counted)
    try:
        first = (await client.get("/api/v1/users", params={"limit": 2})).json()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", counted)
    assert len(statements) == 2, statements
    everyone: list[dict[str, Any]] = []
    after = 0
    while page := (await client.get("/api/v1/users", params={"after": after, "limit": 2})).json():
        assert len(page) <= 2
        everyone += page
        after = page[-1]["id"]
    assert [u["id"] for u in everyone] == sorted(u["id"] for u in everyone)
    assert everyone[:2] == first
    assert [u["id"] for u in everyone if u["id"] in made] == made
    mine = {u["id"]: u for u in everyone}
    assert [i["address"] for i in mine[made[3]]["identities"]] == ["a3"]
    supervisors = (await client.get("/api/v1/users", params={"role": "supervisor"})).json()
    assert [u["id"] for u in supervisors if u["id"] in made] == [made[1], made[3]]
    assert {u["role"] for u in supervisors} == {"supervisor"}
    bad = await client.get("/api/v1/users", params={"limit": 501})
    assert bad.status_code == 400
    assert "limit" in bad.text


async def test_a_listing_needs_an_operator_token(client: AsyncTestClient[Any]) -> None:
    response = await client.get("/api/v1/activities", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


async def test_cancelling_a_queued_activity_tells_the_requester_and_the_handler_never_runs(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    body = (await post(client, "echo never said", id="cx-1", conversation="cx")).json()
    conversation_id = body["conversation_id"]
    async with runtime_for(settings) as runtime:
        # Understood and recorded (queued), not run: no worker has it yet.
        dispatched = await runtime.dispatcher.dispatch_message(body["message_id"], lease_s=30)
        assert dispatched is not None
        assert dispatched.status == ActivityStatus.QUEUED.value
        activity_id = dispatched.activity_id

    response = await client.post(f"/api/v1/activities/{activity_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    again = await client.post(f"/api/v1/activities/{activity_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == "conflict"
    assert "cancelled" in again.json()["detail"]

    async with running_worker(settings):
        [notice] = await outbound(client, conversation_id)
        # A later message of the conversation is not held back by the cancelled one.
        later = (await post(client, "echo after", id="cx-2", conversation="cx")).json()
        replies = await outbound(client, later["conversation_id"], count=2)
    assert notice["text"].startswith(f"Request #{activity_id} was cancelled by an operator")
    assert [r["text"] for r in replies][-1] == "after"
    assert all(r["text"] != "never said" for r in replies)

    activity = (await client.get(f"/api/v1/activities/{activity_id}")).json()
    assert activity["status"] == "cancelled"
    assert activity["started_at"] is None
    cancelled = [e for e in activity["events"] if e["kind"] == "cancelled"]
    assert len(cancelled) == 1
    assert cancelled[0]["actor"] == "token:admin"  # the deployment's admin token
    async with open_db(settings.database.url) as sessions:
        assert await count_rows(sessions, Activity, Activity.status == "cancelled") == 1


async def test_a_finished_activity_cannot_be_cancelled_and_an_unknown_one_is_not_found(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        activity_id = await _answered(client, "echo done", id="cf-1", conversation="cf")
    response = await client.post(f"/api/v1/activities/{activity_id}/cancel")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"request #{activity_id} is completed; only one that has not ended can be cancelled"
    )
    assert (await client.get(f"/api/v1/activities/{activity_id}")).json()["status"] == "completed"

    missing = await client.post("/api/v1/activities/987654321/cancel")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


async def test_cancelling_needs_an_operator(client: AsyncTestClient[Any]) -> None:
    response = await client.post("/api/v1/activities/1/cancel", headers={"Authorization": ""})
    assert response.status_code == 401


async def _completed(client: AsyncTestClient[Any], url: str) -> None:
    """Wait until the activity at ``url`` has completed."""

    async def completed() -> bool:
        found = (await client.get(url)).json()
        return bool(found["status"] == "completed")

    await wait_for(completed)


async def _execute(client: AsyncTestClient[Any], **body: Any) -> Any:
    return await client.post("/api/v1/actions/execute", json=body)


async def test_execute_without_waiting_is_queued_then_runs_and_a_key_makes_it_once(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    first = await _execute(
        client,
        agent="assistant",
        action_type="echo",
        payload={"text": "once"},
        idempotency_key="job-42",
    )
    assert first.status_code == 202, first.text
    assert (first.json()["status"], first.json()["created"]) == ("queued", True)
    again = await _execute(
        client,
        agent="assistant",
        action_type="echo",
        payload={"text": "once"},
        idempotency_key="job-42",
        sync=True,
        timeout_s=0.2,
    )
    assert again.status_code == 202  # not run yet: no worker
    assert again.json()["activity_id"] == first.json()["activity_id"]
    assert again.json()["created"] is False
    other = await _execute(
        client, agent="assistant", action_type="echo", payload={"text": "2"}, idempotency_key="x"
    )
    assert other.json()["activity_id"] != first.json()["activity_id"]
    async with running_worker(settings):
        await _completed(client, first.json()["activity_url"])
    done = (await client.get(first.json()["activity_url"])).json()
    assert done["details"]["result"]["text"] == "once"
    assert [e["kind"] for e in done["events"]] == ["created", "started", "completed"]
    assert done["events"][0]["actor"] == "token:admin"
    assert done["conversation_id"] is None  # no one to reply to: the caller reads the result
    async with open_db(settings.database.url) as sessions:
        assert await count_rows(sessions, Activity, Activity.action_type == "echo") == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent": "assistant", "action_type": "fly", "payload": {}}, "action_type"),
        ({"agent": "nobody", "action_type": "echo", "payload": {"text": "x"}}, "action_type"),
        ({"agent": "assistant", "action_type": "echo", "payload": {}}, "payload.text"),
        ({"agent": "assistant", "action_type": "echo", "payload": {"txt": "x"}}, "payload.txt"),
        ({"agent": "assistant", "action_type": "echo", "payload": {"text": 5}}, "payload.text"),
        ({"action_type": "echo", "payload": {"text": "x"}}, "agent"),
        ({"intent": "zzz qqq"}, "intent"),
        ({"intent": "echo hi", "agent": "assistant"}, "intent"),
    ],
)
async def test_execute_refuses_what_the_catalog_does_not_take_with_a_422_naming_it(
    client: AsyncTestClient[Any], settings: Settings, body: dict[str, Any], field: str
) -> None:
    response = await _execute(client, **body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "unprocessable"
    assert response.json()["extra"]["field"] == field
    assert response.json()["detail"].startswith(f"{field}: ")
    async with open_db(settings.database.url) as sessions:
        assert await count_rows(sessions, Activity) == 0  # nothing half stored


@pytest.mark.parametrize(
    "body",
    [
        {"agent": "assistant", "action_type": "echo", "payload": {"text": "x"}, "sync": "yes"},
        {"agent": "assistant", "action_type": "echo", "timeout_s": 31},
        {"agent": "assistant", "action_type": "echo", "priority": "urgent"},
        {"agent": "assistant", "action_type": "echo", "surprise": 1},
    ],
)
async def test_a_malformed_execute_is_a_400(
    client: AsyncTestClient[Any], body: dict[str, Any]
) -> None:
    response = await _execute(client, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_input"


async def test_with_the_queue_down_execute_records_it_and_it_runs_once_the_queue_is_back(
    make_settings: Callable[..., Settings], own_pg: str, redis_url: str
) -> None:
    """Redis refuses connections (a proxy in front of it): the activity is recorded and the
    caller told (202 with a warning); once Redis is back, recovery queues it and it runs."""
    port = urlparse(redis_url).port or 6379
    with FaultProxy("127.0.0.1", port) as proxy:
        settings = make_settings(
            database_url=own_pg, redis_url=redis_through(redis_url, proxy.port)
        )
        async with AsyncTestClient(create_app(settings)) as client:
            client.headers.update(ADMIN)
            proxy.refuse()
            response = await _execute(
                client, agent="assistant", action_type="echo", payload={"text": "later"}
            )
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["status"] == "queued"
            assert "queue cannot be reached" in body["warning"]
            proxy.heal()
            async with runtime_for(settings) as runtime:
                assert (await recover(runtime, older_than_s=0))["activities"] == 1
            async with running_worker(settings):
                await _completed(client, body["activity_url"])


async def test_a_cancelled_request_is_retried_as_a_new_linked_activity_that_runs(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    queued = await _execute(
        client, agent="assistant", action_type="echo", payload={"text": "again"}
    )
    old = queued.json()["activity_id"]
    assert (await client.post(f"/api/v1/activities/{old}/cancel")).status_code == 200
    retried = await client.post(f"/api/v1/activities/{old}/retry")
    assert retried.status_code == 202, retried.text
    new = retried.json()["activity_id"]
    assert new != old
    async with running_worker(settings):
        await _completed(client, f"/api/v1/activities/{new}")
    fresh = (await client.get(f"/api/v1/activities/{new}")).json()
    assert fresh["details"]["retry_of"] == old
    assert fresh["details"]["result"]["text"] == "again"
    assert fresh["events"][0]["data"]["retry_of"] == old
    before = (await client.get(f"/api/v1/activities/{old}")).json()
    assert before["status"] == "cancelled"  # the old one stays as it ended
    assert [e["data"] for e in before["events"] if e["kind"] == "retried"] == [{"activity_id": new}]
    done = await client.post(f"/api/v1/activities/{new}/retry")
    assert (done.status_code, done.json()["error"]) == (409, "conflict")
    missing = await client.post("/api/v1/activities/987654321/retry")
    assert missing.status_code == 404


async def test_conversations_are_listed_newest_first_by_channel_and_user_in_pages(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    made = []
    for n in range(3):
        body = (
            await post(
                client, f"echo {n}", id=f"conv-{n}", conversation=f"conv-{n}", sender=f"s{n}"
            )
        ).json()
        made.append(body["conversation_id"])
    first = (await client.get("/api/v1/conversations", params={"limit": 2})).json()
    assert [c["id"] for c in first["items"]] == [made[2], made[1]]
    assert first["items"][0]["channel"] == "rest"
    assert first["items"][0]["key"] == "conv-2"
    rest = (
        await client.get(
            "/api/v1/conversations", params={"limit": 2, "cursor": first["next_cursor"]}
        )
    ).json()
    assert rest == {"items": [rest["items"][0]], "next_cursor": None}
    assert rest["items"][0]["id"] == made[0]
    user = first["items"][0]["user_id"]
    theirs = (await client.get("/api/v1/conversations", params={"user": user})).json()
    assert [c["id"] for c in theirs["items"]] == [made[2]]
    none = (await client.get("/api/v1/conversations", params={"channel": "telegram"})).json()
    assert none == {"items": [], "next_cursor": None}
    bad = await client.get("/api/v1/conversations", params={"cursor": "-1"})
    assert bad.status_code == 400


async def test_an_audit_note_is_recorded_as_ended_and_nothing_runs(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    response = await client.post(
        "/api/v1/activities",
        json={
            "agent": "finance",
            "action_type": "manual_refund",
            "description": "Refunded by phone",
            "status": "completed",
            "payload": {"invoice": 12},
            "result": {"text": "refunded 120 EUR"},
        },
    )
    assert response.status_code == 201, response.text
    note = response.json()
    assert (note["status"], note["agent_name"]) == ("completed", "finance")
    assert note["completed_at"] is not None
    assert note["started_at"] is None
    assert [e["kind"] for e in note["events"]] == ["created", "completed"]
    assert note["events"][0]["data"]["audit_only"] is True
    assert note["details"]["result"] == {"text": "refunded 120 EUR"}
    async with running_worker(settings):
        await asyncio.sleep(0.5)  # a worker finds nothing to run for it
    after = (await client.get(f"/api/v1/activities/{note['id']}")).json()
    assert [e["kind"] for e in after["events"]] == ["created", "completed"]
    listed = (await client.get("/api/v1/activities", params={"agent": "finance"})).json()
    assert [a["id"] for a in listed["items"]] == [note["id"]]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"agent": "a", "action_type": "b", "status": "queued"}, 400, "status"),
        ({"agent": "a", "action_type": "b", "status": "in_progress"}, 400, "status"),
        ({"agent": "a", "action_type": "b", "status": "done"}, 400, "status"),
        ({"agent": "", "action_type": "b", "status": "completed"}, 400, "agent"),
        ({"action_type": "b", "status": "completed"}, 400, "agent"),
    ],
)
async def test_a_bad_audit_note_is_refused_and_nothing_is_stored(
    client: AsyncTestClient[Any],
    settings: Settings,
    body: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    response = await client.post("/api/v1/activities", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text
    async with open_db(settings.database.url) as sessions:
        assert await count_rows(sessions, Activity) == 0


async def test_the_queue_and_the_workers_as_operators_see_them(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    for n in range(3):
        await post(client, f"echo q{n}", id=f"q-{n}", conversation=f"q-{n}", sender=f"q{n}")
    waiting = (await client.get("/api/v1/queue")).json()
    assert waiting["queue"]["waiting"] == {"dispatch_message": 3}
    assert waiting["queue"]["scheduled"] == 0
    assert waiting["queue"]["oldest_waiting_s"] >= 0
    assert waiting["database"] == {"messages_awaiting_dispatch": 3, "activities_queued": 0}
    assert waiting["queue"]["running"] == 0
    # A job a worker has taken stays in arq's queue until it ends: counted as running.
    from arq.constants import in_progress_key_prefix
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.queue.redis_url or "")
    [first, *_] = await redis.zrange(f"{settings.queue.prefix}:queue", 0, 0)
    await redis.set(in_progress_key_prefix + first.decode(), b"1", px=60_000)
    taken = (await client.get("/api/v1/queue")).json()["queue"]
    assert (taken["waiting"], taken["running"]) == ({"dispatch_message": 2}, 1)
    await redis.delete(in_progress_key_prefix + first.decode())
    await redis.aclose()
    assert (await client.get("/api/v1/workers")).json() == []
    async with running_worker(settings):

        async def answered() -> Any:
            found = (await client.get("/api/v1/queue")).json()
            return found if found["database"]["messages_awaiting_dispatch"] == 0 else None

        await wait_for(answered)
        [worker] = (await client.get("/api/v1/workers")).json()
        assert worker["pid"] == os.getpid()  # the worker runs in this test's process
        assert worker["last_seen"] >= worker["started_at"]
        assert {"jobs_running", "jobs_done", "jobs_failed", "jobs_retried"} <= set(worker)
    drained = (await client.get("/api/v1/queue")).json()
    # Only arq's next recovery pass (a cron job) may be left, once it falls due.
    assert set(drained["queue"]["waiting"]) <= {"recover"}
    assert drained["database"] == {"messages_awaiting_dispatch": 0, "activities_queued": 0}
    assert (await client.get("/api/v1/workers")).json() == []  # a stopped worker says so


async def test_workers_and_queue_need_an_operator(client: AsyncTestClient[Any]) -> None:
    for path in ("/api/v1/workers", "/api/v1/queue"):
        response = await client.get(path, headers={"Authorization": "Bearer nope"})
        assert response.status_code == 401


def _scraped(text: str) -> dict[str, float]:
    """Every sample, as Prometheus' own parser reads the page (labels in name order); each
    family must have HELP."""
    series: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            series[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return series


async def test_metrics_count_what_the_database_recorded(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        for n in range(2):
            await _answered(client, f"echo m{n}", id=f"m-{n}", conversation=f"m-{n}")
        executed = await _execute(
            client, agent="assistant", action_type="echo", payload={"text": "x"}
        )

        await _completed(client, executed.json()["activity_url"])
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    series = _scraped(response.text)
    inbound = 'switchboard_messages{channel="rest",direction="inbound",state="dispatched"}'
    assert series[inbound] == 2
    assert (
        series['switchboard_messages{channel="rest",direction="outbound",state="delivered"}'] == 2
    )
    assert (
        series['switchboard_activities{action_type="echo",agent="assistant",status="completed"}']
        == 3
    )
    buckets = [
        v for k, v in series.items() if k.startswith("switchboard_handler_duration_seconds_bucket")
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert series['switchboard_handler_duration_seconds_bucket{le="+Inf"}'] == 3
    assert series["switchboard_handler_duration_seconds_count"] == 3
    assert series["switchboard_handler_duration_seconds_sum"] > 0
    assert "switchboard_queue_scheduled" in series  # arq's next recovery pass may be there
    assert "# TYPE switchboard_handler_duration_seconds histogram" in response.text
    # Counters are there from the start, at 0 until raised.
    assert series["switchboard_llm_accepted_total"] == 0
    assert series['switchboard_approval_decisions_total{decision="approved"}'] == 0


async def test_metrics_labels_are_only_what_the_deployment_declares(
    client: AsyncTestClient[Any],
) -> None:
    """An audit note may name any agent; the page counts what the catalog does not declare
    as ``other`` (no client can add a series), and a large count reads as a whole number."""
    for n in range(3):
        note = {"agent": f"invented-{n}", "action_type": "x", "status": "completed"}
        assert (await client.post("/api/v1/activities", json=note)).status_code == 201
    note = {"agent": "assistant", "action_type": "made-up", "status": "completed"}
    assert (await client.post("/api/v1/activities", json=note)).status_code == 201
    text = (await client.get("/metrics")).text
    assert "invented" not in text
    assert "made-up" not in text
    series = _scraped(text)
    other = 'switchboard_activities{action_type="other",agent="other",status="completed"}'
    assert series[other] == 3
    assistant = 'switchboard_activities{action_type="other",agent="assistant",status="completed"}'
    assert series[assistant] == 1


async def test_the_metrics_summary_counts_a_window_with_rates_and_percentiles(
    client: AsyncTestClient[Any], settings: Settings
) -> None:
    async with running_worker(settings):
        for n in range(3):
            await _answered(client, f"echo s{n}", id=f"s-{n}", conversation=f"s-{n}")
        await _answered(client, "help", id="s-help", conversation="s-help")
    queued = await _execute(client, agent="assistant", action_type="echo", payload={"text": "q"})
    assert queued.status_code == 202
    summary = (await client.get("/api/v1/metrics/summary")).json()
    assert summary["window_s"] == 3600
    assert summary["by_status"] == {"completed": 4, "queued": 1}
    assert summary["by_agent"]["assistant"] == 4
    assert summary["success_rate"] == 1.0
    [echo] = [a for a in summary["actions"] if a["action_type"] == "echo"]
    assert (echo["runs"], echo["completed"], echo["failed"]) == (3, 3, 0)
    assert 0 < echo["p50_ms"] <= echo["p95_ms"]
    empty = (await client.get("/api/v1/metrics/summary", params={"window_s": 0.001})).json()
    assert empty["by_status"] == {}
    assert empty["success_rate"] is None
    bad = await client.get("/api/v1/metrics/summary", params={"window_s": -1})
    assert bad.status_code == 400


async def test_critical_and_high_runs_are_taken_before_normal_ones_queued_earlier(
    make_settings: Callable[..., Settings], own_pg: str, redis_url: str
) -> None:
    """Queued while the worker is busy elsewhere (here: not yet started), then taken one at a
    time: critical first, then high, then the normal ones in the order they came."""
    settings = make_settings(database_url=own_pg, redis_url=redis_url, worker_max_jobs=1)
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        ids: dict[str, int] = {}
        for name, priority in [
            ("n1", "normal"),
            ("n2", "normal"),
            ("low", "low"),
            ("high", "high"),
            ("crit", "critical"),
        ]:
            body = {"agent": "assistant", "action_type": "echo", "payload": {"text": name}}
            response = await _execute(client, **body, priority=priority)
            assert response.status_code == 202, response.text
            ids[name] = response.json()["activity_id"]
        async with running_worker(settings):
            for activity_id in ids.values():
                await _completed(client, f"/api/v1/activities/{activity_id}")
        started = {}
        for name, activity_id in ids.items():
            found = (await client.get(f"/api/v1/activities/{activity_id}")).json()
            assert found["priority"] in {"normal", "low", "high", "critical"}
            started[name] = next(e["id"] for e in found["events"] if e["kind"] == "started")
    assert sorted(started, key=started.__getitem__) == ["crit", "high", "n1", "n2", "low"]


async def test_hostile_values_on_postgres_are_a_clear_answer_never_a_500(
    client: AsyncTestClient[Any],
) -> None:
    """What the fuzzer on SQLite cannot find: NULs PostgreSQL refuses, a time without a zone,
    a cursor of digits that are not ASCII."""
    # RFC 3339, as the document says: a time without its offset could be any zone's.
    naive = await client.get("/api/v1/activities", params={"since": "2024-01-01T00:00:00"})
    assert (naive.status_code, naive.json()["extra"]) == (400, {"field": "since"})
    assert (await client.get("/api/v1/activities", params={"cursor": "²"})).status_code == 400
    for params in ({"agent": "a\x00b"}, {"channel": "\x00"}, {"action_type": "x\x00"}):
        listed = await client.get("/api/v1/activities", params=params)
        assert listed.status_code == 200, listed.text
        assert listed.json()["items"] == []
    conversations = await client.get("/api/v1/conversations", params={"channel": "r\x00"})
    assert conversations.status_code == 200
    executed = await _execute(
        client,
        agent="assistant",
        action_type="echo",
        payload={"text": "a\x00b"},
        idempotency_key="k\x00",
    )
    assert executed.status_code == 202, executed.text
    found = (await client.get(executed.json()["activity_url"])).json()
    assert found["details"]["payload"] == {"text": "ab"}
    again = await _execute(
        client,
        agent="assistant",
        action_type="echo",
        payload={"text": "a\x00b"},
        idempotency_key="k\x00",
    )
    assert again.json()["activity_id"] == executed.json()["activity_id"]


async def test_cancelling_withdraws_approval_requests_not_yet_sent(
    make_settings: Callable[..., Settings], own_pg: str, redis_url: str, tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(REFUND_CATALOG)
    settings = make_settings(database_url=own_pg, redis_url=redis_url, catalog=catalog)
    async with AsyncTestClient(create_app(settings)) as client:
        client.headers.update(ADMIN)
        sup = (
            await client.post("/api/v1/users", json={"name": "sup", "role": "supervisor"})
        ).json()
        linked = await client.post(
            f"/api/v1/users/{sup['id']}/identities", json={"channel": "rest", "address": "sup"}
        )
        assert linked.status_code == 200, linked.text
        asked = await _execute(
            client, agent="billing", action_type="refund", payload={"invoice": 5}
        )
        assert asked.json()["status"] == "awaiting_approval"
        activity_id = asked.json()["activity_id"]
        # No worker yet: the request to the supervisor is written, not sent.
        cancelled = await client.post(f"/api/v1/activities/{activity_id}/cancel")
        assert cancelled.status_code == 200
        async with running_worker(settings):
            await asyncio.sleep(1.0)  # the woken run job finds nothing to send
        async with open_db(settings.database.url) as sessions, sessions() as session:
            rows = list(
                await session.scalars(
                    select(Message).where(
                        Message.activity_id == activity_id, Message.direction == "outbound"
                    )
                )
            )
    assert rows, "the approval request was written"
    assert {(r.delivery, r.delivery_error) for r in rows} == {
        ("failed", "withdrawn: the request was cancelled")
    }
