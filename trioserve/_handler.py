"""Handler: what the server calls for each request.

Rules for this module:
1. It is a value module: it imports only the value objects a handler sees.
2. The engine reads a handler's optional attributes here, once per connection, and
   nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from ._request import Request
from ._response import Response

__all__ = ["Handler", "supports_websocket", "watches_disconnect"]


class Handler(Protocol):
    """A trioserve handler: ``async def handler(request: Request) -> Response``.

    Any async function of one ``Request`` is a handler, and so is any object whose
    ``__call__`` is one (``trioserve.asgi.ASGIHandler``, ``trioserve.wsgi.WSGIHandler``).

    A handler object may also have the attribute ``watch_disconnect`` (a bool,
    ``True`` when absent): with ``False``, the server watches the connection for a
    vanished client only once something awaits ``request.wait_disconnected()``,
    instead of whenever the handler waits with its body read. The ASGI adapter says
    ``False``: ASGI applications ask through ``receive()``. (A ``Protocol`` cannot
    declare an attribute that may be absent, so it is read by
    :func:`watches_disconnect`, and plain functions stay handlers.)

    A handler that serves WebSockets returns ``None`` after
    ``request.accept_websocket()``. One that never can (WSGI) says
    ``supports_websocket = False``: an upgrade request to it is served as plain HTTP
    and logged once at WARNING.
    """

    def __call__(self, request: Request, /) -> Awaitable[Response | None]: ...


def watches_disconnect(handler: Handler) -> bool:
    """The handler's ``watch_disconnect`` attribute, ``True`` when it has none."""
    return bool(getattr(handler, "watch_disconnect", True))


def supports_websocket(handler: Handler) -> bool:
    """The handler's ``supports_websocket`` attribute, ``True`` when it has none."""
    return bool(getattr(handler, "supports_websocket", True))
