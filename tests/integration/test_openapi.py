"""The OpenAPI documents: named, described and secured as they really behave, and the smaller
one importable as a ChatGPT Action."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.openapi import ACTIONS_LIMIT
from gateway.settings import Settings
from tests.conftest import ADMIN

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
def client(make_settings: Callable[..., Settings], sqlite_url: str) -> Iterator[TestClient[Any]]:
    settings = make_settings(database_url=sqlite_url, public_url="https://bot.example.com/")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def test_every_operation_is_named_described_and_secured_where_it_needs_a_token(
    client: TestClient[Any],
) -> None:
    document = client.get("/schema/openapi.json").json()
    validate(document)
    assert document["servers"] == [{"url": "https://bot.example.com"}]
    assert "security" not in document
    ids = {op["operationId"]: (path, method, op) for path, method, op in operations(document)}
    assert {
        "executeAction",
        "listActivities",
        "getActivity",
        "recordActivity",
        "cancelActivity",
        "retryActivity",
        "approveActivity",
        "listConversations",
        "listMessages",
        "postMessage",
        "listWorkers",
        "getQueue",
        "getHealth",
        "listWorkflows",
        "runWorkflow",
        "getWorkflowRun",
    } <= set(ids)
    for op_id, (path, _, op) in ids.items():
        assert op_id[0].islower(), op_id
        assert "_" not in op_id, op_id
        assert "Api" not in op_id, op_id
        assert op["summary"], op_id
        assert op["description"], op_id
        if path.startswith("/api/v1/"):
            assert op["security"] == [{"bearer": []}], op_id
            assert {"401", "403"} <= set(op["responses"]), op_id
            assert "Needs a token with role" in op["description"], op_id
    assert "security" not in ids["getHealth"][2]
    assert ids["executeAction"][2]["requestBody"]["content"]["application/json"]
    errors = ids["executeAction"][2]["responses"]
    assert {"202", "400", "401", "403", "422", "503"} <= set(errors)
    unprocessable = errors["422"]["content"]["application/json"]
    assert unprocessable["schema"] == {"$ref": "#/components/schemas/Error"}
    assert unprocessable["example"]["error"] == "unprocessable"
    assert "409" in ids["cancelActivity"][2]["responses"]
    assert "422" in ids["runWorkflow"][2]["responses"]
    # A body the REST channel decodes itself is documented all the same.
    posted = ids["postMessage"][2]["requestBody"]
    assert posted["required"] is True
    ref = posted["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert set(body["required"]) == {"id", "conversation", "sender", "text"}
    assert body["additionalProperties"] is False
    assert document["components"]["schemas"]["Error"]["required"] == ["error", "detail"]


def test_the_actions_document_holds_what_an_operator_may_call_within_actions_limits(
    client: TestClient[Any],
) -> None:
    response = client.get("/schema/actions.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)  # an OpenAPI 3.1 validator, as an importer would
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": "https://bot.example.com"}]
    found = list(operations(document))
    assert 0 < len(found) <= ACTIONS_LIMIT
    ids = {op["operationId"] for _, _, op in found}
    assert {"executeAction", "getActivity", "listActivities", "cancelActivity"} <= ids
    assert {"listWorkflows", "runWorkflow", "getWorkflowRun", "postMessage"} <= ids
    assert not ids & {"listUsers", "createToken", "listSettings", "getHealth", "getMetrics"}
    for path, _, op in found:
        assert path.startswith("/api/v1/")
        assert len(op["description"]) <= 300
        assert len(op["summary"]) <= 80


def test_the_docs_page_loads_everything_from_the_gateway_itself(client: TestClient[Any]) -> None:
    page = client.get("/schema")
    assert page.status_code == 200
    html = page.text
    assets = ["swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"]
    for asset in assets:
        assert f"/schema/assets/{asset}" in html
        served = client.get(f"/schema/assets/{asset}")
        assert served.status_code == 200
        assert len(served.content) > 100_000
    head = html.split("<body", 1)[0]
    assert "https://" not in head  # no CDN: the page works offline
    assert "http://" not in head


def _schemas_in(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas_in(value)


def test_the_document_is_as_strict_as_the_server(client: TestClient[Any]) -> None:
    """What the fuzzer found loose once: bounds as integers, closed bodies, the statuses each
    refusal really has, the shapes a body may take."""
    document = client.get("/schema/openapi.json").json()
    for node in _schemas_in(document):
        for bound in ("minimum", "maximum"):
            if bound in node and node.get("type") == "integer":
                assert isinstance(node[bound], int), node
    ids = {op["operationId"]: op for _, _, op in operations(document)}
    (activity_id,) = ids["getActivity"]["parameters"]
    assert activity_id["schema"]["maximum"] == 2**63 - 1
    components = document["components"]["schemas"]
    for name in (
        "AuditNote",
        "ExecuteRequest",
        "NewToken",
        "NewUser",
        "RestMessageIn",
        "RunRequest",
    ):
        assert components[name]["additionalProperties"] is False, name
    assert components["AuditNote"]["properties"]["status"] == {
        "$ref": "#/components/schemas/EndedStatus"
    }
    assert set(components["EndedStatus"]["enum"]) == {"completed", "failed", "cancelled"}
    # An agent's token is made by `switchboard agents add` (it names what it serves), not here.
    assert set(components["NewToken"]["properties"]["role"]["enum"]) == {
        "actions",
        "operator",
        "admin",
    }
    assert len(components["ExecuteRequest"]["oneOf"]) == 3
    assert set(components["NewIdentity"]["properties"]["channel"]["enum"]) >= {"rest", "whatsapp"}
    assert "422" in ids["retryActivity"]["responses"]
    assert "429" in ids["postMessage"]["responses"]
    assert "404" in ids["createToken"]["responses"]
    assert "413" in ids["postMessage"]["responses"]
    cursor = next(p for p in ids["listActivities"]["parameters"] if p["name"] == "cursor")
    assert "pattern" in json.dumps(cursor["schema"])


def test_options_answers_every_method_of_a_path(client: TestClient[Any]) -> None:
    document = client.get("/schema/openapi.json").json()
    for path, item in document["paths"].items():
        concrete = path.replace("{activity_id}", "1").replace("{conversation_id}", "1")
        concrete = concrete.replace("{user_id}", "1").replace("{token_id}", "1")
        concrete = concrete.replace("{run_id}", "1").replace("{workflow}", "onboard")
        concrete = concrete.replace("{task_id}", "1")
        response = client.options(concrete, headers=ADMIN)
        assert response.status_code == 204, (path, response.text)
        documented = {m.upper() for m in item if m in METHODS} | {"OPTIONS"}
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed == documented, path


def test_actions_descriptions_keep_the_role_they_need(client: TestClient[Any]) -> None:
    document = client.get("/schema/actions.json").json()
    full = client.get("/schema/openapi.json").json()
    full_ops = {op["operationId"]: op for _, _, op in operations(full)}
    cut = 0
    for _, _, op in operations(document):
        assert len(op["description"]) <= 300
        role = full_ops[op["operationId"]]["description"].rpartition("\n\n")[2]
        assert op["description"].endswith(role), op["operationId"]
        cut += op["description"] != full_ops[op["operationId"]]["description"]
    assert cut >= 1  # some were long enough to be cut, and kept their role all the same
    scheme = full["components"]["securitySchemes"]["bearer"]["description"]
    assert "read-only" not in scheme
    assert "`actions` runs catalog actions" in scheme
