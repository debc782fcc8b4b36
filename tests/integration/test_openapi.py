"""The OpenAPI documents: named, described and secured as they really behave, and the smaller
one importable as a ChatGPT Action."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from openapi_spec_validator import validate

from gateway.app import create_app
from gateway.openapi import ACTIONS_LIMIT
from gateway.settings import Settings

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
