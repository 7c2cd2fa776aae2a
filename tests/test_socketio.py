"""SocketIO keeps trio.SocketStream's contract (see trioserve/_socketio.py), and a
connection's helper tasks in a shared nursery stay structured (trioserve/_tasks.py)."""

from __future__ import annotations

import functools
import logging
import socket as stdlib_socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trioserve
from trioserve._exchange import Exchange
from trioserve._socketio import SocketIO, io_for
from trioserve._tasks import ConnectionTasks


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """Two ends of a TCP connection on 127.0.0.1 (resets need TCP, not socketpair)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    finally:
        await trio.aclose_forcefully(listeners[0])
    async with client, server:
        yield server, client


def io_of(stream: trio.SocketStream) -> SocketIO:
    io = io_for(stream)
    assert isinstance(io, SocketIO)
    return io


async def test_other_streams_are_used_as_they_are() -> None:
    left, _ = trio.testing.memory_stream_pair()
    assert io_for(left) is left


async def test_reads_what_was_sent_then_end_of_file() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        await client.send_all(b"hello")
        assert await io.receive_some(3) == b"hel"
        assert await io.receive_some(100) == b"lo"
        await client.send_eof()
        assert await io.receive_some(100) == b""


async def test_a_cancelled_read_takes_nothing() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(io.receive_some, 100)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        # Bytes already there: a read in a cancelled scope raises before it takes any.
        await client.send_all(b"kept")
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await io.receive_some(100)
        assert scope.cancelled_caught
        assert await io.receive_some(100) == b"kept"


async def test_a_read_with_bytes_waiting_is_still_a_checkpoint() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        await client.send_all(b"x")
        await trio.testing.wait_all_tasks_blocked()
        with trio.testing.assert_checkpoints():
            assert await io.receive_some(1) == b"x"
        with trio.testing.assert_checkpoints():
            await io.send_all(b"y")


async def test_two_readers_at_once_are_refused() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(io.receive_some, 100)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await io.receive_some(100)
            await client.send_all(b"for the first")


async def test_a_closed_socket_raises_closed() -> None:
    async with tcp_pair() as (server, _client):
        io = io_of(server)
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await io.receive_some(100)
        with pytest.raises(trio.ClosedResourceError):
            await io.send_all(b"x")


async def test_closing_the_socket_wakes_a_waiting_read_with_closed() -> None:
    async with tcp_pair() as (server, _client):
        io = io_of(server)

        async def read() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await io.receive_some(100)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()


async def test_sending_after_eof_raises_closed() -> None:
    async with tcp_pair() as (server, _client):
        io = io_of(server)
        await server.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await io.send_all(b"x")


async def test_a_reset_connection_raises_broken() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        linger = struct.pack("ii", 1, 0)  # close with RST
        client.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, linger)
        await client.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await io.receive_some(100)
        with pytest.raises(trio.BrokenResourceError):
            await io.send_all(b"x" * 65536)  # the RST is in: the write is refused


async def test_a_write_larger_than_the_socket_buffer_arrives_whole() -> None:
    data = bytes(range(256)) * 32768  # 8 MiB: many partial writes and waits
    async with tcp_pair() as (server, client):
        io = io_of(server)
        received = bytearray()

        async def read() -> None:
            while len(received) < len(data):
                received.extend(await client.receive_some(65536))
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await io.send_all(data)
    assert received == data


async def test_send_now_writes_what_fits_without_a_checkpoint() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        with trio.testing.assert_no_checkpoints():
            assert io.send_now(b"hello") == 5
        assert await client.receive_some(100) == b"hello"
        # A peer that does not read: the buffer fills, and then nothing more fits.
        taken = 0
        with trio.testing.assert_no_checkpoints():
            while (n := io.send_now(b"x" * 65536)) > 0:
                taken += n
        assert taken > 0
        assert io.send_now(b"x") == 0


async def test_send_now_on_a_closed_or_reset_socket_raises() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        linger = struct.pack("ii", 1, 0)
        client.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, linger)
        await client.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await io.receive_some(100)  # takes in the reset
        with pytest.raises(trio.BrokenResourceError):
            io.send_now(b"x")
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError):
            io.send_now(b"x")


async def test_a_waiting_read_is_woken_by_the_bytes() -> None:
    async with tcp_pair() as (server, client):
        io = io_of(server)
        got: list[bytes] = []

        async def read() -> None:
            got.append(await io.receive_some(100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"woken")
        assert got == [b"woken"]


# --- ConnectionTasks -----------------------------------------------------------------


async def test_a_failing_helper_is_logged_and_reported_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[str] = []

    async def helper(scope: trio.CancelScope, done: trio.Event) -> None:
        raise RuntimeError("a bug")

    async with trio.open_nursery() as nursery:  # would raise if the bug reached it
        tasks = ConnectionTasks(nursery, lambda: failures.append("failed"))
        done = trio.Event()
        tasks.start_soon(helper, trio.CancelScope(), done)
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()
    assert failures == ["failed"]
    assert "internal error in a connection's task" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    await tasks.stop()  # nothing left running


async def test_stop_cancels_the_helpers_and_waits_for_them() -> None:
    finished: list[str] = []

    async def helper(scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                await trio.sleep_forever()
            with trio.CancelScope(shield=True):
                await trio.sleep(0.01)  # cleanup that takes a while
            finished.append("cleaned up")
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        tasks = ConnectionTasks(nursery, lambda: None)
        for _ in range(2):
            tasks.start_soon(helper, trio.CancelScope(), trio.Event())
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as outer:
            outer.cancel()  # stop waits all the same: the stream closes after
            await tasks.stop()
        assert finished == ["cleaned up", "cleaned up"]


async def test_a_helper_bug_costs_its_connection_not_the_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = True
    original = Exchange._watch

    async def watch(self: Exchange, scope: trio.CancelScope, done: trio.Event) -> None:
        if broken:
            raise RuntimeError("a bug in the watcher")
        await original(self, scope, done)

    monkeypatch.setattr(Exchange, "_watch", watch)

    async def handler(request: trioserve.Request) -> trioserve.Response:
        await trio.sleep(0.01)  # suspends: the watcher starts
        return trioserve.Response(200, body=b"done")

    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
        server = await nursery.start(serve)
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            async with stream:
                await stream.send_all(request)
                answer = b""
                try:
                    while data := await stream.receive_some():
                        answer += data
                except trio.BrokenResourceError:
                    pass  # aborted with a reset
            assert answer == b""
            broken = False
            stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            async with stream:
                await stream.send_all(request)
                answer = await stream.receive_some()
            assert answer.startswith(b"HTTP/1.1 200 ")
        stats = server.statistics()
        assert stats.connections_aborted == 1
        server_errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert [r.getMessage() for r in server_errors] == ["internal error in a connection's task"]
        nursery.cancel_scope.cancel()


async def test_pipelined_requests_let_other_connections_in() -> None:
    # Responses that fit are written without a checkpoint: a connection with fifty
    # requests in hand must still yield between them, or it would hold the loop.
    order: list[str] = []
    all_served = trio.Event()

    async def handler(request: trioserve.Request) -> trioserve.Response:
        order.append(request.path)
        if len(order) == 51:
            all_served.set()
        return trioserve.Response(200, body=b"ok")

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
        server = await nursery.start(serve)
        port = server.ports[0]
        async with (
            await trio.open_tcp_stream("127.0.0.1", port) as busy,
            await trio.open_tcp_stream("127.0.0.1", port) as other,
        ):
            await trio.testing.wait_all_tasks_blocked()
            pipelined = b"".join(b"GET /busy%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(50))
            await busy.send_all(pipelined)
            await other.send_all(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.fail_after(10):
                await all_served.wait()
        nursery.cancel_scope.cancel()
    assert order.index("/other") < 49


async def test_a_request_in_hand_is_answered_though_its_head_deadline_passed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The handler answers without suspending but takes longer than what was left of
    # the head deadline: its bytes came in time, so it is served (the write without
    # a checkpoint once fired that passed deadline and aborted it as a write timeout).
    async def handler(request: trioserve.Request) -> trioserve.Response:
        time.sleep(0.3)  # noqa: ASYNC251  # blocking on purpose: no checkpoint
        return trioserve.Response(200, body=b"ok")

    config = trioserve.Config(header_timeout=0.2)
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trioserve.serve, handler, 0, host="127.0.0.1", config=config)
        server = await nursery.start(serve)
        with trio.fail_after(10):
            async with await trio.open_tcp_stream("127.0.0.1", server.ports[0]) as stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while not answer.endswith(b"ok"):
                    answer += await stream.receive_some()
        assert answer.startswith(b"HTTP/1.1 200 ")
        stats = server.statistics()
        assert (stats.connections_aborted, stats.write_timeouts) == (0, 0)
        nursery.cancel_scope.cancel()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_streamed_body_ready_at_once_still_yields_per_piece() -> None:
    # Only whole responses go out without a checkpoint: a streamed body whose pieces
    # are all ready must not hold the loop until the socket buffer is full.
    pieces = 2000
    ticks = 0

    async def body() -> AsyncIterator[bytes]:
        for _ in range(pieces):
            yield b"x" * 1024

    async def handler(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200, body=body())

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.lowlevel.checkpoint()
            ticks += 1

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
        server = await nursery.start(serve)
        with trio.fail_after(10):
            async with await trio.open_tcp_stream("127.0.0.1", server.ports[0]) as stream:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ticker)
                received = 0
                while data := await stream.receive_some(1 << 20):
                    received += len(data)
        assert received > pieces * 1024
        nursery.cancel_scope.cancel()
    assert ticks >= pieces // 2  # at least a turn for others every other piece
