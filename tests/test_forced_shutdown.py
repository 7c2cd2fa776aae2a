"""A forced shutdown is forced everywhere (issue 9, item 8): connections, an ASGI
application's tasks, the lifespan's exit, and the signals that come after it.

A shutdown is forced by a second SIGINT or SIGTERM (``serve(handle_signals=True)``,
``trioserve.run``) or by ``Server.shutdown(force=True)``. In-process tests run in
virtual time: ``serve`` listens on a MemoryListener (``trio.open_tcp_listeners`` is
replaced) and signals are raised in this process. The exit status of
``trioserve.run`` is checked on real child processes.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import trioserve
from trioserve.asgi import DRAIN_TIMEOUT, ASGIHandler, Receive, Scope, Send
from trioserve.testing import MemoryListener, PipeStream, receive_all

from .processes import BOUND, ChildProcess, running

GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
#: Virtual seconds: a forced shutdown that takes longer waited for something.
PROMPT = 1.0


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> MemoryListener:
    """Where ``serve`` listens instead of TCP, so that it runs in virtual time."""
    memory = MemoryListener()

    async def open_tcp_listeners(
        port: int, *, host: str | None = None, backlog: int | None = None
    ) -> list[MemoryListener]:
        return [memory]

    monkeypatch.setattr(trio, "open_tcp_listeners", open_tcp_listeners)
    return memory


def interrupt() -> None:
    """Ctrl+C to this process, which ``serve(handle_signals=True)`` must be handling.

    Unhandled, SIGINT is trio's KeyboardInterrupt, raised right here: it fails the test
    instead of ending the session.
    """
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pytest.fail("SIGINT raised KeyboardInterrupt: serve() was not handling signals")


class App:
    """An ASGI application with a lifespan. ``/`` answers, then works on for an hour
    (a Starlette BackgroundTask); ``/slow`` answers after an hour. With
    ``hang_shutdown`` it never answers ``lifespan.shutdown``."""

    def __init__(self, *, hang_shutdown: bool = False) -> None:
        self.hang_shutdown = hang_shutdown
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            self.events.append("lifespan shutdown")
            if self.hang_shutdown:
                await trio.sleep_forever()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/slow":
            await trio.sleep(3600)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            self.events.append("background work cancelled")
            raise
        self.events.append("background work done")


@asynccontextmanager
async def serving_asgi(app: App, **kwargs: object) -> AsyncIterator[trioserve.Server]:
    """``serve`` the application with its host as ``lifespan``; the block's exit waits
    for ``serve`` to return."""
    handler = ASGIHandler(app, lifespan="on")
    serve = functools.partial(trioserve.serve, handler, 0, lifespan=handler.lifespan, **kwargs)
    async with trio.open_nursery() as nursery:
        yield await nursery.start(serve)


async def slow(request: trioserve.Request) -> trioserve.Response:
    await trio.sleep(3600)
    return trioserve.Response(200, body=b"slow")


async def request(listener: MemoryListener, target: bytes) -> PipeStream:
    """Send ``GET target`` on a new connection and let the server take it."""
    stream = await listener.connect()
    await stream.send_all(GET % target)
    await trio.testing.wait_all_tasks_blocked()
    return stream


async def answer(listener: MemoryListener, target: bytes) -> bytes:
    """The whole answer to ``GET target`` with ``Connection: close``."""
    stream = await listener.connect()
    await stream.send_all(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
    data = await receive_all(stream)
    await stream.aclose()
    return data


# --- Forced while requests are in flight: nothing waits ------------------------------


async def test_second_signal_skips_the_asgi_drain_and_lifespan_shutdown(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener
) -> None:
    app = App(hang_shutdown=True)
    async with serving_asgi(app, handle_signals=True) as server:
        assert (await answer(listener, b"/")).endswith(b"ok")  # background work runs on
        in_flight = await request(listener, b"/slow")  # the graceful shutdown waits for it
        interrupt()
        await trio.sleep(1)
        assert not server.forced
        forced_at = trio.current_time()
        interrupt()
    # Before: 30 s for the background work (DRAIN_TIMEOUT), then 30 s for the lifespan.
    assert trio.current_time() - forced_at < PROMPT
    assert server.forced
    assert app.events == ["background work cancelled"]  # lifespan shutdown skipped
    assert await receive_all(in_flight) == b""  # cut off without an answer


async def test_shutdown_force_true_is_the_forced_shutdown_without_signals(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener
) -> None:
    app = App(hang_shutdown=True)
    async with serving_asgi(app) as server, trio.open_nursery() as graceful:
        assert (await answer(listener, b"/")).endswith(b"ok")
        in_flight = await request(listener, b"/slow")
        graceful.start_soon(server.shutdown)  # a second call to shutdown() never forces
        await trio.sleep(1)
        assert not server.forced
        forced_at = trio.current_time()
        await server.shutdown(force=True)
        assert trio.current_time() - forced_at < PROMPT
    assert trio.current_time() - forced_at < PROMPT  # serve() and the graceful call too
    assert server.forced
    assert app.events == ["background work cancelled"]
    assert await receive_all(in_flight) == b""


async def test_shutdown_force_true_on_a_server_serving_listeners(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = MemoryListener()
    server = trioserve.Server(slow)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        in_flight = await request(listener, b"/")
        forced_at = trio.current_time()
        await server.shutdown(force=True)
    assert trio.current_time() - forced_at < PROMPT
    assert server.forced
    assert await receive_all(in_flight) == b""
    assert server.statistics().shutdown_cutoffs == 1
    assert "forced shutdown: 1 connection cut off" in caplog.text


async def test_second_signal_cancels_a_lifespan_exit_that_hangs(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener
) -> None:
    closing: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            yield
        finally:
            closing.append("began")
            await trio.sleep(3600)  # a pool that takes an hour to close
            closing.append("closed")

    serve = functools.partial(trioserve.serve, slow, 0, lifespan=lifespan, handle_signals=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        await request(listener, b"/")
        interrupt()
        await trio.sleep(1)
        forced_at = trio.current_time()
        interrupt()
    assert trio.current_time() - forced_at < PROMPT
    assert closing == ["began"]  # cancelled, as when the scope around serve() is


# --- Forced once the connections have drained: the host's and the lifespan's waits --


async def test_second_signal_during_the_asgi_drain_cancels_it(
    autojump_clock: trio.testing.MockClock, listener: MemoryListener
) -> None:
    app = App()
    async with serving_asgi(app, handle_signals=True) as server:
        assert (await answer(listener, b"/")).endswith(b"ok")
        interrupt()
        # Graceful, as before: the connections are done, the background work goes on.
        await trio.sleep(DRAIN_TIMEOUT / 2)
        assert app.events == []
        forced_at = trio.current_time()
        interrupt()  # before: no handler any more, KeyboardInterrupt
    assert trio.current_time() - forced_at < PROMPT
    assert server.forced
    assert app.events == ["background work cancelled"]


async def test_second_signal_cuts_a_hanging_lifespan_shutdown_short(
    autojump_clock: trio.testing.MockClock,
    listener: MemoryListener,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App(hang_shutdown=True)
    async with serving_asgi(app, handle_signals=True) as server:
        interrupt()
        await trio.sleep(1)
        assert app.events == ["lifespan shutdown"]  # sent, never answered
        forced_at = trio.current_time()
        interrupt()
    assert trio.current_time() - forced_at < PROMPT
    assert server.forced
    assert "lifespan shutdown cut short" in caplog.text


# --- Signals after forcing ---------------------------------------------------------


async def test_signals_after_forcing_are_logged_not_raised(
    autojump_clock: trio.testing.MockClock,
    listener: MemoryListener,
    caplog: pytest.LogCaptureFixture,
) -> None:
    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(10)  # cleanup that even a forced shutdown waits for

    serve = functools.partial(trioserve.serve, slow, 0, lifespan=lifespan, handle_signals=True)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve)
        await request(listener, b"/")
        interrupt()
        await trio.sleep(1)
        forced_at = trio.current_time()
        interrupt()
        await trio.sleep(1)
        interrupt()  # before: KeyboardInterrupt, the handler was gone
        await trio.sleep(1)
        interrupt()
    assert trio.current_time() - forced_at == pytest.approx(10)
    assert server.forced
    under_way = [r for r in caplog.records if "forced shutdown is under way" in r.getMessage()]
    assert [r.levelno for r in under_way] == [logging.WARNING] * 2


# --- trioserve.run: exit status 1, in a real process -----------------------------------

PROGRAM = '''
    """trioserve.run serving an ASGI application that is slow in every way a forced
    shutdown must cut short; it says on stderr where it is."""
    import logging
    import os
    import sys

    import trio

    import trioserve
    from trioserve.asgi import ASGIHandler


    def say(line):
        print(line, file=sys.stderr, flush=True)


    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            try:
                await receive()
                say("lifespan shutdown: never answered")
                await trio.sleep_forever()
            finally:
                if "--stubborn" in sys.argv:
                    # Cleanup that a forced shutdown waits for: until a line on stdin.
                    with trio.CancelScope(shield=True):
                        say("cleanup: waiting for stdin")
                        async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
                            await stdin.receive_some()
            return
        if scope["path"] == "/slow":
            say("slow request: in flight")
            await trio.sleep_forever()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        say("background work: running")
        await trio.sleep_forever()


    logging.basicConfig(level=logging.INFO, format="%(message)s")
    handler = ASGIHandler(app, lifespan="on")
    raise SystemExit(trioserve.run(handler, 0, lifespan=handler.lifespan))
'''


@asynccontextmanager
async def program(tmp_path: Path, *args: str) -> AsyncIterator[ChildProcess]:
    """Start the program above; yield once it serves."""
    path = tmp_path / "forced_app.py"
    path.write_text(textwrap.dedent(PROGRAM))
    async with running([sys.executable, str(path), *args], stdin=True) as child:
        yield child


async def child_request(child: ChildProcess, target: bytes) -> trio.SocketStream:
    stream = await child.connect()
    await stream.send_all(GET % target)
    return stream


async def test_run_returns_1_at_once_after_a_forced_shutdown_of_an_asgi_app(
    tmp_path: Path,
) -> None:
    async with program(tmp_path) as child:
        done = await child_request(child, b"/")
        await child.wait_for(rb"background work: running")
        await done.aclose()
        in_flight = await child_request(child, b"/slow")
        await child.wait_for(rb"slow request: in flight")
        child.process.send_signal(signal.SIGINT)
        await child.wait_for(rb"SIGINT received: shutting down gracefully")
        child.process.send_signal(signal.SIGINT)
        with trio.fail_after(5):  # before: 30 s of drain, then 30 s of lifespan
            assert await child.process.wait() == 1
        await in_flight.aclose()
    assert b"SIGINT received again: forcing shutdown" in child.stderr
    assert b"lifespan shutdown: never answered" not in child.stderr  # skipped
    assert b"Traceback" not in child.stderr


async def test_run_returns_1_when_a_third_signal_comes_during_a_forced_shutdown(
    tmp_path: Path,
) -> None:
    async with program(tmp_path, "--stubborn") as child:
        done = await child_request(child, b"/")
        await child.wait_for(rb"background work: running")
        await done.aclose()
        child.process.send_signal(signal.SIGINT)
        await child.wait_for(rb"waiting up to 30 s for 1 ASGI application tasks")
        child.process.send_signal(
            signal.SIGINT
        )  # before: no handler during the drain, "interrupted before serving"
        await child.wait_for(rb"cleanup: waiting for stdin")
        child.process.send_signal(signal.SIGINT)
        await child.wait_for(rb"SIGINT received: the forced shutdown is under way")
        assert child.process.stdin is not None
        await child.process.stdin.send_all(b"done\n")
        with trio.fail_after(BOUND):
            assert await child.process.wait() == 1
    assert b"interrupted before serving" not in child.stderr
    assert b"Traceback" not in child.stderr
