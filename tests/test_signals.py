"""Signals over real processes on 127.0.0.1: SIGTERM drains, a second signal forces."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

PROGRAM = Path(__file__).parent / "programs" / "lifecycle_app.py"
GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
# Every wait below is bounded by this, so a broken shutdown fails the test instead of
# hanging it; passing tests finish far sooner.
BOUND = 20


class Program:
    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port

    async def connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream("127.0.0.1", self.port)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self) -> int:
        with trio.fail_after(BOUND):
            return await self.process.wait()


@asynccontextmanager
async def program(*config: str) -> AsyncIterator[Program]:
    process = await trio.lowlevel.open_process(
        [sys.executable, str(PROGRAM), "0", *config], stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        output = b""
        with trio.fail_after(BOUND):
            while (match := re.search(rb"Serving on http://127\.0\.0\.1:(\d+)", output)) is None:
                data = await process.stderr.receive_some()
                assert data, f"the program exited before serving: {output!r}"
                output += data
        yield Program(process, int(match.group(1)))
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        if process.stderr is not None:
            await process.stderr.aclose()


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
        await trio.sleep(0.3)  # the request is in the handler now
        server.signal(signal.SIGTERM)
        answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert b"connection: close" in answer.lower()
        assert answer.endswith(b"slow done")
        assert await server.wait() == 0
        await stream.aclose()


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
        server.signal(signal.SIGTERM)
        with trio.fail_after(5):
            assert await server.process.wait() == 0
        for stream in streams:
            assert await read_until_closed(stream) == b""
            await stream.aclose()


async def test_second_sigint_forces_the_exit() -> None:
    async with program("shutdown_timeout=60") as server:
        stream = await server.connect()
        await stream.send_all(GET % b"/forever")
        await trio.sleep(0.3)
        server.signal(signal.SIGINT)
        await trio.sleep(0.3)
        assert server.process.returncode is None  # draining: waits for /forever
        server.signal(signal.SIGINT)
        with trio.fail_after(5):
            assert await server.process.wait() == 1  # forced
        assert await read_until_closed(stream) == b""
        await stream.aclose()


async def test_sigterm_with_a_client_that_never_reads_exits_within_shutdown_timeout() -> None:
    # write_timeout=60 is longer than the bound: only the shutdown timeout can end it.
    async with program("shutdown_timeout=1", "write_timeout=60") as server:
        stream = await server.connect()
        await stream.send_all(GET % b"/big")
        await trio.sleep(0.5)  # the kernel buffers fill; the server's send blocks
        server.signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.process.wait() == 0
        await stream.aclose()
