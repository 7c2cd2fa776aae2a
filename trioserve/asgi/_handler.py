"""ASGIHandler, and the host that keeps the applications' tasks for the server's
lifetime.

Rules for this module:
1. The adapter lives in ``_http`` (one exchange) and ``_lifespan`` (the lifespan
   protocol); here are only the handler and the host.
2. Built on the engine's public surface (``Request``, ``Response``, ``serve``'s
   ``lifespan``), never the other way round.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import ClassVar, Final, Literal, get_args
from urllib.parse import quote

import trio

from .._logging import error_logger
from .._request import Request
from .._response import Response
from ._http import HTTPCycle
from ._lifespan import LifespanMode, LifespanProtocol
from ._loops import app_caller
from ._types import ASGI_VERSION, ASGIApp, Scope
from ._websocket import WebSocketCycle
from ._workers import Workers

__all__ = ["DRAIN_TIMEOUT", "HTTP_SPEC_VERSION", "WEBSOCKET_SPEC_VERSION", "ASGIHandler"]

#: The ASGI HTTP sub-specification version spoken here. 2.4 is the one that matters:
#: ``send()`` raises an ``OSError`` once the client is gone (Starlette then streams
#: without a task group listening for ``http.disconnect``).
HTTP_SPEC_VERSION: Final = "2.4"
#: The ASGI WebSocket sub-specification version spoken here: 2.4, like uvicorn's
#: (``send()`` raises an ``OSError`` once the WebSocket is closed), with ``reason`` in
#: ``websocket.close`` and the ``websocket.http.response`` denial extension.
WEBSOCKET_SPEC_VERSION: Final = "2.4"
#: Seconds that application tasks still running when the server has drained (work
#: after a complete response, such as Starlette background tasks) get to finish
#: before lifespan shutdown; then they are cancelled. The engine's
#: ``Config.shutdown_timeout`` default, for the same reason.
DRAIN_TIMEOUT: Final = 30.0

_NOT_HOSTED: Final = (
    "ASGIHandler is not running: serve it with its lifespan, "
    "trioserve.serve(handler, ..., lifespan=handler.lifespan), "
    "or inside `async with handler.lifespan():`"
)


class ASGIHandler:
    """A trioserve handler that serves an ASGI 3 application.

    Args:
        app: the application, ``async def app(scope, receive, send) -> None``.
        root_path: the path prefix the application is mounted at behind a proxy
            (WSGI's ``SCRIPT_NAME``). It is put in ``scope["root_path"]`` and in front
            of ``scope["path"]`` and ``scope["raw_path"]``, as uvicorn does.
        lifespan: ``"auto"`` runs the ASGI lifespan protocol and goes on without it if
            the application does not speak it (it raises or returns at once; logged
            at INFO); ``"on"`` makes that a startup failure; ``"off"`` never calls the
            application with the lifespan scope.

    The handler needs a host for the applications' tasks, :meth:`lifespan`; pass it
    to ``serve`` (it also runs the ASGI lifespan protocol)::

        handler = ASGIHandler(app)
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(trioserve.serve, handler, 0, lifespan=handler.lifespan)
            )

    Called outside of its lifespan, the handler raises ``RuntimeError`` (the client
    gets a 500 and the reason is logged on ``trioserve.error``).

    Error handling: an application that raises before its first response body, or
    returns without responding, gets a 500 (an ``HTTPError`` it raises gets its own
    status); an application that fails once the response head is out gets its
    connection aborted, so a truncated response never looks complete. Messages sent
    out of order, or malformed, raise into the application. Once the client is gone,
    ``send()`` raises :class:`ClientDisconnectedError` (an ``OSError``, ASGI HTTP spec
    2.4) and ``receive()`` returns ``http.disconnect``; none of that is logged above
    DEBUG. An application still running :data:`ABANDON_GRACE` seconds after its
    exchange was aborted is cancelled.

    Resource handling: each request's application call runs in a task of the host (not
    the connection's; a task whose call ended takes the next one), so it may stream
    while the server writes, and go on after its response is complete (background
    work). The host waits up to :data:`DRAIN_TIMEOUT` seconds for such tasks before
    lifespan shutdown.

    Raises:
        ValueError: ``lifespan`` is not ``"auto"``, ``"on"`` or ``"off"``.
    """

    #: Tells the engine not to start its disconnect watcher whenever this handler
    #: waits: ASGI applications learn that their client left from ``receive()``
    #: (``http.disconnect``), which asks the engine to watch only then. Most requests
    #: never ask, and a watcher is a task and a read per request.
    watch_disconnect: ClassVar[bool] = False

    __slots__ = (
        "_apps",
        "_call",
        "_hosted",
        "_raw_root_path",
        "_state",
        "app",
        "lifespan_mode",
        "root_path",
    )

    def __init__(
        self, app: ASGIApp, *, root_path: str = "", lifespan: LifespanMode = "auto"
    ) -> None:
        if lifespan not in get_args(LifespanMode):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', not {lifespan!r}")
        self.app = app
        self.root_path = root_path
        self.lifespan_mode: LifespanMode = lifespan
        self._raw_root_path = quote(root_path).encode("ascii")
        # The lifespan scope's "state"; each request gets a shallow copy (spec).
        self._state: dict[str, object] = {}
        self._apps: Workers | None = None
        # The application as the cycles call it: on trio, or on the asyncio loop the
        # server runs on as a guest (``_loops``); decided when the host starts.
        self._call: ASGIApp = app
        self._hosted = False

    async def __call__(self, request: Request) -> Response | None:
        """Serve one request with the application (the trioserve handler protocol):
        an ``http`` scope, or a ``websocket`` scope for a request that asks for one
        (``None`` is returned once an accepted WebSocket is over).

        Raises:
            RuntimeError: the handler is not running (see :meth:`lifespan`), or the
                application returned without responding.
            Exception: what the application raised before its first response body.
        """
        apps = self._apps
        if apps is None:
            raise RuntimeError(_NOT_HOSTED)
        headers = request.headers.raw  # the scope's copy
        if request.is_websocket:
            ws_cycle = WebSocketCycle(request, self._scope(request, "websocket", headers))
            apps.nursery.start_soon(ws_cycle.run, self._call)
            return await ws_cycle.respond()
        # RFC 9112 6.3: a request has a body only with Content-Length or
        # Transfer-Encoding (the engine refused requests that carry both).
        body_length: int | None = 0
        for name, value in headers:
            if name == b"content-length":
                body_length = int(value)
            elif name == b"transfer-encoding":
                body_length = None
        cycle = HTTPCycle(request, self._scope(request, "http", headers), body_length)
        apps.start(cycle)
        return await cycle.wait_response()

    def _scope(
        self,
        request: Request,
        kind: Literal["http", "websocket"],
        headers: list[tuple[bytes, bytes]],
    ) -> Scope:
        """The connection scope of one request: ``http``, or ``websocket`` for a request
        that asks for one (its scheme is then ``ws`` or ``wss``); ``headers`` is the
        request's, copied for the application."""
        root_path = self.root_path
        tls = request.tls
        if kind == "http":
            extensions: dict[str, object] = {"http.response.pathsend": {}}
            spec_version = HTTP_SPEC_VERSION
            scheme = request.scheme
        else:
            extensions = {"websocket.http.response": {}}
            spec_version = WEBSOCKET_SPEC_VERSION
            scheme = "wss" if request.scheme == "https" else "ws"
        if tls is not None:
            # The ASGI TLS extension; the server's own certificate is not at hand.
            extensions["tls"] = {
                "server_cert": None,
                "client_cert_chain": list(tls.client_cert_chain),
                "client_cert_name": tls.client_cert_name,
                "client_cert_error": None,  # an unverified certificate fails the handshake
                "tls_version": tls.version,
                "cipher_suite": tls.cipher_suite,
            }
        scope: Scope = {
            "type": kind,
            "asgi": {"version": ASGI_VERSION, "spec_version": spec_version},
            "http_version": request.http_version,
            "scheme": scheme,
            "path": root_path + request.path if root_path else request.path,
            "raw_path": self._raw_root_path + request.raw_path if root_path else request.raw_path,
            "query_string": request.query_string,
            "root_path": root_path,
            "headers": headers,
            "client": request.client,
            "server": request.server,
            "state": self._state.copy(),
            "extensions": extensions,
        }
        if kind == "http":
            scope["method"] = request.method
        else:
            scope["subprotocols"] = request.websocket_subprotocols
        return scope

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """The host of the application's tasks, and the ASGI lifespan protocol.

        Returns an async context manager, for ``trioserve.serve(lifespan=...)`` (pass
        the method itself: ``lifespan=handler.lifespan``) or ``async with``. On entry
        it opens a nursery for the application's tasks and runs lifespan startup; on
        exit (after the server has drained) it waits up to :data:`DRAIN_TIMEOUT` for
        application tasks still running, then runs lifespan shutdown. An exit that is
        cancelled (a forced shutdown of ``serve``, or the scope around ``async with``
        cancelled) cancels the application's tasks at once and skips lifespan
        shutdown, or cuts it short.

        Raises (on entry):
            LifespanFailure: startup failed; its ``message`` is the application's.
            RuntimeError: this handler's lifespan is already running.
        """
        return _Host(self).hosting()

    def __repr__(self) -> str:
        return f"ASGIHandler({self.app!r})"


class _Host:
    """What :meth:`ASGIHandler.lifespan` enters: ``_Host(handler).hosting()``.

    Its nursery holds the application's tasks and the lifespan task. A startup
    failure is raised after the nursery has closed, so it comes out as itself, not
    wrapped in an exception group; exceptions raised inside ``async with`` come out
    of the nursery as any nursery's do. (``serve`` holds the lifespan in a task of
    its own, so nothing it raises while serving passes through here.)

    A forced shutdown reaches it as cancellation: ``serve`` cancels the scope the host
    and its exit run in, so the engine needs to know no adapter.
    """

    __slots__ = ("_apps_done", "_draining", "_handler", "_protocol")

    def __init__(self, handler: ASGIHandler) -> None:
        self._handler = handler
        self._protocol: LifespanProtocol | None = None
        self._draining = trio.Event()
        self._apps_done = trio.Event()

    @asynccontextmanager
    async def hosting(self) -> AsyncIterator[None]:
        handler = self._handler
        if handler._hosted:
            raise RuntimeError(f"the lifespan of {handler!r} is already running")
        handler._hosted = True
        handler._call = app_caller(handler.app)
        failure: Exception | None = None
        try:
            async with trio.open_nursery() as nursery:
                try:
                    apps: Workers = await nursery.start(self._host_apps, handler._call)
                    if handler.lifespan_mode != "off":
                        protocol = LifespanProtocol(
                            handler._call, handler._state, handler.lifespan_mode
                        )
                        if await protocol.startup(nursery):
                            self._protocol = protocol
                except Exception as exc:
                    failure = exc  # raised below, outside the nursery: as itself
                    nursery.cancel_scope.cancel()
                else:
                    handler._apps = apps
                    try:
                        yield
                    finally:
                        handler._apps = None  # the server has drained: no more requests
                        await self._drain_and_shut_down()
                        nursery.cancel_scope.cancel()
        finally:
            handler._hosted = False
        if failure is not None:
            raise failure

    async def _drain_and_shut_down(self) -> None:
        lifespan = "skipped"
        try:
            # Forced (this exit runs cancelled): no DRAIN_TIMEOUT for the application's
            # tasks, they are cancelled with the host now; and no lifespan shutdown,
            # which uvicorn also skips on a forced exit. Whoever forced the shutdown
            # will not wait, and a shorter bounded wait would be one more timer to
            # force through. The lifespan task is cancelled, not abandoned: its
            # ``finally`` blocks and ``async with`` exits still run.
            await trio.lowlevel.checkpoint_if_cancelled()
            self._draining.set()
            await self._apps_done.wait()
            if self._protocol is not None:
                lifespan = "cut short"
                await self._protocol.shutdown()
        except trio.Cancelled:
            error_logger.warning(
                "ASGI host exit cancelled (forced shutdown or hard stop): application tasks"
                " not drained%s",
                f", lifespan shutdown {lifespan}" if self._protocol is not None else "",
            )
            raise

    async def _host_apps(self, app: ASGIApp, *, task_status: trio.TaskStatus[Workers]) -> None:
        try:
            async with trio.open_nursery() as apps:
                workers = Workers(apps, app)
                task_status.started(workers)
                await self._draining.wait()
                running = len(apps.child_tasks) - workers.close()
                if running:
                    error_logger.info(
                        "waiting up to %.4g s for %d ASGI application tasks",
                        DRAIN_TIMEOUT,
                        running,
                    )
                apps.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT
            if apps.cancel_scope.cancelled_caught:
                error_logger.warning(
                    "ASGI application tasks cancelled after the %.4g s drain timeout",
                    DRAIN_TIMEOUT,
                )
        finally:
            self._apps_done.set()
