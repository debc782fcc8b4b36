from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dispatch.language.slots import SlotError, coerce
from dispatch.policy.catalog import PayloadError, decode_catalog, load_catalog
from workers.handlers import BUILTIN_HANDLER_NAMES

TODAY = dt.date(2026, 11, 21)  # a Saturday


@pytest.mark.parametrize(
    ("slot", "text", "value"),
    [
        ("number", "120", 120.0),
        ("number", "120,50", 120.5),
        ("number", "120.50", 120.5),
        ("number", "1.234,56", 1234.56),
        ("number", "1,234.56", 1234.56),
        ("number", "1,234", 1234.0),
        ("integer", "42", 42),
        ("id", "#123", 123),
        ("id", "nº 7", 7),
        ("amount", "120,50 €", {"value": 120.5, "currency": "EUR"}),
        ("amount", "$50", {"value": 50.0, "currency": "USD"}),
        ("amount", "50 USD", {"value": 50.0, "currency": "USD"}),
        ("amount", "300 euros", {"value": 300.0, "currency": "EUR"}),
        ("amount", "99", {"value": 99.0, "currency": None}),
        ("date", "tomorrow", "2026-11-22"),
        ("date", "mañana", "2026-11-22"),
        ("date", "Pasado mañana", "2026-11-23"),
        ("date", "hoy", "2026-11-21"),
        ("date", "el lunes", "2026-11-23"),
        ("date", "next friday", "2026-11-27"),
        ("date", "2026-12-01", "2026-12-01"),
        ("date", "24/12", "2026-12-24"),
        ("date", "24/12/27", "2027-12-24"),
        ("phone", "+34 600 111 222", "+34600111222"),
        ("email", "Ana@Example.com", "ana@example.com"),
        ("boolean", "Sí", True),
        ("boolean", "no", False),
    ],
)
def test_slots(slot: str, text: str, value: object) -> None:
    assert coerce(slot, text, today=TODAY) == value


@pytest.mark.parametrize(
    ("slot", "text"),
    [
        ("number", "twelve"),
        ("id", "abc"),
        ("amount", "lots of money"),
        ("date", "someday"),
        ("date", "31/02/2026"),
        ("phone", "12"),
        ("email", "not-an-email"),
        ("boolean", "maybe"),
    ],
)
def test_bad_slots_say_why(slot: str, text: str) -> None:
    with pytest.raises(SlotError):
        coerce(slot, text, today=TODAY)


def test_a_phone_slot_is_read_in_the_deployments_region() -> None:
    assert coerce("phone", "612 345 678", today=TODAY, region="ES") == "+34612345678"
    with pytest.raises(SlotError, match="country code"):
        coerce("phone", "612 345 678", today=TODAY)


def test_payloads_are_coerced_then_checked_against_the_schema() -> None:
    catalog = decode_catalog(
        b"""
[fallback]
agent = "b"
action = "invoice"
[agents.b.actions.invoice]
description = "Invoice"
handler = "echo"
public = true
[agents.b.actions.invoice.payload]
client = { type = "string" }
amount = { type = "amount" }
due = { type = "date", required = false }
""",
        "t.toml",
        BUILTIN_HANDLER_NAMES,
    )
    payload = catalog.validate_payload(
        "b", "invoice", {"client": "ACME", "amount": "1.200,00 €", "due": "mañana"}, today=TODAY
    )
    assert payload == {
        "client": "ACME",
        "amount": {"value": 1200.0, "currency": "EUR"},
        "due": "2026-11-22",
    }
    with pytest.raises(PayloadError) as caught:
        catalog.validate_payload("b", "invoice", {"client": "ACME", "amount": "mucho"})
    assert caught.value.field == "amount"
    with pytest.raises(PayloadError, match="unknown field 'admin'"):
        catalog.validate_payload("b", "invoice", {"client": "A", "amount": "1", "admin": True})
    assert catalog.missing_fields("b", "invoice", {"client": "ACME"}) == ["amount"]


def test_the_catalog_reads_phone_slots_in_the_region_it_was_loaded_with(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[fallback]\nagent = "crm"\naction = "call"\n'
        '[agents.crm.actions.call]\ndescription = "Call back"\nhandler = "echo"\npublic = true\n'
        '[agents.crm.actions.call.payload]\nnumber = { type = "phone" }\n'
    )
    spain = load_catalog(path, BUILTIN_HANDLER_NAMES, region="ES")
    assert spain.validate_payload("crm", "call", {"number": "612 345 678"}) == {
        "number": "+34612345678"
    }
    with pytest.raises(PayloadError, match="country code"):
        load_catalog(path, BUILTIN_HANDLER_NAMES).validate_payload(
            "crm", "call", {"number": "612 345 678"}
        )
