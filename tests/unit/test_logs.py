"""Log lines by structlog: bound context and each call's fields, as console or JSON lines."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest

from dispatch.infra.logs import bind, configure_logging


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """These tests point the logger at a captured stream: put it back afterwards."""
    logger = logging.getLogger("switchboard")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


async def test_json_lines_carry_the_bound_context_of_their_own_task_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    log = logging.getLogger("switchboard.test")

    async def job(message_id: int) -> None:
        bind(message_id=message_id)
        await asyncio.sleep(0)
        log.info("job %s: %s", "dispatch_message", "done", extra={"ran": 1})

    await asyncio.gather(job(1), job(2))
    log.warning("outside any job")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert sorted(line.get("message_id") for line in lines[:2]) == [1, 2]
    assert lines[0]["event"] == "job dispatch_message: done"
    assert lines[0]["ran"] == 1
    assert lines[0]["logger"] == "switchboard.test"
    assert lines[0]["level"] == "info"
    assert "message_id" not in lines[2]


def test_console_lines_read_as_a_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "console")
    logging.getLogger("switchboard.test").info("stored", extra={"count": 1_234_567})
    [line] = capsys.readouterr().err.splitlines()
    assert "stored" in line
    assert "[switchboard.test]" in line
    assert "count=1234567" in line
