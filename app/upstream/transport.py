"""The gateway's HTTP client for upstream calls: httpx's API over aiohttp's connection pool, no cookies.

Why: with httpx's default transport (httpcore) the event loop spent over half its time in the pool itself
(on every request httpcore checks every pooled connection for expiry, one `select` per connection). Measured
with bench/overhead.py-style load on 2 cores: pass-through 355 -> 564 req/s at c=16, and `jisi` at c=64
32.7 -> 43.3 req/s, because the loop leaves more CPU to the embedding model. The code above it keeps httpx's
API (requests, timeouts, streams, error types), and tests keep mocking with respx (`using="httpx"`).

Why not the httpx-aiohttp package: its 0.2.0 maps every aiohttp connection error (refused, reset, the server
hanging up) to `httpx.ConnectTimeout`, so a dead upstream would read as a timeout (504) instead of a 502.
"""

from __future__ import annotations

import contextlib
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import AsyncIterator, Iterator

import aiohttp
import httpx

# First match wins, so subclasses come before their bases.
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),  # connecting, or waiting for a pooled connection
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, DNS, TLS handshake
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),  # the body was cut short
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # a malformed status line or headers
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.NonHttpUrlClientError, httpx.UnsupportedProtocol),
    (aiohttp.ClientOSError, httpx.ReadError),  # reset by peer mid-exchange
    (aiohttp.ClientError, httpx.TransportError),
)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        mapped = next(to for frm, to in _ERRORS if isinstance(exc, frm))
        raise mapped(str(exc) or type(exc).__name__) from exc


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives (SSE chunks are not held back); closing returns the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # back to the pool when the body was read to the end; aiohttp closes the connection otherwise
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """`httpx.AsyncClient(transport=AiohttpTransport(limits))`; the session is made on first use, in the loop."""

    def __init__(self, limits: httpx.Limits = httpx.Limits()) -> None:
        self._limits = limits
        self._session: aiohttp.ClientSession | None = None

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,  # 0 = no limit, as None is for httpx
                keepalive_timeout=self._limits.keepalive_expiry or 5.0,
                ssl=httpx.create_ssl_context(),  # certifi's roots, like httpx: same trust as before
            )
            # no cookie jar: upstream calls are independent; no env proxies: httpx mounts those itself
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  auto_decompress=False)
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        content = await request.aread()
        with _httpx_errors():
            response = await self._client_session().request(
                request.method, str(request.url), headers=request.headers.multi_items(),
                data=content or None, allow_redirects=False, skip_auto_headers=("Content-Type",),
                timeout=aiohttp.ClientTimeout(total=None, connect=timeout.get("pool"),
                                              sock_connect=timeout.get("connect"), sock_read=timeout.get("read")))
        return httpx.Response(response.status, headers=response.raw_headers, stream=_Body(response),
                              request=request, extensions={"http_version": b"HTTP/1.1",
                                                           "reason_phrase": (response.reason or "").encode()})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def upstream_client(limits: httpx.Limits, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """One client shared by every request, so it must keep no state between them: an httpx client's cookie
    jar would replay one caller's upstream Set-Cookie (a session, a sticky-routing cookie) on every later
    call to that upstream, whoever made it. `transport` is for tests; the default is AiohttpTransport."""
    refuse_all = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(transport=transport or AiohttpTransport(limits), limits=limits, cookies=refuse_all)
