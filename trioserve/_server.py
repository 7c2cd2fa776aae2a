"""serve() and Server: listeners, the connection nursery, shutdown.

Rules for this module:
1. Every connection task lives in the server's one connection nursery; accept loops
   (``_accept``) live in a nursery inside it, so closing the listeners never touches
   connections.
2. Graceful shutdown is an event: it wakes the accept loops and every idle connection
   at once, then puts a deadline on the connection nursery. Nothing polls.
3. A forced shutdown is cancellation: it cancels the connection nursery and, in
   ``serve``, the scope around the ``lifespan`` too, so the lifespan's exit (an
   adapter's drain included) is cut short without the engine knowing any adapter.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import trio

from ._accept import Acceptor
from ._config import Config
from ._connection import HTTPConnection
from ._engines import load_engine
from ._errors import StartupError
from ._forwarded import TrustedPeers
from ._handler import Handler
from ._listeners import describe_listener, open_unix_listener
from ._logging import error_logger
from ._opening import ends_of
from ._stats import ServerStatistics
from ._tracker import ConnectionTracker

__all__ = ["DEFAULT_PORT", "Lifespan", "Server", "ShutdownTrigger", "serve"]

#: The TCP port served when none is named (and no other listener is given).
DEFAULT_PORT = 8000

#: ``serve(lifespan=...)``: a callable returning an async context manager.
Lifespan = Callable[[], AbstractAsyncContextManager[object]]
#: ``serve(shutdown_trigger=...)``: an event to wait for, or an async callable.
ShutdownTrigger = trio.Event | Callable[[], Awaitable[object]]


class Server:
    """An HTTP/1.1 server: a handler, a :class:`Config`, and the connections it serves.

    Most programs call :func:`serve`, which builds one. Build a Server yourself to
    serve listeners you opened, or to serve single streams (any ``trio.abc.Stream``,
    memory streams included) with :meth:`serve_connection`.

    Args:
        handler: ``async def handler(request: Request) -> Response``.
        config: deadlines and limits; ``Config()`` when omitted.
        ssl_context: serve TLS: every connection (accepted, or handed to
            :meth:`serve_connection`) is wrapped in a ``trio.SSLStream`` with it,
            and its handshake runs under ``Config.handshake_timeout``. Build one with
            :func:`trioserve.create_ssl_context`. Streams that already are
            ``trio.SSLStream`` (from a ``trio.SSLListener``) are served as they are.

    Raises:
        ImportError: ``config.http`` names an HTTP engine that is not installed
            (``"h11-mypyc"`` without the ``fast`` extra); the message says so.
    """

    def __init__(
        self,
        handler: Handler,
        config: Config | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.config = config if config is not None else Config()
        self.ssl_context = ssl_context
        self._trust = TrustedPeers(self.config.forwarded_allow_ips)
        # The build of h11 this server's connections run on, loaded once (_engines).
        self._engine = load_engine(self.config.http)
        self.listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        self._tracker = ConnectionTracker()
        self._serving = False
        self._finished = trio.Event()
        #: True once the shutdown was forced: ``shutdown(force=True)``, or a second
        #: signal (see ``serve(handle_signals=...)``).
        self.forced = False
        # What a forced shutdown cancels: the connection nursery, and serve()'s scope
        # around the lifespan. One is registered before forcing or gets cancelled as
        # it registers (see _cancel_when_forced).
        self._hard_stops: list[trio.CancelScope] = []

    @property
    def http_engine(self) -> str:
        """The HTTP/1.1 engine serving, with its version: ``"h11-mypyc 0.17.0"`` or
        ``"h11 0.16.0"`` (``Config.http`` chose it; ``"auto"`` is resolved here)."""
        return str(self._engine)

    @property
    def ports(self) -> list[int]:
        """The TCP ports the server listens on (one per listener that has a port)."""
        ports = []
        for listener in self.listeners:
            sock = _socket_of(listener)
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                ports.append(sock.getsockname()[1])
        return ports

    @property
    def urls(self) -> list[str]:
        """Where the server listens: ``http://host:port`` for each TCP listener (IPv6
        hosts in brackets; ``https://`` with TLS), ``unix:/path`` for a Unix socket."""
        urls = []
        for listener in self.listeners:
            url = describe_listener(listener)
            if self.ssl_context is not None and url.startswith("http://"):
                url = "https://" + url[len("http://") :]
            urls.append(url)
        return urls

    def statistics(self) -> ServerStatistics:
        """A snapshot of the counters: connections, responses and each kind of error."""
        return self._tracker.counters.snapshot(connections_idle=self._tracker.idle_count)

    @property
    def shutting_down(self) -> bool:
        """True once graceful shutdown has begun."""
        return self._tracker.shutting_down

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections from ``listeners`` until shut down or cancelled.

        Calls ``task_status.started(self)`` once accepting, so
        ``server = await nursery.start(server.serve_listeners, listeners)`` works.

        Resource handling: the listeners are closed when this returns. A graceful
        :meth:`shutdown` closes them at once, lets requests in flight finish within
        ``Config.shutdown_timeout`` and then returns; a forced one
        (``shutdown(force=True)``), like cancelling the surrounding scope, is the hard
        stop that closes everything now.
        """
        self.listeners = list(listeners)
        tracker = self._tracker
        counters = tracker.counters
        self._serving = True
        try:
            async with trio.open_nursery() as connections:
                self._cancel_when_forced(connections.cancel_scope)
                try:
                    async with trio.open_nursery() as acceptors:
                        accept = Acceptor(self.config, tracker, connections, self._connection)
                        for listener in self.listeners:
                            acceptors.start_soon(accept.serve_listener, listener)
                        task_status.started(self)
                        await tracker.shutdown_event.wait()
                        acceptors.cancel_scope.cancel()
                finally:
                    for listener in self.listeners:
                        await trio.aclose_forcefully(listener)
                # Graceful shutdown: idle connections were woken and close; requests in
                # flight get until the deadline, then are cancelled.
                error_logger.info(
                    "shutting down: %s in flight, %d idle",
                    _connections(counters.connections_open - tracker.idle_count),
                    tracker.idle_count,
                )
                connections.cancel_scope.deadline = (
                    trio.current_time() + self.config.shutdown_timeout
                )
            if not self.forced:
                error_logger.info(
                    "shutdown complete: %s cut off at the %.4g s timeout",
                    _connections(counters.shutdown_cutoffs),
                    self.config.shutdown_timeout,
                )
        finally:
            # A forced shutdown's cancellation may belong to serve()'s scope and end
            # this with Cancelled: say so here, where both ways pass.
            if self.forced:
                error_logger.warning(
                    "forced shutdown: %s cut off", _connections(counters.shutdown_cutoffs)
                )
            self._finished.set()

    async def serve_connection(
        self,
        stream: trio.abc.Stream,
        *,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        scheme: str = "http",
    ) -> None:
        """Serve HTTP/1.1 on one stream until the connection ends, then close it.

        Works with any ``trio.abc.Stream``: a socket, a TLS stream, or one end of
        ``trio.testing.memory_stream_pair()`` for tests. Addresses are taken from the
        socket when the stream has one, or from ``client`` and ``server``.

        Error handling: never raises for anything the client does.
        """
        await self._connection(stream, client=client, server=server, scheme=scheme).serve()

    def _connection(
        self,
        stream: trio.abc.Stream,
        *,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        scheme: str = "http",
    ) -> HTTPConnection:
        """The connection for ``stream`` (counted open): its ``serve()`` must run."""
        if self.ssl_context is not None and not isinstance(stream, trio.SSLStream):
            # https_compatible: a client that leaves without close_notify is an
            # ordinary EOF (as every browser does), and closing does not wait for one.
            stream = trio.SSLStream(
                stream, self.ssl_context, server_side=True, https_compatible=True
            )
        config = self.config
        ends = ends_of(stream, config, self._trust, client=client, server=server, scheme=scheme)
        return HTTPConnection(
            stream, self.handler, config, self._tracker, ends, self._trust, self._engine
        )

    def _begin_shutdown(self, *, force: bool = False, restart: bool = False) -> None:
        # First, so the cut-off connections are counted.
        self._tracker.begin_shutdown(restart=restart)
        if force and not self.forced:
            self.forced = True
            for scope in self._hard_stops:
                scope.cancel()

    def _cancel_when_forced(self, scope: trio.CancelScope) -> None:
        self._hard_stops.append(scope)
        if self.forced:
            scope.cancel()

    async def wait_finished(self) -> None:
        """Return once :meth:`serve_listeners` has returned (after a shutdown)."""
        await self._finished.wait()

    async def shutdown(self, *, force: bool = False, restart: bool = False) -> None:
        """Shut down gracefully and return once every connection task has finished.

        Listeners close at once; idle connections close; requests in flight finish
        (their responses say ``Connection: close``) or are cancelled after
        ``Config.shutdown_timeout``. Idempotent, and callable from any task: calling
        it again never forces anything, only ``force=True`` does.

        Args:
            force: the hard stop, at once or in the middle of a graceful shutdown
                (what a second signal does): requests in flight are cancelled now and
                :attr:`forced` becomes True. Under :func:`serve`, the ``lifespan``'s
                exit is cancelled too (an ASGI application's tasks are cancelled and
                lifespan shutdown is skipped). Connections you serve yourself with
                :meth:`serve_connection` run in your nursery: cancel it to cut them off.
            restart: the server is going to be back (a rolling restart): open
                WebSockets are closed with 1012 (service restart, "reconnect") instead
                of 1001 (going away). Only the call that begins the shutdown decides.
        """
        tracker = self._tracker
        self._begin_shutdown(force=force, restart=restart)
        if self._serving:
            await self._finished.wait()
            return
        while tracker.counters.connections_open:  # connections served one by one
            await tracker.wait_changed()


def _connections(count: int) -> str:
    return "1 connection" if count == 1 else f"{count} connections"


def _socket_of(listener: trio.abc.Listener[trio.abc.Stream]) -> trio.socket.SocketType | None:
    while isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    sock: trio.socket.SocketType | None = getattr(listener, "socket", None)
    return sock


async def serve(
    handler: Handler,
    port: int | None = None,
    *,
    host: str | None = None,
    config: Config | None = None,
    ssl_context: ssl.SSLContext | None = None,
    uds: str | os.PathLike[str] | None = None,
    uds_permissions: int | None = None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    lifespan: Lifespan | None = None,
    shutdown_trigger: ShutdownTrigger | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``port`` and serve ``handler`` until shut down or cancelled.

    Args:
        handler: ``async def handler(request: Request) -> Response``.
        port: the TCP port; ``0`` picks a free one (see ``Server.ports``; with
            ``host=None`` the IPv4 and IPv6 listeners may get different ports).
            ``None`` (the default): 8000, unless ``uds`` or ``listeners`` is given,
            which are then served alone.
        host: the address to bind; ``None`` binds every interface, IPv4 and IPv6
            where the system has both.
        config: deadlines and limits; ``Config()`` when omitted.
        ssl_context: serve HTTPS: see :class:`Server` and
            :func:`trioserve.create_ssl_context`.
        uds: serve on this Unix socket (see
            :func:`trioserve.open_unix_listener`: a stale socket file is replaced,
            the file is removed on exit); ``uds_permissions`` is its file's mode
            (``0o660``), else the umask's.
        listeners: serve these too (with ``uds`` and a ``port`` if given):
            from ``trio.open_tcp_listeners``, :func:`trioserve.open_unix_listener`,
            :func:`trioserve.fd_listener` or :func:`trioserve.systemd_listeners`.
            Several at once are fine; they are closed when ``serve`` returns.
        lifespan: a callable returning an async context manager, entered before
            listening and exited after the last connection has finished (open
            database pools there). An error on entry ends ``serve`` with
            :class:`StartupError`.
        shutdown_trigger: a ``trio.Event``, or an async callable: when the event is set
            or the call returns, graceful shutdown begins.
        handle_signals: the first SIGINT or SIGTERM begins graceful shutdown, a second
            one forces it (``Server.shutdown(force=True)``: connections are cancelled
            at once, and so is the exit of ``lifespan``); later ones are logged and
            otherwise ignored until ``serve`` returns. Off by default, so an embedding
            application keeps its own signal handling.
        task_status: reports the :class:`Server` once listening, so that
            ``server = await nursery.start(trioserve.serve, handler, 0)`` works.

    Returns once graceful shutdown has finished, or at once after a forced one
    (``Server.forced`` tells which). Cancelling the surrounding scope is the hard stop:
    every connection is closed at once.

    Example::

        async def handler(request):
            return trioserve.Response(200, body="hello")

        trio.run(trioserve.serve, handler, 8000)

    Raises:
        ImportError: ``config.http`` names an HTTP engine that is not installed,
            before anything is bound.
        OSError: the port cannot be bound (in use, or permission denied).
        StartupError: ``lifespan`` failed on entry.
    """
    config = config if config is not None else Config()
    server = Server(handler, config, ssl_context=ssl_context)
    # Bind first: a port in use fails here, as itself, before a slow startup runs.
    listeners = await _open_listeners(port, host, uds, uds_permissions, listeners, config.backlog)
    failure: BaseException | None = None
    try:
        # The signal receiver lives in this nursery, around the lifespan, so that
        # signals are handled until serve() returns: through the lifespan's exit, and
        # after a forced shutdown (a third Ctrl+C must not become a KeyboardInterrupt).
        async with trio.open_nursery() as signals:
            try:
                # A forced shutdown cancels this scope: the lifespan's exit included.
                with trio.CancelScope() as hard_stop:
                    server._cancel_when_forced(hard_stop)
                    await _serve_in_lifespan(
                        server,
                        listeners,
                        lifespan,
                        shutdown_trigger,
                        signals,
                        handle_signals,
                        task_status,
                    )
            except (Exception, KeyboardInterrupt) as exc:
                failure = exc  # raised below, outside the nursery: as itself
            signals.cancel_scope.cancel()
    finally:
        if not server._serving:  # serve_listeners closes them once it has them
            for listener in listeners:
                await trio.aclose_forcefully(listener)
    if failure is not None:
        raise failure


async def _open_listeners(
    port: int | None,
    host: str | None,
    uds: str | os.PathLike[str] | None,
    uds_permissions: int | None,
    given: Sequence[trio.abc.Listener[trio.abc.Stream]],
    backlog: int,
) -> list[trio.abc.Listener[trio.abc.Stream]]:
    opened: list[trio.abc.Listener[trio.abc.Stream]] = list(given)
    try:
        if uds is not None:
            unix = await open_unix_listener(uds, permissions=uds_permissions, backlog=backlog)
            opened.append(unix)
        if port is not None or not opened:
            tcp_port = DEFAULT_PORT if port is None else port  # 0: the kernel picks one
            tcp = await trio.open_tcp_listeners(tcp_port, host=host, backlog=backlog)
            opened.extend(tcp)
    except BaseException:
        for listener in opened:
            await trio.aclose_forcefully(listener)
        raise
    return opened


async def _serve_in_lifespan(
    server: Server,
    listeners: list[trio.abc.Listener[trio.abc.Stream]],
    lifespan: Lifespan | None,
    shutdown_trigger: ShutdownTrigger | None,
    signals: trio.Nursery,
    handle_signals: bool,
    task_status: trio.TaskStatus[Server],
) -> None:
    """Enter ``lifespan`` in serve()'s own task (so context variables it sets reach
    every connection), serve until shut down, and exit it.

    An error on entry is a :class:`StartupError`. What the lifespan's exit gets is
    what serving raised, if anything: its cleanup runs as for any ``async with``.
    """
    manager = lifespan() if lifespan is not None else contextlib.nullcontext()
    entered = False
    try:
        async with manager:
            entered = True
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve_listeners, listeners)
                if shutdown_trigger is not None:
                    nursery.start_soon(_shutdown_on_trigger, server, shutdown_trigger)
                if handle_signals:
                    # Installed before we report that we serve: a SIGTERM sent the
                    # moment a supervisor sees us listening must drain, not kill.
                    # (Before this, during a slow startup, the default actions apply.)
                    await signals.start(_shutdown_on_signals, server)
                task_status.started(server)
                await server.wait_finished()
                nursery.cancel_scope.cancel()
    except StartupError:
        raise
    except Exception as exc:
        if entered:
            raise
        raise StartupError(f"startup failed: {exc!r}") from exc


async def _shutdown_on_trigger(server: Server, trigger: ShutdownTrigger) -> None:
    if isinstance(trigger, trio.Event):
        await trigger.wait()
    else:
        await trigger()
    await server.shutdown()


async def _shutdown_on_signals(
    server: Server,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Runs until cancelled (when serve() returns): no signal is left to its default
    action, KeyboardInterrupt, while any part of the shutdown still runs."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()  # the handlers are installed
        received = 0
        async for signum in signals:
            name = signal.Signals(signum).name
            received += 1
            if server.forced:
                error_logger.warning("%s received: the forced shutdown is under way", name)
            elif received == 1:
                # The first signal is graceful even if a shutdown began another way.
                error_logger.info("%s received: shutting down gracefully", name)
                server._begin_shutdown()
            else:
                error_logger.warning("%s received again: forcing shutdown", name)
                server._begin_shutdown(force=True)
