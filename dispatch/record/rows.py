"""A batch of rows as a table in one statement, on PostgreSQL and SQLite alike.

Set-based statements (store a webhook's batch of messages, record many activities, finish
many runs) read their batch as a table ``w`` from bound parameters: arrays on PostgreSQL
(``unnest``), one JSON array of rows on SQLite (``json_each``). Either way the statement's
text does not depend on the batch's size, so it is compiled and prepared once.
"""

# ruff: noqa: S608 - every name in these statements is ours; every value is bound

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, String, Text, TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import TypeDecorator, TypeEngine

from dispatch.infra.clean import storable_json
from dispatch.record.models import Json, UTCDateTime

__all__ = ["ID", "JSON_ROW", "KEY", "TIME", "BatchStatement", "Columns", "Rows", "any_id", "sql"]

Columns = Sequence[tuple[str, TypeEngine[Any]]]
JSON_ROW: TypeEngine[Any] = Json
ID = BigInteger()
KEY = String()
TIME = UTCDateTime()


def sql(statement: str) -> TextClause:
    """A statement's text, on one line; ``:now`` bound as a time."""
    clause = text(" ".join(statement.split()))
    return clause.bindparams(bindparam("now", type_=TIME)) if ":now" in statement else clause


class Rows:
    """The batch as a table ``w`` in a statement, read from bound parameters: arrays on
    PostgreSQL (``unnest``), one JSON array of rows on SQLite (``json_each``)."""

    _CASTS: dict[type[TypeEngine[Any]], str] = {  # noqa: RUF012 - read only
        String: "varchar",
        Text: "text",
        BigInteger: "bigint",
        Integer: "integer",
        Boolean: "boolean",
    }

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.postgres = dialect.name == "postgresql"

    def table(self, param: str, columns: Sequence[tuple[str, TypeEngine[Any]]]) -> str:
        """``FROM`` clause of the rows bound as ``param``, numbered from 1 in column ``n``."""
        names = ", ".join(name for name, _ in columns)
        if self.postgres:
            arrays = ", ".join(
                f"CAST(:{param}_{i} AS {self._cast(type_)}[])"
                for i, (_, type_) in enumerate(columns)
            )
            return f"unnest({arrays}) WITH ORDINALITY AS w({names}, n)"
        fields = ", ".join(
            f"json_extract(j.value, '$[{i}]') AS {name}" for i, (name, _) in enumerate(columns)
        )
        return f"(SELECT {fields}, j.key + 1 AS n FROM json_each(:{param}) AS j) AS w"

    def member(self, param: str, type_: TypeEngine[Any]) -> str:
        """``= ANY`` / ``IN``: membership in the list bound as ``param``."""
        if self.postgres:
            return f"= ANY(CAST(:{param} AS {self._cast(type_)}[]))"
        return f"IN (SELECT value FROM json_each(:{param}))"

    def bind(
        self,
        param: str,
        columns: Sequence[tuple[str, TypeEngine[Any]]],
        rows: Sequence[Sequence[Any]],
    ) -> dict[str, Any]:
        """Parameters for :meth:`table` ``param`` holding ``rows``."""
        processors = [self._processor(type_) for _, type_ in columns]
        if self.postgres:
            return {
                f"{param}_{i}": [process(row[i]) for row in rows]
                for i, process in enumerate(processors)
            }
        return {
            param: json.dumps(
                [[process(v) for v, process in zip(row, processors, strict=True)] for row in rows],
                ensure_ascii=False,
            )
        }

    def bind_list(self, param: str, values: Iterable[Any]) -> dict[str, Any]:
        """Parameters for :meth:`member` ``param``."""
        values = sorted(values)
        return {param: values if self.postgres else json.dumps(values, ensure_ascii=False)}

    def _cast(self, type_: TypeEngine[Any]) -> str:
        if type_ is JSON_ROW:
            return "jsonb"
        if isinstance(type_, UTCDateTime):
            return "timestamptz"
        return self._CASTS[type(type_)]

    def _processor(self, type_: TypeEngine[Any]) -> Callable[[Any], Any]:
        if self.postgres:
            # asyncpg takes values as they are, and JSON as the engine's serializer writes it.
            return storable_json if type_ is JSON_ROW else _same
        process = type_.dialect_impl(self.dialect).bind_processor(self.dialect)
        return process or _same


class BatchStatement:
    """A statement over a batch of rows read as the table ``w`` (:class:`Rows`), its text
    built once per dialect: ``text`` is given that table's ``FROM`` item."""

    def __init__(self, param: str, columns: Columns, text: Callable[[str], str]) -> None:
        self._param = param
        self._columns = columns
        self._text = text
        self._built: dict[str, TextClause] = {}

    def __call__(
        self, session: AsyncSession, rows: Sequence[Sequence[Any]]
    ) -> tuple[TextClause, dict[str, Any]]:
        """The statement for ``session``'s database, and the parameters holding ``rows``."""
        dialect = session.get_bind().dialect
        table = Rows(dialect)
        if (statement := self._built.get(dialect.name)) is None:
            statement = sql(self._text(table.table(self._param, self._columns)))
            self._built[dialect.name] = statement
        return statement, table.bind(self._param, self._columns, rows)


def _same(value: Any) -> Any:
    return value


class _Ids(TypeDecorator[Sequence[int]]):
    """A list of ids bound as one parameter: a ``bigint[]`` on PostgreSQL, a JSON array on
    SQLite."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(BigInteger()))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Sequence[int] | None, dialect: Dialect) -> Any:
        ids = sorted(value or ())
        return ids if dialect.name == "postgresql" else json.dumps(ids)


class _AnyId(ColumnElement[bool]):
    """``column`` is one of the ids bound as one list (see :func:`any_id`)."""

    inherit_cache = True
    _traverse_internals = [  # noqa: RUF012 - SQLAlchemy's declaration
        ("column", InternalTraversal.dp_clauseelement),
        ("ids", InternalTraversal.dp_clauseelement),
    ]
    type = Boolean()
    _is_implicitly_boolean = True

    def __init__(self, column: ColumnElement[Any], ids: BindParameter[Any]) -> None:
        self.column = column
        self.ids = ids

    @property
    def _from_objects(self) -> list[Any]:  # its column's table joins the statement's FROM
        return list(self.column._from_objects)


@compiles(_AnyId, "postgresql")
def _any_id_postgresql(element: _AnyId, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.ids, **kw)})"


@compiles(_AnyId)
def _any_id(element: _AnyId, compiler: SQLCompiler, **kw: Any) -> str:
    column, ids = compiler.process(element.column, **kw), compiler.process(element.ids, **kw)
    return f"{column} IN (SELECT value FROM json_each({ids}))"


def any_id(column: Any, name: str = "ids") -> ColumnElement[bool]:
    """``column IN (:name)`` for a list of ids bound as one parameter. The statement's text is
    the same whatever the list's length: compiled once, prepared once per connection. An
    expanding ``IN`` is rendered again at every execution (its parameters and their casts: 8 %
    of the worker's time at saturation) and is a new prepared statement for each length."""
    return _AnyId(column, bindparam(name, type_=_Ids()))
