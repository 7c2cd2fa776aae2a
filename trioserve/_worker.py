"""A worker process's side of the supervisor: its plan, readiness, heartbeats.

Rules for this module:
1. A worker is an ordinary trioserve server (``run()``) on the sockets its supervisor
   passed; the engine does not know it is a worker. This module only talks to the
   supervisor, over one socket: ``R`` once serving, ``H`` every quarter of the
   health-check timeout (from a trio task: a stuck event loop stops them), ``M`` once
   it has served its ``--limit-max-requests`` (the supervisor then replaces it).
2. The supervisor's end closing (it died) begins a graceful shutdown: a worker never
   serves on as an orphan.
3. The plan travels in one environment variable, :data:`ENV`, as JSON; ``parse``
   reads it back, and refuses what it cannot read in one line.
"""

from __future__ import annotations

import json
import os
import socket as stdlib_socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Final

import trio

from ._logging import error_logger
from ._server import Server

__all__ = ["ENV", "HEARTBEAT", "READY", "RECYCLE", "WorkerPlan", "report_to_supervisor"]

#: The environment variable that makes ``python -m trioserve`` a worker.
ENV: Final = "TRIOSERVE_WORKER"
#: What a worker says: it serves; it is alive; it has served its requests.
READY: Final = b"R"
HEARTBEAT: Final = b"H"
RECYCLE: Final = b"M"


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
        text = (os.environ if environ is None else environ).get(ENV)
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


async def report_to_supervisor(server: Server, plan: WorkerPlan) -> None:
    """Say ``R``, then ``H`` every quarter of the health-check timeout (and ``M`` once
    the requests are served), until cancelled (when the server has finished). The
    supervisor's end closing begins a graceful shutdown."""
    control = trio.socket.from_stdlib_socket(stdlib_socket.socket(fileno=plan.control))
    with control:
        try:
            await control.send(READY)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_shutdown_when_orphaned, control, server)
                await _beat(control, server, plan)
        except OSError:  # the supervisor is gone mid-send
            await _orphaned(server)


async def _beat(control: trio.socket.SocketType, server: Server, plan: WorkerPlan) -> None:
    recycling = False
    while True:
        await trio.sleep(plan.healthcheck / 4)
        served = server.statistics().requests_served
        if plan.max_requests is not None and served >= plan.max_requests and not recycling:
            recycling = True
            error_logger.info("served %d requests: asking to be replaced", served)
            await control.send(RECYCLE)
        await control.send(HEARTBEAT)


async def _shutdown_when_orphaned(control: trio.socket.SocketType, server: Server) -> None:
    try:
        while await control.recv(64):
            pass  # the supervisor says nothing yet; its EOF is the message
    except OSError:
        pass
    await _orphaned(server)


async def _orphaned(server: Server) -> None:
    if not server.shutting_down:
        error_logger.warning("the supervisor is gone: shutting down")
    await server.shutdown()
