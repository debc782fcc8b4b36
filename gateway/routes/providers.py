"""Named LLM providers over the API (admins): what they are, what they have cost, and whether
each answers (see :mod:`dispatch.understanding.providers`). A key is never shown."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import PathParameter

from dispatch.understanding.providers import ProviderCheck, Providers, ProviderView
from gateway.auth import ApiRole, require

__all__ = ["ProvidersController"]


class ProvidersController(Controller):
    path = "/api/v1/providers"
    tags = ["providers"]  # noqa: RUF012 - litestar reads a class attribute
    guards = [require(ApiRole.ADMIN)]  # noqa: RUF012

    @get("/")
    async def list_providers(self, providers: NamedDependency[Providers]) -> list[ProviderView]:
        """Every named LLM: its endpoint, model, limits, where its key is read from and whether
        one is set (never the key, nor any part of it), and its calls and tokens so far."""
        return await providers.views()

    @post("/{name:str}/check", status_code=200)
    async def check_provider(
        self,
        providers: NamedDependency[Providers],
        name: Annotated[str, PathParameter(max_length=64)],
    ) -> ProviderCheck:
        """Ask the provider which models it offers: whether it answered, how fast, and whether
        the configured model is among them."""
        return await providers.check(name)
