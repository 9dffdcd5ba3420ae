"""The aiohttp-backed httpx transport over real loopback sockets: what it sends, how it streams, how it fails.

The gateway sends every upstream call through it, so each failure must surface as the httpx error the
resilience code classifies (a refused connection is not a timeout; a hang-up is not a success).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from typing import Awaitable, Callable

import httpx
import pytest

from app.upstream.transport import AiohttpTransport, upstream_client

pytestmark = pytest.mark.anyio

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback HTTP/1.1 server scripted per test: reads each request, hands it to `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler, self.connections, self.requests = handler, 0, []
        self.closed = 0  # connections that ended (the client hung up, or a handler closed them)
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.handler(request, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed += 1
            writer.close()


def response(body: bytes, status: str = "200 OK", *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def ok_json(request: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(response(b'{"ok": true}', "200 OK", "content-type: application/json", "x-multi: a",
                          "x-multi: b"))
    await writer.drain()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AiohttpTransport(httpx.Limits(max_connections=8)))


async def test_sends_the_request_as_given_and_reuses_the_connection():
    server = RawServer(ok_json)
    async with server as url, client() as http:
        for _ in range(3):
            r = await http.post(url + "/v1/chat/completions", json={"model": "m", "n": 1},
                                headers={"authorization": "Bearer sk-test"})
            assert r.status_code == 200 and r.json() == {"ok": True}
            assert r.headers.get_list("x-multi") == ["a", "b"]
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1")
    assert b"authorization: Bearer sk-test" in head.lower().replace(b"bearer", b"Bearer")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body) == {"model": "m", "n": 1}
    assert server.connections == 1  # keep-alive: three requests, one connection


async def test_a_gzipped_body_is_decoded_once():
    payload = gzip.compress(b'{"answer": 42}')

    async def gzipped(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response(payload, "200 OK", "content-type: application/json", "content-encoding: gzip"))
        await writer.drain()

    async with RawServer(gzipped) as url, client() as http:
        assert (await http.get(url)).json() == {"answer": 42}


async def test_a_stream_is_delivered_as_it_arrives():
    second = asyncio.Event()

    async def sse(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for event in (b"data: one\n\n", b"data: two\n\n"):
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
            await second.wait()  # the second event only goes out once the client has seen the first
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(sse) as url, client() as http:
        async with http.stream("GET", url) as r:
            lines = []
            async for line in r.aiter_lines():
                if line:
                    lines.append(line)
                    second.set()
    assert lines == ["data: one", "data: two"]


async def test_a_refused_connection_is_a_connect_error_not_a_timeout():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_a_server_that_hangs_up_without_answering_is_a_protocol_error():
    async def hang_up(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with RawServer(hang_up) as url, client() as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(url, json={})


async def test_a_body_cut_short_is_a_read_error():
    async def cut(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b'{"partial":')
        await writer.drain()
        writer.close()

    async with RawServer(cut) as url, client() as http:
        with pytest.raises(httpx.ReadError):
            await http.get(url)


async def test_a_silent_server_is_a_read_timeout():
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with RawServer(silent) as url, client() as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url, timeout=httpx.Timeout(5, read=0.2))


async def test_closing_the_client_closes_its_connections():
    server = RawServer(ok_json)
    async with server as url:
        http = client()
        await http.get(url)
        await asyncio.sleep(0.05)
        assert (server.connections, server.closed) == (1, 0)  # kept alive in the pool
        await http.aclose()
        for _ in range(100):  # the server sees EOF shortly after
            if server.closed:
                break
            await asyncio.sleep(0.01)
    assert server.closed == 1


async def test_the_gateways_client_does_not_carry_one_callers_cookies_to_the_next():
    async def sets_a_cookie(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response(b"{}", "200 OK", "set-cookie: session=caller-a; Path=/"))
        await writer.drain()

    server = RawServer(sets_a_cookie)
    async with server as url, upstream_client(httpx.Limits(max_connections=8)) as http:
        await http.post(url + "/v1/chat/completions", json={})
        await http.post(url + "/v1/chat/completions", json={})
    assert len(server.requests) == 2
    assert b"cookie:" not in server.requests[1].lower()
