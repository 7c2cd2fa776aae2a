"""Applications for the gunicorn worker tests (``tests/test_gunicorn.py``).

``gunicorn -k trioserve.workers.TrioserveWorker tests.programs.gunicorn_apps:asgi``
(or ``:wsgi``, ``:native``). Each answers with its process id and the path, so a test
can tell the workers apart, and prints ``handling PATH`` to stderr as a request
arrives. ``/slow`` answers after 1 s; ``/block`` blocks the event loop (or its
thread) for 6 s with ``time.sleep``, as a careless async handler does.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable

import trio

import trioserve
from trioserve.asgi import Receive, Scope, Send


def _answer(path: str) -> bytes:
    print(f"handling {path}", file=sys.stderr, flush=True)
    return f"{os.getpid()} {path}".encode()


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": f"{kind}.complete"})
            if kind == "lifespan.shutdown":
                return
    path = str(scope["path"])
    body = _answer(path)
    if path == "/slow":
        await trio.sleep(1)
    elif path == "/block":
        time.sleep(6)  # noqa: ASYNC251  # on purpose: the heartbeat test
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
    body = _answer(str(environ["PATH_INFO"]))
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


async def native(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=_answer(request.path))


def not_an_app(first: object, second: object, third: object) -> None:
    """Neither ASGI (not async), WSGI (three arguments) nor a native handler."""
