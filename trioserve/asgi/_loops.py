"""How the adapter calls an application: on trio, or on the asyncio loop the engine
is a guest of.

Rules for this module:
1. The loop is read once, when the handler's host starts (``ASGIHandler.lifespan``):
   under ``trio.run`` the application is called as it is, in trio tasks; as a guest
   of an asyncio loop (``--loop asyncio``, ``trioserve.asyncio``) every call of the
   application, the lifespan's too, runs as an asyncio task on that loop, with its
   ``receive`` and ``send`` running in trio (``_guest``). The cycles (``_http``,
   ``_websocket``, ``_lifespan``) see one awaitable application either way.
2. An application that fails on trio because it needs asyncio gets one more log line
   that says so and names ``--loop asyncio``.
"""

from __future__ import annotations

from typing import Final

from .._guest import TrioCalls, host_loop, run_asyncio
from .._logging import error_logger
from ._types import ASGIApp, Receive, Scope, Send

__all__ = ["app_caller", "explain_asyncio_failure"]

#: What asyncio code raises when it finds itself on trio, in an exception's message.
_ASYNCIO_ON_TRIO: Final = (
    "no running event loop",
    "no current event loop",
    "unrecognized yield message",
    "unknown async library",
)


def app_caller(app: ASGIApp) -> ASGIApp:
    """``app`` as the cycles call it, on the loop this run is on (rule 1)."""
    if host_loop() is None:
        return app

    async def on_asyncio(scope: Scope, receive: Receive, send: Send) -> None:
        async with TrioCalls() as calls:
            await run_asyncio(
                app, scope, calls.wrap(receive, keep_late_results=True), calls.wrap(send)
            )

    return on_asyncio


def explain_asyncio_failure(exc: BaseException) -> None:
    """Log one more line for an application that failed on trio for want of asyncio."""
    if host_loop() is not None or not _needed_asyncio(exc):
        return
    error_logger.warning(
        "the ASGI application needs asyncio (%s): run it with --loop asyncio, or embedded"
        " with trioserve.asyncio.serve()",
        exc,
    )


def _needed_asyncio(exc: BaseException) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 20:
        if any(sign in str(current) for sign in _ASYNCIO_ON_TRIO):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
