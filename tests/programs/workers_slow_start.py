"""An ASGI app whose lifespan startup takes 60 s: its workers are long in starting.

It prints ``starting up in PID`` as its startup begins, so a test knows the workers
are inside it.
"""

from __future__ import annotations

import os
import sys

import trio

from trioserve.asgi import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        print(f"starting up in {os.getpid()}", file=sys.stderr, flush=True)
        await trio.sleep(60)
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
