"""Graceful shutdown and lifecycle, in virtual time over an in-memory listener."""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trioserve
from trioserve._tracker import NEW_CONNECTION_GRACE
from trioserve.testing import MemoryListener, PipeStream, receive_all

Handler = Callable[[trioserve.Request], Awaitable[trioserve.Response]]

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def hello(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=b"hello")


async def slow(request: trioserve.Request) -> trioserve.Response:
    await trio.sleep(10)
    return trioserve.Response(200, body=b"slow")


async def forever(request: trioserve.Request) -> trioserve.Response:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def streaming(request: trioserve.Request) -> trioserve.Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(10):
            await trio.sleep(1)
            yield b"chunk %d\n" % i

    return trioserve.Response(200, body=chunks())


@asynccontextmanager
async def running(
    handler: Handler, config: trioserve.Config | None = None
) -> AsyncIterator[tuple[trioserve.Server, MemoryListener]]:
    listener = MemoryListener()
    server = trioserve.Server(handler, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        yield server, listener
        nursery.cancel_scope.cancel()


async def receive_and_close(stream: PipeStream) -> bytes:
    """Read to EOF, then close: what a real client does when the server closes."""
    answer = await receive_all(stream)
    await stream.aclose()
    return answer


async def answer_during_shutdown(server: trioserve.Server, stream: PipeStream) -> bytes:
    """Begin a graceful shutdown and read the client's answer to its end; returns
    once both the answer and the shutdown are complete."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.shutdown)
        return await receive_and_close(stream)


async def test_shutdown_closes_kept_alive_connections_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Kept-alive connections close at once; one that has not sent its first request
    yet gets NEW_CONNECTION_GRACE to send it, then closes: nothing polls or waits
    longer."""
    async with running(hello) as (server, listener):
        streams = []
        for _ in range(5):
            stream = await listener.connect()
            await stream.send_all(GET)
            await stream.receive_some()  # served, now idle on keep-alive
            streams.append(stream)
        never_spoke = await listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().connections_idle == 6
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown)
            for stream in streams:
                assert await receive_all(stream) == b""
            assert trio.current_time() == start  # no polling, no waiting
            assert await receive_all(never_spoke) == b""
            assert trio.current_time() == start + NEW_CONNECTION_GRACE
        assert server.statistics().connections_open == 0
        assert server.statistics().shutdown_cutoffs == 0
        assert server.statistics().header_timeouts == 0  # the grace is no timeout


async def test_a_new_connections_first_request_during_the_grace_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Accepted just before the shutdown, its request on its way: answered, with
    Connection: close (a rolling restart drops no accepted connection)."""
    async with running(hello) as (server, listener):
        stream = await listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown)
            await trio.sleep(NEW_CONNECTION_GRACE / 2)
            await stream.send_all(GET)
            answer = await receive_all(stream)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nconnection: close\r\n" in answer.lower()


async def test_in_flight_request_completes_with_connection_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(slow) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        await trio.sleep(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown)
            await trio.testing.wait_all_tasks_blocked()
            assert server.shutting_down
            answer = await receive_and_close(stream)
        assert trio.current_time() == 10
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close\r\n" in answer.lower()
        assert answer.endswith(b"slow")


async def test_new_connections_are_refused_once_shutdown_began(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(slow) as (server, listener):
        busy = await listener.connect()
        await busy.send_all(GET)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ConnectionRefusedError):
                await listener.connect()
            assert (await receive_and_close(busy)).endswith(b"slow")


async def test_shutdown_timeout_cuts_off_a_handler_exactly_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(shutdown_timeout=7.5)
    async with running(forever, config) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        await trio.sleep(2)
        await server.shutdown()
        assert trio.current_time() == 2 + 7.5
        assert await receive_all(stream) == b""  # aborted: no response at all
        stats = server.statistics()
        assert stats.shutdown_cutoffs == 1
        assert stats.connections_open == 0


async def test_streaming_response_in_flight_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(streaming) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        await trio.sleep(2.5)
        answer = await answer_during_shutdown(server, stream)
        assert trio.current_time() == 10
        assert answer.count(b"chunk ") == 10
        assert answer.endswith(b"0\r\n\r\n")  # the chunked body's proper end


async def test_streaming_response_cut_at_the_timeout_is_never_completed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(shutdown_timeout=3)
    async with running(streaming, config) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        await trio.sleep(2.5)
        answer = await answer_during_shutdown(server, stream)
        assert trio.current_time() == 5.5
        assert b"chunk 4" in answer
        assert not answer.endswith(b"0\r\n\r\n")  # a cut body never looks complete


async def test_pipelined_requests_behind_the_current_one_are_not_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(slow) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET + GET + GET)
        await trio.sleep(1)
        answer = await answer_during_shutdown(server, stream)
        assert answer.count(b"HTTP/1.1 200") == 1
        assert server.statistics().requests_served == 1


async def test_shutdown_twice_and_concurrently(autojump_clock: trio.testing.MockClock) -> None:
    async with running(slow) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        await trio.sleep(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown)
            nursery.start_soon(server.shutdown)
            assert (await receive_and_close(stream)).endswith(b"slow")
        assert trio.current_time() == 10
        await server.shutdown()  # once more, after the fact: returns at once
        assert trio.current_time() == 10


async def test_shutdown_before_any_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with running(hello) as (server, listener):
        await server.shutdown()
        assert trio.current_time() == 0
        with pytest.raises(ConnectionRefusedError):
            await listener.connect()


async def test_handlers_learn_that_shutdown_began(autojump_clock: trio.testing.MockClock) -> None:
    async def long_poll(request: trioserve.Request) -> trioserve.Response:
        assert not request.server_shutting_down
        with trio.move_on_after(60):
            await request.wait_server_shutdown()
            assert request.server_shutting_down
            return trioserve.Response(503, body=b"shutting down")
        return trioserve.Response(200, body=b"no news")

    async with running(long_poll) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        await trio.sleep(3)
        answer = await answer_during_shutdown(server, stream)
        assert trio.current_time() == 3
        assert answer.startswith(b"HTTP/1.1 503 ")


async def test_shutdown_closes_a_connection_in_the_middle_of_keep_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(hello) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        first = await stream.receive_some()
        assert first.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close" not in first.lower()
        await server.shutdown()
        assert await receive_all(stream) == b""


async def test_shutdown_closes_an_idle_connection_that_sent_a_stray_crlf_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(hello) as (server, listener):
        stream = await listener.connect()
        await stream.send_all(GET)
        assert (await stream.receive_some()).startswith(b"HTTP/1.1 200 OK")
        await stream.send_all(b"\r\n")
        await trio.sleep(1)
        await server.shutdown()
        assert trio.current_time() == 1  # once waited for the 408 at header_timeout
        assert await receive_all(stream) == b""


async def test_shutdown_trigger_event_and_lifespan_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async def handler(request: trioserve.Request) -> trioserve.Response:
        events.append("request")
        return trioserve.Response(200)

    trigger = trio.Event()
    serve = functools.partial(
        trioserve.serve,
        handler,
        0,
        host="127.0.0.1",
        lifespan=lifespan,
        shutdown_trigger=trigger,
    )
    async with trio.open_nursery() as nursery:
        server: trioserve.Server = await nursery.start(serve)
        assert events == ["startup"]
        assert server.ports
        assert all(isinstance(port, int) for port in server.ports)
        trigger.set()
    assert events == ["startup", "shutdown"]
    assert server.statistics().connections_open == 0


async def test_lifespan_failure_is_a_startup_error() -> None:
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        raise RuntimeError("database unreachable")
        yield

    with pytest.raises(trioserve.StartupError, match="database unreachable"):
        await trioserve.serve(hello, 0, host="127.0.0.1", lifespan=lifespan)


async def test_cancel_is_the_hard_stop(autojump_clock: trio.testing.MockClock) -> None:
    config = trioserve.Config(shutdown_timeout=math.inf)
    with trio.move_on_after(5):
        async with running(forever, config) as (_, listener):
            stream = await listener.connect()
            await stream.send_all(GET)
            await trio.sleep_forever()
    assert trio.current_time() == 5
    assert await receive_all(stream) == b""
