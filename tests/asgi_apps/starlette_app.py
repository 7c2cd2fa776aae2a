"""A Starlette application: routes, streaming, background tasks, lifespan state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.loops import Signal

#: What the background task and the lifespan did, in order (tests read it).
events: list[str] = []
#: Set by the background task once it has run (a tests.loops.Signal, made by the test:
#: the application may run on trio or on asyncio).
background_done: Signal | None = None


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
    events.append("startup")
    yield {"greeting": "hello from lifespan"}
    events.append("shutdown")


async def hello(request: Request) -> Response:
    return PlainTextResponse(f"{request.state.greeting}, {request.path_params['name']}")


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"length": len(body), "head": body[:8].decode()})


async def numbers(request: Request) -> Response:
    async def generate() -> AsyncIterator[bytes]:
        for i in range(5):
            await anyio.lowlevel.checkpoint()
            yield b"%d\n" % i

    return StreamingResponse(generate(), media_type="text/plain")


async def later(request: Request) -> Response:
    async def work() -> None:
        await anyio.sleep(0.05)
        events.append("background")
        if background_done is not None:
            background_done.set()

    return PlainTextResponse("accepted", status_code=202, background=BackgroundTask(work))


app = Starlette(
    routes=[
        Route("/hello/{name}", hello),
        Route("/echo", echo, methods=["POST"]),
        Route("/numbers", numbers),
        Route("/later", later),
    ],
    lifespan=lifespan,
)
