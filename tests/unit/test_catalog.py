from __future__ import annotations

from pathlib import Path

import pytest

from dispatch.infra.errors import CatalogError
from dispatch.policy.catalog import decode_catalog, load_catalog
from workers.handlers import BUILTIN_HANDLER_NAMES

HANDLERS = BUILTIN_HANDLER_NAMES

BASE = """
[fallback]
agent = "a"
action = "help"
[agents.a.actions.help]
description = "help"
handler = "help"
public = true
[agents.a.actions.echo]
description = "echo"
handler = "echo"
public = true
[agents.a.actions.echo.payload]
text = { type = "string" }
"""


def catalog(extra: str = "", base: str = BASE) -> bytes:
    return (base + extra).encode()


def test_default_catalog_loads() -> None:
    loaded = load_catalog(None, HANDLERS)
    assert loaded.action("system", "help") is not None
    assert loaded.action("assistant", "echo") is not None
    assert [r.id for r in loaded.rules] == [
        "control:help",
        "control:status",
        "control:status-ref",
        "control:approve",
        "control:reject",
        "control:approve-bare",
        "control:reject-bare",
        "control:run",
        "control:status-ask",
        "control:cancel-ask",
        "control:human",
        "control:cancel",
        "fix-bug",
        "design",
        "plan",
        "invoice-create",
        "refund",
        "ticket-open",
        "support-words",
        "help-phrases",
        "echo",
        "status-phrases",
        "onboard",
    ]


def test_the_system_agent_is_reserved() -> None:
    with pytest.raises(CatalogError, match="built in"):
        decode_catalog(
            catalog('[agents.system.actions.x]\ndescription = "d"\nhandler = "echo"\n'),
            "c.toml",
            HANDLERS,
        )


def test_yaml_catalog(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "fallback: {agent: a, action: help}\n"
        "agents:\n  a:\n    actions:\n      help: {description: h, handler: help, public: true}\n"
        "rules:\n  - {id: r, agent: a, action: help, keywords: ['no', 'sí']}\n"
    )
    loaded = load_catalog(path, HANDLERS)
    assert loaded.rules[-1].keywords is not None


@pytest.mark.parametrize(
    ("extra", "where", "problem"),
    [
        (
            '[[rules]]\nid = "r"\nagent = "a"\naction = "echo"\npatterns = ["(unclosed"]\n',
            "rules[0] (id 'r')",
            "bad regex",
        ),
        (
            '[[rules]]\nid = "r"\nagent = "zz"\naction = "echo"\nkeywords = ["x"]\n',
            "rules[0] (id 'r')",
            "unknown agent 'zz'",
        ),
        (
            '[[rules]]\nid = "r"\nagent = "a"\naction = "nope"\nkeywords = ["x"]\n',
            "rules[0]",
            "has no action 'nope'",
        ),
        (
            '[[rules]]\nid = "r"\nagent = "a"\naction = "echo"\npatterns = ["(?P<who>.+)"]\n',
            "rules[0]",
            "named groups ['who']",
        ),
        (
            '[[rules]]\nid = "r"\nagent = "a"\naction = "echo"\n',
            "rules[0]",
            "needs patterns or keywords",
        ),
        (
            '[[rules]]\nid = "r"\nagent = "a"\naction = "help"\nkeywords=["x"]\n'
            '[[rules]]\nid = "r"\nagent = "a"\naction = "help"\nkeywords=["y"]\n',
            "rules[1]",
            "duplicate rule id",
        ),
        (
            '[agents.a.actions.call]\ndescription = "c"\nhandler = "http_call"\n',
            "agents.a.actions.call",
            "needs an [http] table",
        ),
        (
            '[agents.a.actions.x]\ndescription = "c"\nhandler = "launch_missiles"\n',
            "agents.a.actions.x.handler",
            "unknown handler 'launch_missiles'",
        ),
        (
            '[agents.a.actions.x]\ndescription = "c"\nhandler = "echo"\ntimeout_s = 0\n',
            "agents.a.actions.x.timeout_s",
            "must be in",
        ),
    ],
)
def test_bad_entries_are_named(extra: str, where: str, problem: str) -> None:
    with pytest.raises(CatalogError) as caught:
        decode_catalog(catalog(extra), "my.toml", HANDLERS)
    message = str(caught.value)
    assert message.startswith("my.toml")
    assert where in message
    assert problem in message


def test_type_errors_point_at_the_path() -> None:
    with pytest.raises(CatalogError) as caught:
        decode_catalog(
            catalog('[agents.a.actions.x]\ndescription = 1\nhandler = "echo"\n'), "c.toml", HANDLERS
        )
    # Where it is is ours to say; what is wrong there is msgspec's wording, which may change.
    assert str(caught.value).startswith("c.toml: agents.a.actions.x: ")
    assert "description" in str(caught.value)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(CatalogError, match="hanlder"):
        decode_catalog(
            catalog('[agents.a.actions.x]\ndescription = "d"\nhanlder = "echo"\n'),
            "c.toml",
            HANDLERS,
        )


def test_bad_fallback_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="fallback"):
        decode_catalog(
            catalog(base=BASE.replace('action = "help"', 'action = "gone"', 1)), "c.toml", HANDLERS
        )
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml", HANDLERS)
    broken = tmp_path / "broken.toml"
    broken.write_text("[agents\n")
    with pytest.raises(CatalogError, match="not valid"):
        load_catalog(broken, HANDLERS)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ('roles = ["boss"]\n', r"agents.a.actions.x.roles: unknown roles \['boss'\]"),
        ("[agents.a.actions.x.approval]\napprovers = []\n", "name at least one role"),
        ('[agents.a.actions.x.approval]\napprovers = ["kings"]\n', r"unknown roles \['kings'\]"),
        ("[agents.a.actions.x.approval]\nquorum = 0\n", "quorum: must be between 1 and 10"),
        ("[agents.a.actions.x.approval]\nttl_s = -1\n", r"ttl_s: must be in \(0, 30 days\]"),
        ("[agents.a.actions.x.approval]\nauto_rn = false\n", "auto_rn"),
    ],
)
def test_permission_and_approval_policy_is_validated_at_start_up(extra: str, problem: str) -> None:
    action = '[agents.a.actions.x]\ndescription = "d"\nhandler = "echo"\n'
    with pytest.raises(CatalogError, match=problem):
        decode_catalog(catalog(action + extra), "c.toml", HANDLERS)


def test_an_approval_policy_has_safe_defaults() -> None:
    action = '[agents.a.actions.x]\ndescription = "d"\nhandler = "echo"\n'
    loaded = decode_catalog(catalog(action + "[agents.a.actions.x.approval]\n"), "c.toml", HANDLERS)
    spec = loaded.action("a", "x")
    assert spec is not None
    assert spec.approval is not None
    assert (spec.approval.approvers, spec.approval.quorum, spec.approval.self_approval) == (
        ("supervisor", "admin"),
        1,
        False,
    )
    assert (spec.approval.ttl_s, spec.approval.auto_run) == (3600.0, True)
