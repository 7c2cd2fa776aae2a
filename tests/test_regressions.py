"""Regressions: deadlines that outlived their phase, CONNECT, Host lists, and the
first signal after a programmatic shutdown."""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trioserve
from trioserve.testing import open_connection, parse_responses, receive_all

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_streamed_body_may_wait_longer_than_write_timeout_for_its_first_chunk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The write deadline governs writes only; waiting for the handler's next chunk
    # (server-sent events, long polls) is the application's business.
    async def events(request: trioserve.Request) -> trioserve.Response:
        async def body() -> AsyncIterator[bytes]:
            yield b""  # an empty chunk first, as ASGI's more_body=True with b"" does
            await trio.sleep(40)
            yield b"event\n"
            await trio.sleep(40)
            yield b"event\n"

        return trioserve.Response(200, body=body())

    config = trioserve.Config(write_timeout=30)
    server = trioserve.Server(events, config)
    async with open_connection(server) as stream:
        await stream.send_all(GET)
        with trio.fail_after(100):
            answer = await stream.receive_some()
            while not answer.endswith(b"0\r\n\r\n"):
                answer += await stream.receive_some()
    assert trio.current_time() == 80
    [response] = parse_responses(answer)
    assert response.body == b"event\nevent\n"
    assert server.statistics().write_timeouts == 0


async def test_draining_an_unread_body_is_not_cut_at_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def refuse(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(401, body=b"no")  # never reads the body

    config = trioserve.Config(write_timeout=30, body_timeout=25, body_min_rate=0)
    server = trioserve.Server(refuse, config)
    async with open_connection(server) as stream:
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n")
        for _ in range(3):  # the rest of the body comes slowly, within body_timeout
            await trio.sleep(20)
            await stream.send_all(b"0123456789")
        await stream.send_all(GET)
        await trio.sleep(1)
        answer = await stream.receive_some()
        while answer.count(b"HTTP/1.1 ") < 2:
            answer += await stream.receive_some()
    statuses = [response.status for response in parse_responses(answer)]
    assert statuses == [401, 401]  # drained, so the next request was served
    stats = server.statistics()
    assert stats.write_timeouts == 0
    assert stats.connections_aborted == 0


async def test_a_write_deadline_passing_as_the_last_bytes_go_out_never_reaches_the_next_handler(
    mock_clock: trio.testing.MockClock,
) -> None:
    # send_all does not look for cancellation after its last send: a deadline that
    # passes in that instant stays pending. It must be delivered in the write phase,
    # not in the handler of the next (pipelined) request.
    started: list[str] = []

    async def handler(request: trioserve.Request) -> trioserve.Response:
        if request.path == "/big":
            return trioserve.Response(200, body=b"x" * 1500)
        started.append(request.path)
        await trio.lowlevel.checkpoint()
        return trioserve.Response(200, body=b"second")

    config = trioserve.Config(write_timeout=10)
    server = trioserve.Server(handler, config)
    async with open_connection(server, buffer_size=1000) as stream:
        await stream.send_all(
            b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await trio.testing.wait_all_tasks_blocked()  # the server waits for room
        answer = await stream.receive_some()  # room: the server is rescheduled...
        mock_clock.jump(10)  # ...and the event loop lags past the deadline
        answer += await receive_all(stream)
    assert started == []  # the next handler never ran
    assert answer.endswith(b"x" * 10)  # the first response had gone out whole
    assert server.statistics().write_timeouts == 1


@pytest.mark.parametrize("target", [b"example.com:443", b"/"])
async def test_connect_gets_501(target: bytes) -> None:
    async def hello(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200, body=b"hello")

    async with open_connection(hello) as stream:
        await stream.send_all(b"CONNECT %s HTTP/1.1\r\nHost: example.com:443\r\n\r\n" % target)
        [response] = parse_responses(await receive_all(stream))
    assert response.status == 501
    assert response.headers["connection"] == "close"


async def test_a_list_of_hosts_in_one_field_gets_400() -> None:
    async def hello(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200, body=b"hello")

    async with open_connection(hello) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n")
        [response] = parse_responses(await receive_all(stream))
    assert response.status == 400


class _LogLine(logging.Handler):
    """Sets ``seen`` when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_the_first_signal_is_graceful_even_after_a_programmatic_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    graceful = _LogLine("SIGTERM received: shutting down gracefully")
    logging.getLogger("trioserve.error").addHandler(graceful)
    release = trio.Event()
    in_handler = trio.Event()

    async def slow(request: trioserve.Request) -> trioserve.Response:
        in_handler.set()
        await release.wait()
        return trioserve.Response(200, body=b"done")

    trigger = trio.Event()
    serve = functools.partial(
        trioserve.serve,
        slow,
        0,
        host="127.0.0.1",
        shutdown_trigger=trigger,
        handle_signals=True,
    )
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                server: trioserve.Server = await nursery.start(serve)
                stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
                await stream.send_all(GET)
                await in_handler.wait()
                trigger.set()  # shutdown begins without a signal
                await trio.testing.wait_all_tasks_blocked()
                assert server.shutting_down
                os.kill(os.getpid(), signal.SIGTERM)  # the first signal: still graceful
                await graceful.seen.wait()  # the server has taken the signal
                release.set()
                answer = await receive_all(stream)
                await stream.aclose()
    finally:
        logging.getLogger("trioserve.error").removeHandler(graceful)
    assert not server.forced
    assert answer.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_closing_a_streamed_body_is_not_under_the_write_deadline(
    autojump_clock: trio.testing.MockClock, method: str
) -> None:
    class Body:
        """One chunk, then a slow aclose (a pooled resource, a worker thread)."""

        def __init__(self) -> None:
            self.sent = False
            self.closed = False

        def __aiter__(self) -> Body:
            return self

        async def __anext__(self) -> bytes:
            if self.sent:
                raise StopAsyncIteration
            self.sent = True
            return b"hello"

        async def aclose(self) -> None:
            await trio.sleep(40)
            self.closed = True

    bodies: list[Body] = []

    async def handler(request: trioserve.Request) -> trioserve.Response:
        bodies.append(Body())
        return trioserve.Response(200, body=bodies[-1])

    config = trioserve.Config(write_timeout=30)
    server = trioserve.Server(handler, config)
    async with open_connection(server) as stream:
        await stream.send_all(
            f"{method} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        [response] = parse_responses(await receive_all(stream), method=method)
    assert response.status == 200
    assert bodies[0].closed
    stats = server.statistics()
    assert stats.requests_served == 1
    assert stats.connections_aborted == 0
    assert stats.write_timeouts == 0
