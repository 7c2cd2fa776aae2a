"""A FastAPI application: a JSON body with validation, and a dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float
    quantity: int = 1


async def current_user(x_user: Annotated[str | None, Header()] = None) -> str:
    if x_user is None:
        raise HTTPException(status_code=401, detail="who are you?")
    return x_user


@app.post("/items")
async def create_item(item: Item) -> dict[str, object]:
    return {"name": item.name, "total": item.price * item.quantity}


@app.get("/me")
async def me(user: Annotated[str, Depends(current_user)]) -> dict[str, str]:
    return {"user": user}


@app.get("/items/{item_id}")
def read_item(item_id: int, q: str | None = None) -> dict[str, object]:
    # A sync endpoint: FastAPI runs it in a worker thread through anyio (on trio).
    return {"item_id": item_id, "q": q}
