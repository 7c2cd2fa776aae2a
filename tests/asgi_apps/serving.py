"""Serve an ASGI application on 127.0.0.1, port 0, for one test."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

import trioserve
from trioserve.asgi import ASGIApp, ASGIHandler, LifespanMode


@asynccontextmanager
async def serve_asgi(
    app: ASGIApp,
    *,
    lifespan: LifespanMode = "auto",
    root_path: str = "",
    config: trioserve.Config | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` over a real socket and yield an httpx client pointed at it.

    On exit the server shuts down gracefully (lifespan shutdown included), bounded
    by a 10 s deadline so a hung test fails instead of hanging.
    """
    handler = ASGIHandler(app, lifespan=lifespan, root_path=root_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: trioserve.Server = await nursery.start(
                functools.partial(
                    trioserve.serve,
                    handler,
                    0,
                    host="127.0.0.1",
                    config=config,
                    lifespan=handler.lifespan,
                )
            )
            base_url = f"http://127.0.0.1:{server.ports[0]}"
            async with httpx.AsyncClient(base_url=base_url) as client:
                yield client
            await server.shutdown()
