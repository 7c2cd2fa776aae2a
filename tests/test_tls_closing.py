"""How a TLS connection ends: close_notify at once, and a closing bug costs one connection.

In memory and in virtual time: the client is a ``trio.SSLStream`` with
``https_compatible=False``, which raises on an EOF that came without close_notify, so a
clean end here proves the server sent one.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
import trustme

import trioserve
from trioserve import _closing


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("trioserve.test").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


async def chunks() -> AsyncIterator[bytes]:
    yield b"one "
    yield b"two"


async def streamed(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=chunks())  # no length: HTTP/1.0 ends it at the close


async def read_to_clean_eof(client: trio.SSLStream[trio.abc.Stream]) -> bytes:
    received = b""
    while data := await client.receive_some(65536):  # raises on EOF without close_notify
        received += data
    return received


async def exchange_over_tls(ca: trustme.CA, request: bytes) -> tuple[bytes, float]:
    """Send ``request`` to a TLS server in memory; what came back up to a clean EOF,
    and when that EOF came."""
    server_context, client_context = contexts(ca)
    server = trioserve.Server(streamed, ssl_context=server_context)
    client_end, server_end = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_end, client_context, server_hostname="trioserve.test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, server_end)
        await client.send_all(request)
        received = await read_to_clean_eof(client)
        ended = trio.current_time()
        await client.aclose()
    return received, ended


async def test_a_close_delimited_body_ends_with_close_notify_at_once(
    ca: trustme.CA, autojump_clock: trio.testing.MockClock
) -> None:
    received, ended = await exchange_over_tls(ca, b"GET / HTTP/1.0\r\n\r\n")
    # Not after the lingering close's second: the client needs no more bytes.
    assert ended < _closing.LINGER_SECONDS
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.endswith(b"\r\n\r\none two")


async def test_a_keep_alive_response_then_close_ends_with_close_notify(
    ca: trustme.CA, autojump_clock: trio.testing.MockClock
) -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    received, _ = await exchange_over_tls(ca, request)
    assert received.endswith(b"3\r\ntwo\r\n0\r\n\r\n")


async def test_a_bug_while_closing_costs_one_connection_not_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(stream: trio.abc.Stream, *, peer_eof: bool) -> None:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(_closing, "close_gracefully", broken)
    server = trioserve.Server(streamed)
    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        await client_end.send_all(b"GET / HTTP/1.0\r\n\r\n")
        await server.serve_connection(server_end)  # returns: nothing escapes
        received = b""
        while data := await client_end.receive_some(65536):
            received += data
    assert received.endswith(b"one two")
    assert "internal error closing a connection" in caplog.text
    assert server.statistics().connections_open == 0
