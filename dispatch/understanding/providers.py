"""Named LLM providers: each an OpenAI-compatible endpoint (llama.cpp server, Ollama, vLLM,
OpenAI...) with its model, its key (read once from the environment variable the catalog names;
never shown), its timeout and how many calls it takes at once. ``default`` is the one
``SWITCHBOARD_LLM_BASE_URL``, ``_MODEL`` and ``_API_KEY`` define (the intent parser's); the
catalog's ``[providers.<name>]`` add others. A check asks a provider which models it offers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from dispatch.infra.errors import NotFoundError
from dispatch.policy.catalog import DEFAULT_PROVIDER
from dispatch.policy.specs import ProviderSpec
from dispatch.record.usage import CallRecord, UsageLog, UsageTotals
from dispatch.understanding.endpoint import Provider
from dispatch.understanding.llm import LlmSettings

__all__ = [
    "Completion",
    "Provider",
    "ProviderCheck",
    "ProviderFailed",
    "ProviderView",
    "Providers",
]

CHECK_TIMEOUT_S = 10.0
MAX_MODELS_LISTED = 100
MAX_ANSWER_BYTES = 512 * 1024
RETRY_AFTER_MAX_S = 5.0
"""A 429's Retry-After is honoured once, up to this long."""


class ProviderFailed(Exception):
    """A call that gave no usable answer: a timeout, an HTTP error, or something else than a
    chat completion. Its message says which (never the key)."""


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    tokens: int
    """What the answer's ``usage`` reported in all (0 where it reported none)."""
    latency_ms: float


def _default(llm: LlmSettings) -> Provider:
    """The provider SWITCHBOARD_LLM_* define: the intent parser's."""
    assert llm.base_url is not None
    return Provider(
        name=DEFAULT_PROVIDER,
        base_url=llm.base_url.rstrip("/"),
        model=llm.model,
        timeout_s=llm.timeout_s,
        max_concurrency=16,
        key_from="SWITCHBOARD_LLM_API_KEY",
        api_key=llm.api_key,
        source="settings",
    )


def _declared(name: str, spec: ProviderSpec, environ: Mapping[str, str]) -> Provider:
    """A provider the catalog declares, its key read from the variable it names."""
    return Provider(
        name=name,
        base_url=spec.base_url.rstrip("/"),
        model=spec.model,
        timeout_s=spec.timeout_s,
        max_concurrency=spec.max_concurrency,
        key_from=spec.api_key_env,
        api_key=environ.get(spec.api_key_env) if spec.api_key_env else None,
    )


class ProviderView(msgspec.Struct, frozen=True, kw_only=True):
    """A provider as an admin sees it: everything but its key (not even part of it)."""

    name: str
    base_url: str
    model: str
    timeout_s: float
    max_concurrency: int
    key_from: str | None
    has_key: bool
    source: str
    usage: UsageTotals


class ProviderCheck(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    ok: bool
    latency_ms: float
    models: list[str] = []
    """What its ``/models`` offers."""
    model_offered: bool | None = None
    """Whether the configured model is among them (None: the provider listed none)."""
    error: str | None = None


class Providers:
    """Every named provider of this deployment, with a limit on calls in flight each."""

    def __init__(self, providers: list[Provider], http: httpx.AsyncClient, usage: UsageLog) -> None:
        self._providers = {p.name: p for p in providers}
        self._slots = {p.name: asyncio.Semaphore(p.max_concurrency) for p in providers}
        self._http = http
        self._usage = usage

    @classmethod
    def build(
        cls,
        catalog: Mapping[str, ProviderSpec],
        llm: LlmSettings,
        environ: Mapping[str, str],
        http: httpx.AsyncClient,
        usage: UsageLog,
    ) -> Providers:
        found = [_default(llm)] if llm.enabled else []
        found += [_declared(name, spec, environ) for name, spec in catalog.items()]
        return cls(found, http, usage)

    def get(self, name: str) -> Provider:
        found = self._providers.get(name)
        if found is None:
            raise NotFoundError(
                f"no provider {name!r}; known: {', '.join(sorted(self._providers)) or 'none'}"
            )
        return found

    def missing(self, names: set[str]) -> list[str]:
        """Those of ``names`` this deployment does not have (``default``: no
        SWITCHBOARD_LLM_BASE_URL)."""
        return sorted(name for name in names if name not in self._providers)

    def slot(self, name: str) -> asyncio.Semaphore:
        """Taken while a call to ``name`` is in flight."""
        return self._slots[self.get(name).name]

    async def views(self) -> list[ProviderView]:
        totals = await self._usage.totals()
        return [
            ProviderView(
                name=p.name,
                base_url=p.base_url,
                model=p.model,
                timeout_s=p.timeout_s,
                max_concurrency=p.max_concurrency,
                key_from=p.key_from,
                has_key=bool(p.api_key),
                source=p.source,
                usage=totals.get(p.name, UsageTotals()),
            )
            for p in sorted(self._providers.values(), key=lambda p: p.name)
        ]

    async def complete(
        self,
        name: str,
        messages: list[dict[str, str]],
        *,
        purpose: str,
        model: str | None = None,
        response_format: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        activity_id: int | None = None,
    ) -> Completion:
        """One chat completion from provider ``name`` (within its concurrency), recorded with
        its tokens; :class:`ProviderFailed` if it gave no usable answer."""
        provider = self.get(name)
        body: dict[str, Any] = {"model": model or provider.model, "messages": messages}
        if response_format is not None:
            body["response_format"] = response_format
        limit_s = min(timeout_s or provider.timeout_s, provider.timeout_s)
        started = time.perf_counter()
        usage: dict[str, Any] | None = None
        try:
            async with self.slot(name):
                answer = await self._post(provider, body, limit_s)
            usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
            text = answer["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise ProviderFailed("the answer has no text")
        except ProviderFailed as exc:
            await self._recorded(
                provider, body["model"], purpose, started, usage, str(exc), activity_id
            )
            raise
        except (KeyError, IndexError, TypeError, AttributeError):
            error = "the answer is not a chat completion"
            await self._recorded(
                provider, body["model"], purpose, started, usage, error, activity_id
            )
            raise ProviderFailed(error) from None
        latency_ms = await self._recorded(
            provider, body["model"], purpose, started, usage, None, activity_id
        )
        tokens = usage.get("total_tokens") if usage else None
        return Completion(
            text=text,
            tokens=tokens if isinstance(tokens, int) and tokens >= 0 else 0,
            latency_ms=latency_ms,
        )

    async def _post(self, provider: Provider, body: dict[str, Any], limit_s: float) -> Any:
        """The answer's JSON; a 429 waited out once (its Retry-After, bounded)."""
        url = f"{provider.base_url}/chat/completions"
        for attempt in range(2):
            try:
                response = await self._http.post(
                    url, json=body, headers=provider.headers, timeout=limit_s
                )
            except httpx.TimeoutException:
                raise ProviderFailed(f"no answer within {limit_s:g} s") from None
            except httpx.HTTPError as exc:
                raise ProviderFailed(f"{type(exc).__name__}: could not reach it") from None
            if response.status_code == 429 and attempt == 0:
                await asyncio.sleep(_retry_after(response.headers.get("retry-after")))
                continue
            if response.status_code >= 400:
                raise ProviderFailed(f"HTTP {response.status_code}")
            if len(response.content) > MAX_ANSWER_BYTES:
                raise ProviderFailed(f"an answer of {len(response.content)} bytes")
            try:
                return msgspec.json.decode(response.content)
            except msgspec.DecodeError:
                raise ProviderFailed("the answer is not JSON") from None
        raise ProviderFailed("HTTP 429, and again after waiting")

    async def _recorded(  # noqa: PLR0917 - one call's parts
        self,
        provider: Provider,
        model: str,
        purpose: str,
        started: float,
        usage: dict[str, Any] | None,
        error: str | None,
        activity_id: int | None,
    ) -> float:
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        await self._usage.record(
            CallRecord(
                provider=provider.name,
                model=model,
                purpose=purpose,
                ok=error is None,
                latency_ms=latency_ms,
                usage=usage,
                error=error,
                activity_id=activity_id,
            )
        )
        return latency_ms

    async def check(self, name: str) -> ProviderCheck:
        """Ask ``{base_url}/models``: how long it took and what it offers (recorded as a call)."""
        provider = self.get(name)
        started = time.perf_counter()
        error: str | None = None
        models: list[str] = []
        try:
            async with self.slot(name):
                answer = await self._http.get(
                    f"{provider.base_url}/models",
                    headers=provider.headers,
                    timeout=min(provider.timeout_s, CHECK_TIMEOUT_S),
                )
            if answer.status_code >= 400:
                error = f"HTTP {answer.status_code}"
            else:
                listed = msgspec.json.decode(answer.content).get("data") or []
                models = [str(m["id"]) for m in listed[:MAX_MODELS_LISTED] if "id" in m]
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: could not reach {provider.base_url}"
        except (msgspec.DecodeError, AttributeError, TypeError):
            error = "its /models answer is not the OpenAI list shape"
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        await self._usage.record(
            CallRecord(
                provider=name,
                model=provider.model,
                purpose="check",
                ok=error is None,
                latency_ms=latency_ms,
                error=error,
            )
        )
        return ProviderCheck(
            name=name,
            ok=error is None,
            latency_ms=latency_ms,
            models=models,
            model_offered=(provider.model in models) if models else None,
            error=error,
        )


def _retry_after(header: str | None) -> float:
    try:
        wait_s = float(header) if header else 1.0
    except ValueError:
        wait_s = 1.0
    return max(0.0, min(wait_s, RETRY_AFTER_MAX_S))
