"""A council's checks judge a proposal's text without ever running it."""

from __future__ import annotations

import pytest

from dispatch.policy.specs import CheckSpec
from dispatch.work.councils import _failed

SCHEMA = {"type": "object", "properties": {"steps": {"type": "array"}}, "required": ["steps"]}


@pytest.mark.parametrize(
    ("check", "text", "why"),
    [
        (CheckSpec(kind="max_chars", max_chars=5), "short", None),
        (CheckSpec(kind="max_chars", max_chars=5), "too long", "8 characters"),
        (CheckSpec(kind="forbid", patterns=("drop\\s+table",)), "DROP TABLE users", "matches"),
        (CheckSpec(kind="forbid", patterns=("drop\\s+table",)), "select 1", None),
        (CheckSpec(kind="json_schema", schema=SCHEMA), '{"steps": []}', None),
        (CheckSpec(kind="json_schema", schema=SCHEMA), '{"stages": []}', "against the schema"),
        (CheckSpec(kind="json_schema", schema=SCHEMA), "not json", "not JSON"),
        (CheckSpec(kind="python_syntax"), "```python\ndef f():\n    return 1\n```", None),
        (CheckSpec(kind="python_syntax"), "def f(:\n", "line 1"),
        # Parsed, never run: what it would do if run does not happen.
        (CheckSpec(kind="python_syntax"), "import os\nos.remove('/tmp/x')\n", None),
        (CheckSpec(kind="ruff"), "import os\n", "F401"),
        (CheckSpec(kind="ruff"), "x = 1\n", None),
    ],
)
def test_each_check_says_why_a_proposal_fails(check: CheckSpec, text: str, why: str | None) -> None:
    found = _failed(check, text)
    if why is None:
        assert found is None
    else:
        assert found is not None
        assert why in found
