"""python-telegram-bot's networking on aiohttp: the Bot API's calls as ``Bot`` makes them, over
kept-alive connections, at a tenth of the CPU of its default httpx backend.

A reply costs one Bot API call. Measured on this machine (32 calls at once to a local server
answering a fixed 200): httpx with its connection pool about 2.2 ms of CPU a call, aiohttp about
0.2 ms; in a worker at saturation the httpx call was about a third of all its CPU. aiohttp is
already in the lock (twilio's async client runs on it). python-telegram-bot takes any
:class:`~telegram.request.BaseRequest`; this one keeps its contract: form fields as it encodes
them, files as multipart, its timeouts, no redirects, the environment's proxy settings (read
once a host: aiohttp's ``trust_env`` looks them up, and reads ``~/.netrc``, in a thread at every
request), and its errors: ``TimedOut`` when a time limit passed after the request could have
gone out (so a reply that may have been delivered is never sent again), ``NetworkError``
otherwise (no connection in time, refused, reset: as with the httpx backend, a connection the
server closed is tried again, which is how a kept-alive connection it dropped while idle is
replaced).
"""

from __future__ import annotations

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData
from yarl import URL

__all__ = ["AiohttpRequest"]

_Proxy = tuple[URL | None, aiohttp.BasicAuth | None]
"""A host's proxy and its credentials (none: the host is called directly)."""


class AiohttpRequest(BaseRequest):
    """A :class:`~telegram.request.BaseRequest` on one ``aiohttp.ClientSession``.

    Timeouts as python-telegram-bot's: ``pool_timeout`` to wait for a free connection,
    ``connect_timeout`` to open one, ``read_timeout`` between reads of the answer,
    ``write_timeout`` (``media_write_timeout`` for uploads) to send the request. aiohttp has no
    write limit of its own, so a call as a whole is bounded by the sum of all four.
    """

    __slots__ = ("_limits", "_pool_size", "_proxies", "_session")

    def __init__(
        self,
        connection_pool_size: int = 64,
        *,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        self._pool_size = connection_pool_size
        self._limits = {
            "read": read_timeout,
            "write": write_timeout,
            "connect": connect_timeout,
            "pool": pool_timeout,
            "media_write": media_write_timeout,
        }
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str | None], _Proxy] = {}

    @property
    def read_timeout(self) -> float | None:
        return self._limits["read"]

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size),
                headers={"User-Agent": self.USER_AGENT},
            )

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def do_request(  # noqa: PLR0917 - python-telegram-bot's signature
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if self._session is None or self._session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data.multipart_data if request_data else None
        fields = request_data.json_parameters if request_data else None
        timeout = self._timeout(
            read=self._given(read_timeout, "read"),
            write=self._given(write_timeout, "media_write" if files else "write"),
            connect=self._given(connect_timeout, "connect"),
            pool=self._given(pool_timeout, "pool"),
        )
        body: aiohttp.FormData | dict[str, str] | None = fields
        if files:
            body = aiohttp.FormData(fields or {})
            for name, (filename, content, mime) in files.items():
                body.add_field(name, content, filename=filename, content_type=mime)
        target = URL(url)  # parsed once, for the proxy and the call
        proxy, proxy_auth = self._proxy(target)
        try:
            async with self._session.request(
                method,
                target,
                data=body,
                timeout=timeout,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            ) as answer:
                return answer.status, await answer.read()
        except aiohttp.ConnectionTimeoutError as err:
            # No free connection in time, or none opened: the request was never sent.
            raise NetworkError(f"aiohttp.{type(err).__name__}: {err}") from err
        except TimeoutError as err:
            raise TimedOut from err
        except aiohttp.ClientError as err:
            raise NetworkError(f"aiohttp.{type(err).__name__}: {err}") from err

    def _proxy(self, url: URL) -> _Proxy:
        """The proxy ``HTTP_PROXY``/``HTTPS_PROXY`` and ``NO_PROXY`` name for ``url``'s host
        (as httpx honoured them), looked up the first time the host is called."""
        origin = (url.scheme, url.host)
        if origin not in self._proxies:
            try:
                self._proxies[origin] = get_env_proxy_for_url(url)
            except LookupError:
                self._proxies[origin] = (None, None)
        return self._proxies[origin]

    def _given(self, value: ODVInput[float], default: str) -> float | None:
        return self._limits[default] if isinstance(value, DefaultValue) else value

    @staticmethod
    def _timeout(
        *, read: float | None, write: float | None, connect: float | None, pool: float | None
    ) -> aiohttp.ClientTimeout:
        parts = (read, write, connect, pool)
        return aiohttp.ClientTimeout(
            total=None if None in parts else sum(p for p in parts if p is not None),
            connect=None if pool is None or connect is None else pool + connect,
            sock_connect=connect,
            sock_read=read,
        )
