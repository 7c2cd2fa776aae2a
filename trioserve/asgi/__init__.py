"""Serve ASGI 3 applications (Starlette, FastAPI, ...) with trioserve.

``ASGIHandler(app)`` is a trioserve handler; its ``lifespan`` method is what
``trioserve.serve(..., lifespan=...)`` takes::

    import functools, trio, trioserve
    from trioserve.asgi import ASGIHandler

    handler = ASGIHandler(app)
    trio.run(functools.partial(trioserve.serve, handler, 8000, lifespan=handler.lifespan))

Applications written for anyio (Starlette, FastAPI) run on trio unchanged. The
``http`` and ``lifespan`` scopes are implemented in full (HTTP spec 2.4, lifespan
2.0), with the ``http.response.pathsend`` extension, and the ``websocket`` scope (spec
2.4, with the ``websocket.http.response`` extension: docs/websocket.md).
"""

from ._handler import DRAIN_TIMEOUT as DRAIN_TIMEOUT
from ._handler import ASGIHandler as ASGIHandler
from ._http import ABANDON_GRACE as ABANDON_GRACE
from ._lifespan import LifespanFailure as LifespanFailure
from ._lifespan import LifespanMode as LifespanMode
from ._types import ASGIApp as ASGIApp
from ._types import ClientDisconnectedError as ClientDisconnectedError
from ._types import Message as Message
from ._types import Receive as Receive
from ._types import Scope as Scope
from ._types import Send as Send

__all__ = [
    "ABANDON_GRACE",
    "DRAIN_TIMEOUT",
    "ASGIApp",
    "ASGIHandler",
    "ClientDisconnectedError",
    "LifespanFailure",
    "LifespanMode",
    "Message",
    "Receive",
    "Scope",
    "Send",
]
