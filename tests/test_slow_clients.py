"""Slow and abusive clients over real loopback sockets (127.0.0.1, port 0).

The same defences as tests/test_deadlines.py and tests/test_limits.py, but through the
kernel: socket buffers, the accept loop and the listen backlog. Deadlines are small
(0.5-1 s) so the file runs in a few seconds; every wait is bounded by
``trio.fail_after`` so a regression fails instead of hanging. Timings are asserted only
as "not before the deadline", never as "fast enough".
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

import trioserve
from trioserve.testing import parse_responses, receive_all

from .conftest import echo, hello

#: Upper bound on any single wait in this file (real seconds).
PATIENCE = 10.0
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@asynccontextmanager
async def _serving(
    handler: Callable[[trioserve.Request], Awaitable[trioserve.Response]],
    config: trioserve.Config,
) -> AsyncIterator[trioserve.Server]:
    async with trio.open_nursery() as nursery:
        server: trioserve.Server = await nursery.start(
            functools.partial(trioserve.serve, handler, 0, host="127.0.0.1", config=config)
        )
        try:
            yield server
        finally:
            with trio.fail_after(PATIENCE):
                await server.shutdown()


async def _connect(server: trioserve.Server) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", server.ports[0])


async def _wait_until(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until the server's state satisfies ``condition``.

    Only for server-side state that no client can observe (counters); short sleeps
    keep it cheap.
    """
    with trio.fail_after(PATIENCE):
        # Counters have no change event to wait on (they cost nothing on the hot path).
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def _answer(stream: trio.SocketStream) -> bytes:
    with trio.fail_after(PATIENCE):
        answer = await receive_all(stream)
    await stream.aclose()
    return answer


async def test_200_slowloris_connections_do_not_stop_an_ordinary_client() -> None:
    config = trioserve.Config(header_timeout=1.0)
    count = 200
    answers: list[bytes] = []

    async def slowloris(server: trioserve.Server, ready: Callable[[], Awaitable[None]]) -> None:
        stream = await _connect(server)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        await ready()
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                try:
                    while True:  # one header byte every 0.2 s, never finishing
                        await trio.sleep(0.2)
                        await stream.send_all(b"a")
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(drip)
            with trio.fail_after(PATIENCE):
                answers.append(await receive_all(stream))
            nursery.cancel_scope.cancel()
        await stream.aclose()

    async with _serving(hello, config) as server:
        started = trio.current_time()
        connected = trio.Semaphore(0)

        async def ready() -> None:
            connected.release()

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(slowloris, server, ready)
            for _ in range(count):
                await connected.acquire()
            await _wait_until(lambda: server.statistics().connections_open == count)
            # All 200 hold a connection; an ordinary client is still served.
            ordinary = await _connect(server)
            await ordinary.send_all(GET_CLOSE)
            [response] = parse_responses(await _answer(ordinary))
            assert response.status == 200
            assert server.statistics().header_timeouts == 0
        # Each slowloris was cut off with 408 at its header deadline.
        assert trio.current_time() - started >= config.header_timeout
        assert len(answers) == count
        for answer in answers:
            [refusal] = parse_responses(answer)
            assert refusal.status == 408
            assert refusal.headers["connection"] == "close"
        await _wait_until(lambda: server.statistics().connections_open == 0)
        stats = server.statistics()
        assert stats.header_timeouts == count
        assert stats.requests_served == 1


async def test_stalled_body_gets_408() -> None:
    config = trioserve.Config(body_timeout=0.5, body_min_rate=0)
    async with _serving(echo, config) as server:
        stream = await _connect(server)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        sent = trio.current_time()
        [response] = parse_responses(await _answer(stream))
        assert response.status == 408
        assert trio.current_time() - sent >= config.body_timeout
        await _wait_until(lambda: server.statistics().connections_open == 0)
        assert server.statistics().body_timeouts == 1


async def test_dripped_body_fails_the_minimum_rate() -> None:
    config = trioserve.Config(body_rate_grace=0.5, body_min_rate=1024)
    async with _serving(echo, config) as server:
        stream = await _connect(server)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        sent = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                try:
                    for _ in range(1000):  # 20 bytes/s: under 1 KiB/s
                        await stream.send_all(b"x")
                        await trio.sleep(0.05)
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(drip)
            with trio.fail_after(PATIENCE):
                answer = await receive_all(stream)
            nursery.cancel_scope.cancel()
        await stream.aclose()
        [response] = parse_responses(answer)
        assert response.status == 408
        assert trio.current_time() - sent >= config.body_rate_grace
        await _wait_until(lambda: server.statistics().connections_open == 0)
        assert server.statistics().body_timeouts == 1


async def test_client_that_never_reads_is_aborted_and_the_handler_cancelled() -> None:
    config = trioserve.Config(write_timeout=0.5)
    body_closed = trio.Event()

    async def endless(request: trioserve.Request) -> trioserve.Response:
        if request.path != "/endless":
            return trioserve.Response(200, body=b"ok")

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
                    await trio.lowlevel.checkpoint()
            finally:
                body_closed.set()

        return trioserve.Response(200, body=body())

    async with _serving(endless, config) as server:
        stream = await _connect(server)
        await stream.send_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        # Never read: the kernel buffers fill, then the write makes no progress.
        with trio.fail_after(PATIENCE):
            await body_closed.wait()
        await _wait_until(lambda: server.statistics().connections_open == 0)
        stats = server.statistics()
        assert stats.write_timeouts == 1
        assert stats.connections_aborted == 1
        await stream.aclose()
        # Everyone else is still served.
        other = await _connect(server)
        await other.send_all(GET_CLOSE)
        assert b"HTTP/1.1 200 " in await _answer(other)


async def test_oversized_head_and_body_are_refused() -> None:
    config = trioserve.Config(max_body_size=1024 * 1024)
    async with _serving(echo, config) as server:
        # A 20 KiB head, over the 16 KiB default, sent in one piece.
        stream = await _connect(server)
        await stream.send_all(GET[:-2] + b"X-Big: " + b"a" * 20 * 1024 + b"\r\n\r\n")
        [response] = parse_responses(await _answer(stream))
        assert response.status == 431
        # A declared 2 MiB body: refused from the head, before any of it is sent.
        stream = await _connect(server)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n")
        [response] = parse_responses(await _answer(stream))
        assert response.status == 413
        assert response.headers["connection"] == "close"
        # And an ordinary request still works.
        stream = await _connect(server)
        await stream.send_all(GET_CLOSE)
        assert parse_responses(await _answer(stream))[0].status == 200
        stats = server.statistics()
        assert stats.headers_too_large == 1
        assert stats.bodies_too_large == 1


async def test_max_connections_evicts_the_longest_idle_only_when_someone_waits() -> None:
    config = trioserve.Config(max_connections=3)
    async with _serving(hello, config) as server:
        idle = []
        for _ in range(3):
            idle.append(await _connect(server))
            await _wait_until(lambda: server.statistics().connections_idle == len(idle))
        # A fourth client: the oldest idle connection is closed to make room for it.
        fourth = await _connect(server)
        await fourth.send_all(GET_CLOSE)
        assert parse_responses(await _answer(fourth))[0].status == 200
        with trio.fail_after(PATIENCE):
            assert await idle[0].receive_some() == b""
        # The fourth has gone: nobody waits, so nobody else is evicted.
        await _wait_until(lambda: server.statistics().connections_open == 2)
        assert server.statistics().connections_evicted == 1
        for stream in idle[1:]:
            await stream.send_all(GET_CLOSE)
            assert parse_responses(await _answer(stream))[0].status == 200
        await idle[0].aclose()
