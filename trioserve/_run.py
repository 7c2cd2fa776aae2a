"""run(): serve in a program, with signals, until SIGINT or SIGTERM."""

from __future__ import annotations

import functools
import logging
import sys

import trio

from ._config import Config
from ._connection import Handler
from ._server import Lifespan, Server, StartupError, serve

__all__ = ["run"]

error_logger = logging.getLogger("trioserve.error")


def run(
    handler: Handler,
    port: int = 8000,
    *,
    host: str | None = "127.0.0.1",
    config: Config | None = None,
    lifespan: Lifespan | None = None,
) -> int:
    """Serve ``handler`` in this process until SIGINT or SIGTERM; return an exit status.

    For programs (the examples use it): prints where it listens, then serves. The
    first SIGINT (Ctrl+C) or SIGTERM starts a graceful shutdown, a second one forces
    it. Returns 0 after a clean graceful shutdown, 1 after a forced one or when
    ``lifespan`` failed at startup (the reason is logged on ``trioserve.error`` and
    printed). Use it as ``raise SystemExit(trioserve.run(handler, 8000))``.

    Embedding applications call :func:`serve` instead and keep their own signals.
    """
    try:
        server = trio.run(
            functools.partial(_serve_and_report, handler, port, host, config, lifespan)
        )
    except StartupError as exc:
        error_logger.error("%s", exc, exc_info=exc.__cause__)
        print(f"trioserve: {exc}", file=sys.stderr)
        return 1
    return 1 if server.forced else 0


async def _serve_and_report(
    handler: Handler,
    port: int,
    host: str | None,
    config: Config | None,
    lifespan: Lifespan | None,
) -> Server:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            functools.partial(
                serve,
                handler,
                port,
                host=host,
                config=config,
                lifespan=lifespan,
                handle_signals=True,
            )
        )
        for url in server.urls:
            print(f"Serving on {url} (press CTRL+C to quit)", file=sys.stderr, flush=True)
    return server
