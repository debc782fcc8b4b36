"""The approval gate end to end, with real processes: `switchboard users add` registers a
supervisor, `switchboard serve` takes signed WhatsApp webhooks, `switchboard worker` (arq on
Redis, PostgreSQL as the record) runs the jobs, and every message travels through the local
Twilio API server.

A guest asks on WhatsApp for an action that needs approval → the supervisor receives the
request on WhatsApp → replies ``SI <code>`` → the job runs on the arq worker → the guest
receives the result. And the same with a rejection.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN
from tests.e2e.test_processes import gateway_and_worker
from tests.support.approvals import REFUND_CATALOG
from tests.support.flow import wait_for
from tests.support.processes import SWITCHBOARD, child_env, free_port
from tests.support.twilio_api import SentMessage, TwilioApi
from tests.support.twilio_webhook import ACCOUNT_SID, AUTH_TOKEN, inbound_form, signed, twilio_env

pytestmark = pytest.mark.services

GUEST = "whatsapp:+34600111222"
SUPERVISOR = "whatsapp:+34600999888"


def to(api: TwilioApi, number: str) -> list[SentMessage]:
    return [m for m in api.sent if m.to == number]


async def arrives(api: TwilioApi, number: str, pattern: str) -> re.Match[str]:
    """Wait until a message to ``number`` matching ``pattern`` reached the Twilio server."""

    async def found() -> re.Match[str] | None:
        for message in to(api, number):
            match = re.search(pattern, message.body or "")
            if match:
                return match
        return None

    result: re.Match[str] = await wait_for(found, timeout_s=30)
    return result


async def webhook(client: httpx.AsyncClient, text: str, *, sid: str, sender: str) -> None:
    target, body, headers = signed(inbound_form(text, sid=sid, sender=sender))
    response = await client.post(target, content=body, headers=headers)
    assert response.status_code == 200, response.text


async def test_guest_request_approved_then_rejected_over_whatsapp(
    make_env: Callable[..., dict[str, str]],
    pg_migrated: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(REFUND_CATALOG)
    with TwilioApi(ACCOUNT_SID, AUTH_TOKEN) as api:
        env = make_env(
            database_url=pg_migrated,
            redis_url=redis_url,
            port=free_port(),
            catalog=catalog,
            **twilio_env(api.url),
        )
        added = await asyncio.to_thread(
            subprocess.run,
            [*SWITCHBOARD, "users", "add", "Sofía", "--role", "supervisor", "--whatsapp",
             SUPERVISOR.removeprefix("whatsapp:")],
            env=child_env(env), cwd=tmp_path, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "supervisor" in added.stdout

        pids: dict[str, int] = {}
        async with (
            gateway_and_worker(env, tmp_path, pids) as base,
            httpx.AsyncClient(base_url=base, timeout=10, headers=ADMIN) as client,
        ):
            # Approved.
            await webhook(client, "reembolsa la factura 12", sid="SMguest1", sender=GUEST)
            asked = await arrives(api, SUPERVISOR, r"Approval needed for request #(\d+)")
            code = int(asked.group(1))
            # Asked in Spanish: told in Spanish.
            await arrives(
                api, GUEST, rf"La solicitud #{code} \(Refund an invoice\) necesita aprobación"
            )
            request = next(m for m in to(api, SUPERVISOR) if f"#{code}" in (m.body or ""))
            assert "asked by Ana on whatsapp" in (request.body or "")
            assert f"Reply YES {code}" in (request.body or "")

            await webhook(client, f"SI {code}", sid="SMsup1", sender=SUPERVISOR)
            await arrives(api, SUPERVISOR, rf"Approved request #{code}; it runs now\.")
            await arrives(api, GUEST, rf"Sofía aprobó la solicitud #{code}; se ejecuta ahora")
            await arrives(api, GUEST, r"^refund: invoice=12$")
            activity = (await client.get(f"/api/v1/activities/{code}")).json()
            assert activity["status"] == "completed"
            kinds = [e["kind"] for e in activity["events"]]
            assert kinds.index("approved") < kinds.index("started") < kinds.index("completed")
            started = next(e for e in activity["events"] if e["kind"] == "started")
            # Run by the arq worker process, not the gateway that took the webhooks.
            assert started["data"]["runner"].endswith(f":{pids['worker']}")
            approved = next(e for e in activity["events"] if e["kind"] == "approved")
            assert approved["data"]["channel"] == "whatsapp"
            assert approved["data"]["approver"] == "Sofía"

            # Rejected.
            await webhook(client, "refund 13", sid="SMguest2", sender=GUEST)
            second = await arrives(
                api, SUPERVISOR, rf"Approval needed for request #(?!{code}\b)(\d+)"
            )
            rejected_code = int(second.group(1))
            await webhook(client, f"NO {rejected_code}", sid="SMsup2", sender=SUPERVISOR)
            await arrives(api, GUEST, rf"Request #{rejected_code} was rejected by Sofía\.")
            await asyncio.sleep(1.0)  # nothing else may follow
            assert not [m for m in to(api, GUEST) if m.body == "refund: invoice=13"]
            rejected = (await client.get(f"/api/v1/activities/{rejected_code}")).json()
            assert rejected["status"] == "rejected"
            assert "started" not in [e["kind"] for e in rejected["events"]]

        assert api.unexpected == []
