"""Handlers by name, and the resolution of (agent, action_type) to a handler via the catalog."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from dispatch.language.i18n import language_of
from dispatch.record.messages import Choice, Media

if TYPE_CHECKING:
    import httpx

    from dispatch.policy.catalog import Catalog
    from dispatch.policy.specs import ActionSpec
    from dispatch.record.activities import ActivityLog, ActivityView
    from dispatch.work.approvals import ApprovalService
    from dispatch.work.runs import WorkflowRuns

__all__ = ["Handler", "HandlerContext", "HandlerRegistry", "HandlerResult", "UnknownAction"]


class UnknownAction(LookupError):
    """No handler for this (agent, action_type): the activity fails, nothing is 'completed'."""


class HandlerResult(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    media: tuple[Media, ...] = ()
    choices: tuple[Choice, ...] = ()
    data: dict[str, Any] = {}


COUNCIL = "council"
"""The handler every council action runs on (``executor = "council"``)."""


@dataclass(frozen=True, slots=True)
class HandlerContext:
    activity: ActivityView
    action: ActionSpec
    payload: dict[str, Any]
    catalog: Catalog
    activities: ActivityLog
    http: httpx.AsyncClient
    role: str | None
    approvals: ApprovalService
    workflows: WorkflowRuns
    buttons: bool = False
    """Whether the requester's channel shows offered choices as buttons."""

    @property
    def language(self) -> str | None:
        """The language the request was written in (what the gateway says itself uses it)."""
        return language_of(self.activity.details)


class Handler(abc.ABC):
    """One kind of work. Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str]

    @abc.abstractmethod
    async def run(self, ctx: HandlerContext) -> HandlerResult: ...


class HandlerRegistry:
    def __init__(self, handlers: Iterable[Handler]) -> None:
        self._handlers = {handler.name: handler for handler in handlers}

    def names(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def resolve(self, catalog: Catalog, agent: str, action_type: str) -> tuple[ActionSpec, Handler]:
        action = catalog.action(agent, action_type)
        if action is None:
            raise UnknownAction(f"no action {agent}.{action_type} in the catalog")
        handler = self._handlers.get(COUNCIL if action.by_council else action.handler)
        if handler is None:
            raise UnknownAction(f"no handler {action.handler!r} for {agent}.{action_type}")
        return action, handler
