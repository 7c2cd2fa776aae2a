"""A worker process's side of the supervisor: its plan, readiness, heartbeats.

Rules for this module:
1. A worker is an ordinary trioserve server (``run()``) on the sockets its supervisor
   passed; the engine does not know it is a worker. This module only talks to the
   supervisor, over one socket: ``R`` once serving, ``H`` every quarter of the
   health-check timeout (from a trio task: a stuck event loop stops them), ``M`` once
   it has served its ``--limit-max-requests`` (the supervisor then replaces it). The
   supervisor says one thing back: ``T``, stop for a restart (the worker is being
   replaced): a graceful shutdown whose WebSockets get 1012, not 1001.
2. The supervisor's end closing (it died) is watched from the worker's first moment
   by a thread, which sends the worker SIGTERM: a graceful shutdown once serving, the
   end before. A worker never serves on, or starts serving, as an orphan.
3. The plan travels in one environment variable, :data:`ENV`, as JSON; ``parse``
   reads it back, and refuses what it cannot read in one line.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket as stdlib_socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Final

import trio

from ._handler import Handler, watches_disconnect
from ._logging import error_logger
from ._request import Request
from ._response import Response
from ._server import Server

__all__ = [
    "ENV",
    "HEARTBEAT",
    "READY",
    "RECYCLE",
    "RESTART",
    "CountingHandler",
    "WorkerPlan",
    "report_to_supervisor",
    "watch_supervisor",
]

#: The environment variable that makes ``python -m trioserve`` a worker.
ENV: Final = "TRIOSERVE_WORKER"
#: What a worker says: it serves; it is alive; it has served its requests.
READY: Final = b"R"
HEARTBEAT: Final = b"H"
RECYCLE: Final = b"M"
#: What the supervisor says: drain for a restart (instead of SIGTERM).
RESTART: Final = b"T"


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What the supervisor tells a worker it starts.

    Attributes:
        control: the worker's end of the control socket (a file descriptor).
        fds: the listening sockets to serve (file descriptors).
        reuse_port: with ``--reuse-port``, the TCP address the worker binds itself,
            with SO_REUSEPORT, beside its siblings; else None.
        healthcheck: seconds within which the supervisor wants a heartbeat.
        max_requests: requests after which to ask for a replacement, or None.
    """

    control: int
    fds: tuple[int, ...]
    reuse_port: tuple[str, int] | None
    healthcheck: float
    max_requests: int | None

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, environ: Mapping[str, str] | None = None) -> WorkerPlan | None:
        """The plan in :data:`ENV`, or None when this process is not a worker.

        Raises:
            ValueError: the variable is set but not a plan (one line).
        """
        if environ is None:  # ours alone: not for the application's own subprocesses
            text = os.environ.pop(ENV, None)
        else:
            text = environ.get(ENV)
        if text is None:
            return None
        try:
            raw = json.loads(text)
            reuse = raw["reuse_port"]
            max_requests = raw["max_requests"]
            return cls(
                control=int(raw["control"]),
                fds=tuple(int(fd) for fd in raw["fds"]),
                reuse_port=(str(reuse[0]), int(reuse[1])) if reuse is not None else None,
                healthcheck=float(raw["healthcheck"]),
                max_requests=int(max_requests) if max_requests is not None else None,
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{ENV} is not a worker plan ({exc!r})") from None


class CountingHandler:
    """``handler``, counting its requests: after ``limit`` of them, ``reached`` is set
    (at the request itself, not at the next heartbeat: a busy worker would overshoot
    its --limit-max-requests many times over)."""

    def __init__(self, handler: Handler, limit: int) -> None:
        self._handler = handler
        self._left = limit
        self.reached = trio.Event()
        self.watch_disconnect = watches_disconnect(handler)

    async def __call__(self, request: Request) -> Response | None:
        self._left -= 1
        if self._left == 0:
            self.reached.set()
        return await self._handler(request)


def watch_supervisor(plan: WorkerPlan) -> None:
    """From the worker's first moment (before the application is imported), a thread
    that waits on the control socket and, once the supervisor's end closes (it died),
    sends this process SIGTERM: a graceful shutdown once serving, the end before."""
    control = stdlib_socket.socket(fileno=os.dup(plan.control))

    def wait() -> None:
        with control:
            while True:
                # Waits for readability, then reads: the descriptor is shared with the
                # trio side, which makes it non-blocking, so a plain blocking recv()
                # could fail at once with EAGAIN and read as the supervisor's death.
                select.select([control], [], [])
                try:
                    data = control.recv(64)
                except BlockingIOError:
                    continue
                except OSError:
                    break
                if not data:
                    break  # EOF: the supervisor's end is closed
                if RESTART in data and not _SERVING.restart():
                    os.kill(os.getpid(), signal.SIGTERM)  # not serving yet: just stop
        error_logger.warning("the supervisor is gone: shutting down")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="trioserve-supervisor", daemon=True).start()


async def report_to_supervisor(
    server: Server, plan: WorkerPlan, recycle: trio.Event | None = None
) -> None:
    """Say ``R``, then ``H`` every quarter of the health-check timeout, and ``M`` once
    ``recycle`` is set, until cancelled (when the server has finished)."""
    control = trio.socket.from_stdlib_socket(stdlib_socket.socket(fileno=plan.control))
    _SERVING.serving(trio.lowlevel.current_trio_token(), server)
    with control, _SERVING.ending():
        try:
            await control.send(READY)
            async with trio.open_nursery() as nursery:
                if recycle is not None:
                    nursery.start_soon(_ask_to_be_replaced, control, recycle)
                while True:
                    await trio.sleep(plan.healthcheck / 4)
                    await control.send(HEARTBEAT)
        except OSError:  # the supervisor is gone mid-send: the watching thread acts
            pass


class _ServingLink:
    """How the thread watching the supervisor reaches the server it asks to restart:
    set by :func:`report_to_supervisor` while the server serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: tuple[trio.lowlevel.TrioToken, Server] | None = None

    def serving(self, token: trio.lowlevel.TrioToken, server: Server) -> None:
        with self._lock:
            self._target = (token, server)

    @contextmanager
    def ending(self) -> Iterator[None]:
        try:
            yield
        finally:
            with self._lock:
                self._target = None

    def restart(self) -> bool:
        """From the thread: begin the server's graceful shutdown as a restart. False
        if it does not serve (yet, or any more)."""
        with self._lock:
            if self._target is None:
                return False
            token, server = self._target
            try:
                token.run_sync_soon(_shut_down_for_restart, server)
            except trio.RunFinishedError:
                return False
            return True


def _shut_down_for_restart(server: Server) -> None:
    error_logger.info("the supervisor replaces this worker: shutting down gracefully")
    server._begin_shutdown(restart=True)


#: The one server this worker process serves, for the thread watching the supervisor.
_SERVING: Final = _ServingLink()


async def _ask_to_be_replaced(control: trio.socket.SocketType, recycle: trio.Event) -> None:
    await recycle.wait()
    error_logger.info("served its --limit-max-requests: asking to be replaced")
    await control.send(RECYCLE)
