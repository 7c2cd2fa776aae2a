"""A plain ASGI 3 application, with no framework: ``trioserve examples.asgi_app:app``.

Run it from the repository root, then ``curl http://127.0.0.1:8000/`` or
``curl -d 'some text' http://127.0.0.1:8000/echo``. It imports nothing outside the
standard library, so any ASGI server runs it the same way (``uvicorn
examples.asgi_app:app``). It shows the three message flows an ASGI application deals
with:

- ``lifespan``: startup and shutdown around the server's life. The startup puts a
  counter in the lifespan ``state``, which the server copies into every request's
  scope (ASGI lifespan spec, "Lifespan State").
- ``http``, reading: ``http.request`` messages until ``more_body`` is false.
- ``http``, writing: one ``http.response.start``, then ``http.response.body``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the types only: at run time this module needs no third-party package
    from trioserve.asgi import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The application: one call per request, plus one for the lifespan."""
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
    elif scope["type"] == "http":
        await _http(scope, receive, send)
    else:  # "websocket": not served by this application
        raise NotImplementedError(f"unsupported scope type {scope['type']!r}")


async def _lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state = scope.get("state")
            if isinstance(state, dict):  # the server supports lifespan state
                state["requests"] = [0]  # a list: each request gets a shallow copy
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] == "http.disconnect":
            return  # the client has gone: nobody to answer
        chunk = message.get("body", b"")
        body += chunk if isinstance(chunk, bytes) else b""
        more_body = bool(message.get("more_body", False))

    count = 0
    state = scope.get("state")
    if isinstance(state, dict) and isinstance(state.get("requests"), list):
        state["requests"][0] += 1
        count = state["requests"][0]

    if scope["path"] == "/":
        status, answer = 200, f"Hello from a plain ASGI app! (request {count})\n".encode()
    elif scope["path"] == "/echo" and scope["method"] == "POST":
        status, answer = 200, body
    else:
        status, answer = 404, b"Not found\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})
