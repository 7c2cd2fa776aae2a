"""ASGI applications that need asyncio, for ``--loop asyncio`` (tests/test_asyncio.py).

``fastapi_app``: ``/sleep`` awaits ``asyncio.sleep``; ``/queue/ITEM`` puts ITEM on an
``asyncio.Queue`` that a task started by the lifespan drains, and awaits its answer;
``/notes`` writes and reads an SQLite database through aiosqlite (an asyncio-only
driver). ``quart_app``:
Quart on asyncio. Each handler prints ``handling PATH`` to stderr as it starts, so a
test knows the request is in flight.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiosqlite
from fastapi import FastAPI
from quart import Quart
from quart import request as quart_request

_DB = os.path.join(tempfile.mkdtemp(prefix="trioserve-aiosqlite-"), "notes.db")


def _started(path: str) -> None:
    print(f"handling {path}", file=sys.stderr, flush=True)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    queue: asyncio.Queue[tuple[str, asyncio.Future[str]]] = asyncio.Queue()
    app.state.queue = queue

    async def drain() -> None:
        while True:
            item, done = await queue.get()
            done.set_result(item.upper())

    task = asyncio.create_task(drain())
    async with aiosqlite.connect(_DB) as db:
        await db.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT)")
        await db.commit()
    yield
    task.cancel()


fastapi_app = FastAPI(lifespan=_lifespan)


@fastapi_app.get("/sleep")
async def sleep(seconds: float = 0.01) -> dict[str, object]:
    _started("/sleep")
    await asyncio.sleep(seconds)
    return {"loop": type(asyncio.get_running_loop()).__module__, "slept": seconds}


@fastapi_app.post("/queue/{item}")
async def put(item: str) -> dict[str, object]:
    done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    await fastapi_app.state.queue.put((item, done))
    return {"drained": await done}


@fastapi_app.post("/notes/{text}")
async def notes(text: str) -> dict[str, object]:
    async with aiosqlite.connect(_DB) as db:
        await db.execute("INSERT INTO notes VALUES (?)", (text,))
        await db.commit()
        async with db.execute("SELECT text FROM notes") as cursor:
            rows = [row[0] async for row in cursor]
    return {"notes": rows}


quart_app = Quart(__name__)


@quart_app.route("/hello/<name>")
async def hello(name: str) -> dict[str, object]:
    _started("/hello")
    await asyncio.sleep(float(quart_request.args.get("seconds", "0.01")))
    return {"hello": name, "task": asyncio.current_task() is not None}
