"""Real child processes for the tests that need them (signals, the command line).

A test waits for what the child prints, never for a while: each program prints a
line when it is ready for the next step (``Serving on ...``; a handler's line when a
request is inside it; the server's own shutdown lines), and ``wait_for`` waits for
it, bounded by ``BOUND`` so that a broken program fails the test instead of hanging
the suite. Each process is killed on the way out, whatever happened.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import trio

__all__ = ["BOUND", "GET", "SERVING", "ChildProcess", "running"]

#: Every wait on a process is bounded by this (real seconds); passing tests finish far
#: sooner.
BOUND = 20
#: A request for ``GET % target`` that asks the server to close after its answer.
GET = b"GET %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
#: What ``trioserve.run`` (and the command line) print once listening, with the port.
SERVING = rb"Serving on http://127\.0\.0\.1:(\d+) \(press CTRL\+C"


class ChildProcess:
    """A running process and everything it wrote to stderr so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = b""
        self.port = 0
        self._more = trio.Event()
        self._eof = trio.Event()

    async def collect(self) -> None:
        """Read stderr to its end (run it in a nursery for as long as the process)."""
        assert self.process.stderr is not None
        try:
            while data := await self.process.stderr.receive_some():
                self.stderr += data
                self._more.set()
                self._more = trio.Event()
        finally:
            self._eof.set()
            self._more.set()

    async def wait_for(self, pattern: bytes) -> re.Match[bytes]:
        """Wait until stderr matches ``pattern`` (a regular expression)."""
        with trio.fail_after(BOUND):
            while (match := re.search(pattern, self.stderr)) is None:
                assert not self._eof.is_set(), f"exited early: {self.stderr.decode()}"
                await self._more.wait()
        return match

    async def wait(self) -> int:
        """The exit status, once stderr is read to its end."""
        with trio.fail_after(BOUND):
            status = await self.process.wait()
            await self._eof.wait()
        return status

    async def connect(self) -> trio.SocketStream:
        with trio.fail_after(BOUND):
            return await trio.open_tcp_stream("127.0.0.1", self.port)

    async def get(self, target: bytes) -> bytes:
        """A whole response to ``GET target`` on a new connection."""
        with trio.fail_after(BOUND):
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            async with stream:
                await stream.send_all(GET % target)
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
        return answer


@asynccontextmanager
async def running(
    command: Sequence[str],
    *,
    cwd: Path | None = None,
    ready: bytes | None = SERVING,
    stdin: bool = False,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[ChildProcess]:
    """Start ``command`` with its stderr collected; yield once stderr matches
    ``ready`` (its first group, if any, is the port), or at once for ``None``.
    ``stdin``: give it a pipe for stdin (``child.process.stdin``); ``env``: its
    environment (else this process's)."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            list(command),
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else None,
            cwd=cwd,
            env=env,
        )
        child = ChildProcess(process)
        nursery.start_soon(child.collect)
        try:
            if ready is not None:
                match = await child.wait_for(ready)
                if match.groups():
                    child.port = int(match.group(1))
            yield child
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(BOUND):
                await process.wait()
            if process.stdin is not None:
                await process.stdin.aclose()
            nursery.cancel_scope.cancel()
