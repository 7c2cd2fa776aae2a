"""FastAPI under trioserve: with trioserve installed from its source tree
(``python -m pip install -e .``), ``python -m pip install fastapi``, then, from the
repository's root, ``trioserve examples.fastapi_app:app``.

FastAPI (through Starlette and anyio) runs on trio unchanged: ``async def`` endpoints
run in trioserve's trio event loop, and plain ``def`` endpoints in anyio's worker
threads. Try ``curl http://127.0.0.1:8000/items/3?q=x`` and
``curl -H 'content-type: application/json' -d '{"name": "pen", "price": 1.5}'
http://127.0.0.1:8000/items``. The lifespan below runs before the first request is
accepted and after the last one has finished (``--lifespan on`` makes a failure in it
stop the server from starting).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open what the endpoints share (a database pool, say) and close it at the end."""
    app.state.items_created = 0
    yield


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    quantity: int = 1


@app.get("/")
async def index() -> dict[str, str]:
    return {"hello": "from FastAPI on trioserve"}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, object]:
    return {"item_id": item_id, "q": q}


@app.post("/items")
async def create_item(item: Item) -> dict[str, object]:
    app.state.items_created += 1
    return {"name": item.name, "total": item.price * item.quantity}
