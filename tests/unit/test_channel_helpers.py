from __future__ import annotations

import asyncio
import itertools

import pytest

from channels.ratelimit import LocalRateLimiter
from channels.text import split_text
from dispatch.infra.errors import InvalidInput
from dispatch.infra.phone import from_provider, to_e164
from dispatch.policy.permissions import may_request
from dispatch.policy.specs import ActionSpec


@pytest.mark.parametrize("limit", [1, 5, 16, 1600])
@pytest.mark.parametrize(
    "text",
    [
        "",
        "short",
        "one two three four five six seven eight nine ten",
        "line one\nline two\nline three is a bit longer\n\nafter a blank line",
        "x" * 50 + " tail",
    ],
)
def test_split_text_respects_the_limit_and_loses_nothing(text: str, limit: int) -> None:
    pieces = split_text(text, limit)
    assert all(len(p) <= limit for p in pieces)
    # Only the boundary white space is dropped: every other character survives, in order.
    assert "".join(text.split()) == "".join("".join(p.split()) for p in pieces)


def test_split_prefers_line_then_word_boundaries() -> None:
    assert split_text("alpha beta\ngamma delta", 16) == ["alpha beta", "gamma delta"]
    assert split_text("alpha beta gamma", 11) == ["alpha beta", "gamma"]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+34600111222", "+34600111222"),
        ("+34 600-111 222", "+34600111222"),
        ("0034600111222", "+34600111222"),
        ("+1 (415) 523-8886", "+14155238886"),
    ],
)
def test_numbers_normalize_to_e164(raw: str, e164: str) -> None:
    assert to_e164(raw) == e164


def test_a_providers_international_digits_need_no_plus() -> None:
    """Meta sends ``34600111222``; Twilio ``+34600111222``."""
    assert from_provider("34600111222") == from_provider("+34600111222") == "+34600111222"


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("612 345 678", "ES", "+34612345678"),
        ("(415) 523-8886", "US", "+14155238886"),
        ("+34 612 345 678", "US", "+34612345678"),  # a country code wins over the region
        ("55 1234 5678", "MX", "+525512345678"),
    ],
)
def test_a_number_typed_the_local_way_is_read_in_the_region(
    raw: str, region: str, e164: str
) -> None:
    assert to_e164(raw, region) == e164


def test_without_a_region_a_local_number_is_refused_not_guessed() -> None:
    """ "612 345 678" was read as +612345678, an Australian number."""
    with pytest.raises(InvalidInput) as caught:
        to_e164("612 345 678")
    assert "country code" in caught.value.detail


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "whatsapp:+34600111222",
        "+0123456",
        "+12",
        "+1234567890123456",
        "abc",
        "34600111222",
        "+34 12",
    ],
)
def test_bad_numbers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        to_e164(raw)


def test_permission_seam() -> None:
    public = ActionSpec(description="p", handler="echo", public=True)
    operators = ActionSpec(description="o", handler="echo", roles=("operator",))
    assert may_request("guest", True, public)
    assert not may_request("guest", True, operators)
    assert may_request("operator", True, operators)
    assert may_request("admin", True, operators)
    assert not may_request("admin", False, public)  # deactivated users may ask for nothing
    assert not may_request(None, True, operators)


async def test_local_limiter_paces_every_key_of_a_send() -> None:
    limiter = LocalRateLimiter()
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def send(chat: str) -> None:
        await limiter.acquire((f"chat:{chat}", 5), ("global", 20))
        starts.append(loop.time())

    await asyncio.gather(*(send("a") for _ in range(3)), *(send(str(n)) for n in range(6)))
    ordered = sorted(starts)
    gaps = [b - a for a, b in itertools.pairwise(ordered)]
    assert min(gaps) >= 1 / 20 - 0.01  # the global pace holds between any two sends
