"""Named LLM providers: ``default`` from SWITCHBOARD_LLM_*, others from the catalog (their keys
read from the variables it names); listed for admins without any part of a key; checked against
their ``/models``; every call of the intent parser recorded with the tokens its answer reported.
Against a local server that speaks OpenAI's protocol."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from dispatch.infra.errors import CatalogError
from dispatch.policy.catalog import decode_catalog
from gateway.app import create_app
from gateway.auth import TokenStore
from gateway.settings import Settings
from tests.conftest import ADMIN
from tests.support.flow import wait_for
from tests.support.llm_api import LlmApi, tool_call
from tests.support.processes import free_port
from tests.support.runtime import runtime_for
from workers.handlers import BUILTIN_HANDLER_NAMES

DEFAULT_KEY = "sk-default-0123456789abcdef"
LOCAL_KEY = "sk-local-fedcba9876543210"


@pytest.fixture
def llm() -> Iterator[LlmApi]:
    with LlmApi() as server:
        yield server


@pytest.fixture
async def client(
    make_env: Callable[..., dict[str, str]], sqlite_url: str, tmp_path: Path, llm: LlmApi
) -> AsyncIterator[AsyncTestClient[Any]]:
    bundled = resources.files("dispatch.policy").joinpath("default_catalog.toml").read_text()
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        bundled
        + f"""
[providers.local]
base_url = "{llm.base_url}"
model = "test-model"
api_key_env = "SB_TEST_LOCAL_KEY"
max_concurrency = 2

[providers.offline]
base_url = "http://127.0.0.1:{free_port()}/v1"
model = "nothing"
timeout_s = 2
""",
        encoding="utf-8",
    )
    env = make_env(
        database_url=sqlite_url, catalog=catalog, llm_base_url=llm.base_url, llm_api_key=DEFAULT_KEY
    )
    settings = Settings.from_env({**env, "SB_TEST_LOCAL_KEY": LOCAL_KEY})
    async with runtime_for(settings) as runtime:
        operator, _ = await TokenStore(runtime.sessions, None).create(name="op", role="operator")
    async with AsyncTestClient(create_app(settings)) as test_client:
        test_client.operator = operator  # type: ignore[attr-defined]
        yield test_client


async def test_admins_see_every_provider_and_no_part_of_any_key(
    client: AsyncTestClient[Any],
) -> None:
    listed = await client.get("/api/v1/providers", headers=ADMIN)
    assert listed.status_code == 200, listed.text
    assert [p["name"] for p in listed.json()] == ["default", "local", "offline"]
    by_name = {p["name"]: p for p in listed.json()}
    assert by_name["default"]["key_from"] == "SWITCHBOARD_LLM_API_KEY"
    assert by_name["default"]["source"] == "settings"
    assert (by_name["local"]["key_from"], by_name["local"]["has_key"]) == (
        "SB_TEST_LOCAL_KEY",
        True,
    )
    assert by_name["offline"]["has_key"] is False
    for key in (DEFAULT_KEY, LOCAL_KEY):
        for part in (key, key[:8], key[-6:]):
            assert part not in listed.text
    operator = {"Authorization": f"Bearer {client.operator}"}  # type: ignore[attr-defined]
    assert (await client.get("/api/v1/providers", headers=operator)).status_code == 403


async def test_a_check_asks_the_provider_what_it_offers(
    client: AsyncTestClient[Any], llm: LlmApi
) -> None:
    checked = await client.post("/api/v1/providers/local/check", headers=ADMIN)
    assert checked.status_code == 200, checked.text
    found = checked.json()
    assert (found["ok"], found["models"], found["model_offered"]) == (True, ["test-model"], True)
    assert found["latency_ms"] >= 0
    assert llm.headers[-1]["Authorization"] == f"Bearer {LOCAL_KEY}"  # its own key
    away = (await client.post("/api/v1/providers/offline/check", headers=ADMIN)).json()
    assert away["ok"] is False
    assert "could not reach" in away["error"]
    unknown = await client.post("/api/v1/providers/nope/check", headers=ADMIN)
    assert unknown.status_code == 404
    assert "default, local, offline" in unknown.json()["detail"]
    usage = {
        p["name"]: p["usage"] for p in (await client.get("/api/v1/providers", headers=ADMIN)).json()
    }
    assert usage["local"]["calls"] == 1
    assert (usage["offline"]["calls"], usage["offline"]["failed"]) == (1, 1)


async def test_the_intent_parsers_calls_are_the_default_providers_with_their_tokens(
    client: AsyncTestClient[Any], llm: LlmApi
) -> None:
    llm.scenario = lambda body: tool_call(
        "assistant__echo", {"text": "hello there", "confidence": 0.95}
    )
    body = {
        "id": "p1",
        "conversation": "pat",
        "sender": "pat",
        "text": "could you parrot hello there",
    }
    assert (await client.post("/api/v1/messages", json=body, headers=ADMIN)).status_code == 202

    async def counted() -> dict[str, Any] | None:
        listed = (await client.get("/api/v1/providers", headers=ADMIN)).json()
        usage: dict[str, Any] = next(p for p in listed if p["name"] == "default")["usage"]
        return usage if usage["calls"] else None

    usage = await wait_for(counted)
    assert usage == {"calls": 1, "failed": 0, "prompt_tokens": 1, "completion_tokens": 1}
    assert llm.requests[-1]["model"] == "gpt-4o-mini"  # the default provider's model
    assert llm.headers[-1]["Authorization"] == f"Bearer {DEFAULT_KEY}"


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('[providers.default]\nbase_url = "http://x/v1"\nmodel = "m"\n', "SWITCHBOARD_LLM"),
        ('[providers.p]\nbase_url = "ftp://x"\nmodel = "m"\n', "http:// or https://"),
        ('[providers.p]\nbase_url = "http://x/v1"\nmodel = "m"\napi_key_env = "a b"\n', "variable"),
        ('[providers.p]\nbase_url = "http://x/v1"\nmodel = "m"\nmax_concurrency = 0\n', "between"),
        ('[providers.P]\nbase_url = "http://x/v1"\nmodel = "m"\n', "lowercase"),
        ('[providers.p]\nbase_url = "http://x/v1"\nmodel = "m"\napi_key = "sk-1"\n', "api_key"),
    ],
)
def test_a_provider_that_could_not_work_is_refused_when_the_catalog_loads(
    table: str, needle: str
) -> None:
    bundled = resources.files("dispatch.policy").joinpath("default_catalog.toml").read_text()
    with pytest.raises(CatalogError) as refused:
        decode_catalog((bundled + table).encode(), "c.toml", BUILTIN_HANDLER_NAMES)
    assert needle in str(refused.value)
