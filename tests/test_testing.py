"""Tests of trioserve.testing itself: the streams, the fault injectors, the clients.

A fault injector that silently did nothing would make every test built on it pass
for the wrong reason, so each one is checked here against what the server (or the
other end of the stream) actually sees, and when.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trioserve
from trioserve.testing import (
    FailAfter,
    PipeStream,
    open_client,
    open_connection,
    parse_responses,
    receive_all,
    receive_then_close,
    reset,
    send_then_close,
    send_with_stall,
    stream_pair,
    trickle,
)

from .conftest import echo, hello

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

# --- stream_pair ---------------------------------------------------------------------------


async def test_stream_pair_passes_trios_half_closeable_stream_checks() -> None:
    async def maker() -> tuple[PipeStream, PipeStream]:
        return stream_pair()

    async def clogged_maker() -> tuple[PipeStream, PipeStream]:
        # Both directions full: the next send blocks until the other end reads.
        a, b = stream_pair(buffer_size=1)
        await a.send_all(b"?")
        await b.send_all(b"?")
        return a, b

    await trio.testing.check_half_closeable_stream(maker, clogged_maker)


async def test_stream_pair_buffer_is_bounded_like_a_socket() -> None:
    client, server = stream_pair(buffer_size=10)
    await server.send_all(b"x" * 10)  # fits
    with trio.testing.assert_checkpoints(), trio.move_on_after(1) as blocked:
        await server.send_all(b"y")  # a client that never reads blocks the writer
    assert blocked.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"z" * 15)
        await trio.testing.wait_all_tasks_blocked()
        received = b""
        while len(received) < 25:
            received += await client.receive_some()
    assert received == b"x" * 10 + b"z" * 15


async def test_close_gives_eof_and_fails_the_peers_sends() -> None:
    client, server = stream_pair()
    await client.send_all(b"last words")
    await client.aclose()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"anyone?")


async def test_reset_breaks_both_directions_of_the_peer() -> None:
    client, server = stream_pair()
    await reset(client, b"GET")
    # Unlike a close, a reset discards what was in flight, as a TCP RST does.
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")


async def test_fail_after_breaks_after_n_bytes_in_total() -> None:
    client, server = stream_pair()
    wrapped = FailAfter(server, 5)
    await client.send_all(b"abc")
    assert await wrapped.receive_some() == b"abc"
    await wrapped.send_all(b"de")  # 5 bytes in total: still fine
    with pytest.raises(trio.BrokenResourceError, match="injected"):
        await wrapped.send_all(b"f")
    assert await client.receive_some() == b"de"


# --- fault injectors, seen from the other end, in virtual time -----------------------------


async def _timed_receive(stream: trio.abc.ReceiveStream) -> list[tuple[float, bytes]]:
    arrivals = []
    while data := await stream.receive_some():
        arrivals.append((trio.current_time(), data))
    return arrivals


async def test_trickle_sends_piece_by_piece_at_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = stream_pair()
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await trickle(client, b"abcdefg", size=3, interval=2.0)
            await client.aclose()

        nursery.start_soon(send)
        arrivals = await _timed_receive(server)
    assert arrivals == [(0.0, b"abc"), (2.0, b"def"), (4.0, b"g")]


async def test_trickle_stops_quietly_when_the_server_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, client, b"x" * 100)
        await server.receive_some()
        await server.aclose()
    assert trio.current_time() == 1.0  # the second byte found the server gone


async def test_send_with_stall(autojump_clock: trio.testing.MockClock) -> None:
    client, server = stream_pair()
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await send_with_stall(client, b"headbody", after=4, duration=7.5)
            await client.aclose()

        nursery.start_soon(send)
        arrivals = await _timed_receive(server)
    assert arrivals == [(0.0, b"head"), (7.5, b"body")]


async def test_send_then_close_mid_request_is_a_client_disconnect() -> None:
    server = trioserve.Server(echo)
    async with open_connection(echo, server=server) as stream:
        await send_then_close(
            stream, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhalf"
        )
    stats = server.statistics()
    assert stats.client_disconnects == 1
    assert stats.requests_served == 0
    assert stats.connections_open == 0


async def test_receive_then_close_mid_response_cancels_the_streamed_body() -> None:
    closed = trio.Event()

    async def endless(request: trioserve.Request) -> trioserve.Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 1000
            finally:
                closed.set()

        return trioserve.Response(200, body=body())

    server = trioserve.Server(endless)
    async with open_connection(endless, server=server) as stream:
        await stream.send_all(GET)
        first = await receive_then_close(stream, 100)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert len(first) == 100
    assert closed.is_set()
    stats = server.statistics()
    assert stats.client_disconnects == 1
    assert stats.connections_aborted == 1


async def test_reset_mid_request_is_seen_by_the_server_as_broken() -> None:
    server = trioserve.Server(echo)
    async with open_connection(echo, server=server) as stream:
        await reset(stream, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhalf")
    assert server.statistics().connections_open == 0
    assert server.statistics().requests_served == 0


async def test_open_connection_wrap_injects_a_failing_stream() -> None:
    server = trioserve.Server(hello)
    async with open_connection(
        hello, server=server, wrap=lambda end: FailAfter(end, len(GET) + 20)
    ) as stream:
        await stream.send_all(GET)
        answer = await receive_all(stream)
    # The server could write 20 bytes of its response before the "network" failed.
    assert len(answer) == 20
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert server.statistics().client_disconnects == 1


async def test_receive_all_refuses_a_runaway_response() -> None:
    client, server = stream_pair()
    await server.send_all(b"x" * 100)
    with pytest.raises(ValueError, match="more than 50 bytes"):
        await receive_all(client, max_bytes=50)


# --- open_client -----------------------------------------------------------------------------


async def test_open_client_keeps_one_connection_alive() -> None:
    async with open_client(echo) as client:
        for i in range(3):
            response = await client.post("/", body=f"n{i}")
            assert response.status == 200
            assert response.text == f"n{i}"
            assert response.http_version == "1.1"
        assert client.connections_opened == 1
    # Counted after the response is written: read it once the connection task is done.
    assert client.server.statistics().requests_served == 3


async def test_open_client_reconnects_after_the_server_closes() -> None:
    async with open_client(hello) as client:
        first = await client.get("/", headers=[("Connection", "close")])
        assert first.headers["connection"] == "close"
        second = await client.request("GET", "/")
        assert second.body == b"Hello, world!"
        assert client.connections_opened == 2


async def test_open_client_raises_when_the_response_is_cut_off() -> None:
    async def broken(request: trioserve.Request) -> trioserve.Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("the handler failed mid-response")

        return trioserve.Response(200, body=body())

    async with open_client(broken) as client:
        with pytest.raises(trio.BrokenResourceError):
            await client.get("/")
        assert client.server.statistics().handler_errors == 1


async def test_open_client_works_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(request: trioserve.Request) -> trioserve.Response:
        await trio.sleep(3600)
        return trioserve.Response(200, body=b"an hour later")

    async with open_client(slow) as client:
        response = await client.get("/")
    assert response.body == b"an hour later"
    assert trio.current_time() == 3600


# --- parse_responses -------------------------------------------------------------------------


def test_parse_responses_pipelined_and_informational() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno!\r\n0\r\n\r\n"
    )
    first, second = parse_responses(data)
    assert (first.status, first.body) == (200, b"ok")
    assert (second.status, second.reason, second.body) == (404, "Not Found", b"no!")
    assert parse_responses(b"") == []


def test_parse_responses_head_has_no_body() -> None:
    [response] = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", method="HEAD")
    assert response.headers["content-length"] == "5"
    assert response.body == b""


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # truncated body
        b"HTTP/1.1 200 OK\r\nContent-",  # truncated head
        b"HTTP/1.1 2000 OK\r\n\r\n",  # not a status
        b"hello",
        # Bytes after a response that closes the connection.
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\nextra",
        # A 1xx with no final response after it.
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ],
)
def test_parse_responses_refuses_what_is_not_a_complete_response(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_responses(data)
