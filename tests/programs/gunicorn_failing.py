"""A Starlette application whose startup fails, as when its database is unreachable:
Starlette answers ``lifespan.startup.failed`` and re-raises. For
``tests/test_gunicorn.py``: gunicorn must stop, not boot workers in a loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    raise RuntimeError("database unreachable")
    yield


app = Starlette(lifespan=lifespan)
