"""Signals over real processes on 127.0.0.1: SIGTERM drains, a second signal forces.

The program (``programs/lifecycle_app.py``, under ``trioserve.run``) prints
``handling PATH`` when a request reaches its handler, and the server logs each step
of its shutdown to stderr: the tests wait for those lines (``tests/processes.py``),
never for a while.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from .processes import BOUND, ChildProcess, running

PROGRAM = Path(__file__).parent / "programs" / "lifecycle_app.py"
GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"


@asynccontextmanager
async def program(*config: str) -> AsyncIterator[ChildProcess]:
    """Run the program on a free port with ``NAME=VALUE`` config fields; yield once
    it serves."""
    async with running([sys.executable, str(PROGRAM), "0", *config]) as child:
        yield child


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(BOUND):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def test_sigterm_lets_a_slow_request_finish_then_exits_0() -> None:
    async with program() as server:
        stream = await server.connect()
        await stream.send_all(GET % b"/slow")
        await server.wait_for(rb"handling /slow")  # the request is in the handler now
        server.process.send_signal(signal.SIGTERM)
        answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close" in answer.lower()
        assert answer.endswith(b"slow done")
        assert await server.wait() == 0
        await stream.aclose()
    assert b"shutting down: 1 connection in flight, 0 idle" in server.stderr


async def test_sigterm_with_100_idle_keep_alive_connections_exits_at_once() -> None:
    # keep_alive_timeout=60: if idle connections were not woken by the shutdown, the
    # process would still be running when the bounded wait gives up.
    async with program("keep_alive_timeout=60", "shutdown_timeout=60") as server:
        streams = []
        for _ in range(100):
            stream = await server.connect()
            await stream.send_all(GET % b"/")
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 200 OK")
            streams.append(stream)
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            assert await server.process.wait() == 0
        for stream in streams:
            assert await read_until_closed(stream) == b""
            await stream.aclose()


async def test_second_sigint_forces_the_exit() -> None:
    async with program("shutdown_timeout=60") as server:
        stream = await server.connect()
        await stream.send_all(GET % b"/forever")
        await server.wait_for(rb"handling /forever")
        server.process.send_signal(signal.SIGINT)
        await server.wait_for(rb"SIGINT received: shutting down gracefully")
        await server.wait_for(rb"shutting down: 1 connection in flight, 0 idle")
        assert server.process.returncode is None  # draining: waits for /forever
        server.process.send_signal(signal.SIGINT)
        with trio.fail_after(5):
            assert await server.wait() == 1  # forced
        assert await read_until_closed(stream) == b""
        await stream.aclose()
    assert b"SIGINT received again: forcing shutdown" in server.stderr
    assert b"forced shutdown: 1 connection cut off" in server.stderr


async def test_sigterm_with_a_client_that_never_reads_exits_within_shutdown_timeout() -> None:
    # write_timeout=60 is longer than the bound: only the shutdown timeout can end it.
    async with program("shutdown_timeout=1", "write_timeout=60") as server:
        stream = await server.connect()
        await stream.send_all(GET % b"/big")
        # In flight; it never reads, so the server's writes block once the kernel
        # buffers are full (64 MiB is far more than they hold).
        await server.wait_for(rb"handling /big")
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.wait() == 0
        await stream.aclose()
    assert b"shutdown complete: 1 connection cut off at the 1 s timeout" in server.stderr
