"""Path and query parameters as the API takes them: ids fit the database's 64-bit keys."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

__all__ = ["MAX_ID", "Id", "IdOrZero"]

MAX_ID = 2**63 - 1

Id = Annotated[int, Parameter(ge=1, le=MAX_ID)]
"""A row id: 1 to 2**63 - 1 (anything else is a 400 naming the parameter, never a 500)."""
IdOrZero = Annotated[int, Parameter(ge=0, le=MAX_ID)]
