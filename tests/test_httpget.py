"""Tests for monitoring.httpget: the pure response parser and the keep-alive client."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.monitoring.httpget import GetError, KeepAliveClient, parse_response

MakeServer = Callable[..., Awaitable[TestServer]]

# --- parse_response (pure) ------------------------------------------------------------------

PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;ext=1\r\nwiki\r\n6\r\npedia!\r\n0\r\nX-Trailer: y\r\n\r\n"
)


def test_content_length_body() -> None:
    response = parse_response(PLAIN)
    assert response is not None
    assert (response.status, response.body, response.keep_alive) == (200, b"hello", True)
    assert response.consumed == len(PLAIN)


def test_chunked_body_with_extensions_and_trailers() -> None:
    response = parse_response(CHUNKED + b"HTTP/1.1 ...next")
    assert response is not None
    assert response.body == b"wikipedia!" and response.consumed == len(CHUNKED)


@given(st.sampled_from([PLAIN, CHUNKED]), st.data())
def test_every_prefix_is_incomplete(whole: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert parse_response(whole[:cut]) is None


def test_connection_close_http10_interim_and_no_body() -> None:
    closing = parse_response(PLAIN.replace(b"Content-Type", b"Connection: close\r\nX"))
    assert closing is not None and not closing.keep_alive
    old = parse_response(PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert old is not None and not old.keep_alive
    interim = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n" + PLAIN)
    assert interim is not None and interim.body == b"hello"
    empty = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert empty is not None and empty.body == b"" and empty.keep_alive


def test_body_without_length_ends_with_the_connection() -> None:
    raw = b"HTTP/1.1 200 OK\r\n\r\npartial"
    assert parse_response(raw) is None
    response = parse_response(raw, eof=True)
    assert response is not None and response.body == b"partial" and not response.keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n",
    ],
)
def test_malformed_or_oversized_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response(raw, limit=100)


def test_endless_head_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="head too long"):
        parse_response(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000)


# --- KeepAliveClient against real sockets -------------------------------------------------


@pytest.fixture
async def echo(aiohttp_server: MakeServer) -> TestServer:
    """An aiohttp server answering /echo with the Authorization header, /missing with 404."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Authorization", "-"))

    app = web.Application()
    app.router.add_get("/echo", handler)
    server: TestServer = await aiohttp_server(app)
    return server


async def test_one_connection_serves_many_gets(echo: TestServer) -> None:
    assert echo.port is not None
    client = KeepAliveClient("127.0.0.1", echo.port)
    try:
        for _ in range(20):
            response = await client.get("/echo", {"Authorization": "Bearer k"})
            assert (response.status, response.body) == (200, b"Bearer k")
        missing = await client.get("/missing")
        assert missing.status == 404
        assert client.connections == 1
    finally:
        client.close()


@pytest.fixture
async def one_shot() -> AsyncIterator[tuple[int, list[int]]]:
    """A raw server that answers one request per connection, then closes without saying so."""
    served: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, served
    server.close()
    await server.wait_closed()


async def test_a_connection_the_server_ended_is_replaced(one_shot: tuple[int, list[int]]) -> None:
    port, served = one_shot
    client = KeepAliveClient("127.0.0.1", port)
    try:
        for _ in range(5):
            assert (await client.get("/")).body == b"ok"
        assert len(served) == 5 and client.connections == 5
    finally:
        client.close()


async def test_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = KeepAliveClient("127.0.0.1", port)
    with pytest.raises(GetError) as caught:
        await client.get("/")
    assert caught.value.reason == "connect"


async def test_a_timeout_closes_the_connection_and_the_next_get_works() -> None:
    release = asyncio.Event()
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            served += 1
            if served == 1:
                await release.wait()  # the first answer comes too late
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + str(served).encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = KeepAliveClient("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await client.get("/")
        release.set()
        response = await client.get("/")  # not the late answer to the first request
        assert response.body == b"2" and client.connections == 2
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_garbage_is_a_parse_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = KeepAliveClient("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(GetError) as caught:
            await client.get("/")
        assert caught.value.reason == "parse"
    finally:
        client.close()
        server.close()
        await server.wait_closed()
