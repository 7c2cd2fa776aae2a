"""An ASGI app whose lifespan startup fails: each worker fails at startup."""

from __future__ import annotations

from trioserve.asgi import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "no database at db:5432"})
        return
    raise AssertionError("never serves")  # pragma: no cover
