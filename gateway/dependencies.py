"""Per-request providers: each route names the one service it uses, never the whole runtime.

The lifespan (``gateway.app``) keeps the process's :class:`~workers.runtime.Runtime` and the
token store in the app state; each provider hands out one piece of it.
"""

from __future__ import annotations

from typing import Any

from litestar.datastructures import State
from litestar.di import Provide

from channels.rest import RestChannel
from channels.webchat import WebChatChannel

__all__ = ["PROVIDERS"]


def _runtime_part(attribute: str) -> Provide:
    def provide(state: State) -> Any:
        return getattr(state.runtime, attribute)

    return Provide(provide, sync_to_thread=False)


def _channel(kind: type[RestChannel | WebChatChannel]) -> Provide:
    def provide(state: State) -> Any:
        return state.runtime.channels.of(kind)

    return Provide(provide, sync_to_thread=False)


def _state(attribute: str) -> Provide:
    def provide(state: State) -> Any:
        return getattr(state, attribute)

    return Provide(provide, sync_to_thread=False)


PROVIDERS: dict[str, Provide] = {
    **{
        name: _runtime_part(name)
        for name in (
            "activities",
            "approvals",
            "bus",
            "catalog",
            "channels",
            "counters",
            "dispatcher",
            "engine",
            "executor",
            "feed",
            "inbox",
            "providers",
            "queue",
            "stats",
            "steering",
            "store",
            "takeovers",
            "tasks",
            "users",
            "workflows",
        )
    },
    "rest": _channel(RestChannel),
    "webchat": _channel(WebChatChannel),
    "inbound": _state("inbound"),
    "settings": _state("settings"),
    "tokens": _state("tokens"),
}
