"""The gunicorn worker class behind ``trioserve.workers.TrioserveWorker``.

Rules for this module:
1. gunicorn's arbiter is the supervisor: it binds the sockets, forks the workers,
   watches their heartbeat and sends the signals. A worker runs one ordinary
   ``trioserve.serve`` on duplicates of the arbiter's sockets (the arbiter owns the
   originals; ``serve`` closes what it is given). The engine never knows gunicorn.
2. Everything gunicorn-specific lives here: its settings become a ``Config``, its
   loggers get trioserve's records, and its signals and heartbeat run as trio tasks,
   so a blocked event loop stops the heartbeat and the arbiter's ``timeout`` kills it.
3. gunicorn is untyped: the settings read are spelled out in ``_GunicornSettings``.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import ssl
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final, Protocol, cast

import trio
from gunicorn.arbiter import Arbiter  # type: ignore[import-untyped]  # gunicorn ships no types
from gunicorn.errors import AppImportError  # type: ignore[import-untyped]
from gunicorn.sock import ssl_context as gunicorn_ssl_context  # type: ignore[import-untyped]
from gunicorn.workers.base import Worker  # type: ignore[import-untyped]

from ._cli_app import _INTERFACE_NAMES, CLIError, Interface, InterfaceChoice, choose_interface
from ._config import Config, HTTPEngineName
from ._engines import load_engine
from ._errors import StartupError
from ._handler import Handler, watches_disconnect
from ._listeners import fd_listener
from ._logging import access_logger, error_logger
from ._request import Request
from ._response import Response
from ._server import Lifespan, serve

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from .asgi import ASGIApp

__all__ = ["TrioserveWorker"]

#: The exit status that makes gunicorn's arbiter stop instead of booting another
#: worker (3): a failed startup would fail again.
WORKER_BOOT_ERROR: Final[int] = Arbiter.WORKER_BOOT_ERROR
#: Longest wait between two heartbeats, so that ``self.alive`` turned False by
#: gunicorn's reloader, or the arbiter's death, is noticed within a second (as
#: gunicorn's gthread worker, whose loop wakes every second).
HEARTBEAT_MAX_INTERVAL: Final = 1.0
#: gunicorn's own caps (``gunicorn/http/message.py``): the longest request line, the
#: most header fields, and the field size it uses when given 0 or less.
_GUNICORN_MAX_REQUEST_LINE: Final = 8190
_GUNICORN_MAX_HEADERS: Final = 32768
_GUNICORN_DEFAULT_FIELD_SIZE: Final = 8190


class _GunicornSettings(Protocol):
    """The gunicorn settings (``worker.cfg``) this module reads."""

    keepalive: int
    graceful_timeout: int
    worker_connections: int
    limit_request_line: int
    limit_request_fields: int
    limit_request_field_size: int
    forwarded_allow_ips: list[str]
    threads: int


def _config_from(cfg: _GunicornSettings) -> Config:
    """The trioserve ``Config`` for gunicorn's settings (``docs/gunicorn.md`` has the
    table). Unmapped fields keep trioserve's defaults."""
    default = Config()
    line = cfg.limit_request_line  # 0: unlimited; gunicorn caps it at 8190
    line = min(line, _GUNICORN_MAX_REQUEST_LINE) if line > 0 else 0
    fields = cfg.limit_request_fields
    fields = fields if 0 < fields <= _GUNICORN_MAX_HEADERS else _GUNICORN_MAX_HEADERS
    field_size = cfg.limit_request_field_size
    field_size = field_size if field_size > 0 else _GUNICORN_DEFAULT_FIELD_SIZE
    # trioserve bounds the whole head, gunicorn each field: the longest line and one
    # field of the largest size gunicorn allows must fit, and never less than
    # trioserve's own default.
    head = max(default.max_header_size, (line or _GUNICORN_MAX_REQUEST_LINE) + field_size + 4)
    trusted = tuple(cfg.forwarded_allow_ips)
    if "*" not in trusted:
        trusted += ("unix",)  # gunicorn trusts peers without an IP address unconditionally
    proxy_protocol: object = getattr(cfg, "proxy_protocol", False)  # bool before 24.1
    keepalive = cfg.keepalive
    return Config(
        keep_alive_timeout=float(keepalive) if keepalive > 0 else default.keep_alive_timeout,
        # keepalive 0: gunicorn closes after each response.
        max_requests_per_connection=default.max_requests_per_connection if keepalive > 0 else 1,
        shutdown_timeout=max(float(cfg.graceful_timeout), 0.001),  # Config wants > 0
        max_connections=cfg.worker_connections if cfg.worker_connections > 0 else math.inf,
        max_target_length=line if line > 0 else math.inf,
        max_header_count=fields,
        max_header_size=head,
        proxy_headers=True,
        forwarded_allow_ips=trusted,
        proxy_protocol=proxy_protocol not in (False, None, "off"),
    )


class _Recycling:
    """The handler, counting requests for gunicorn's ``max_requests``: the one that
    reaches it calls ``on_limit`` as it arrives, and is served to the end like every
    request in flight. Counted here, where the count changes, not in the heartbeat
    from ``Server.statistics()``: a check once a second lets a busy worker serve
    thousands past its limit."""

    __slots__ = ("_handler", "_on_limit", "_remaining", "watch_disconnect")

    def __init__(self, handler: Handler, limit: int, on_limit: Callable[[], None]) -> None:
        self._handler = handler
        self._remaining = limit
        self._on_limit = on_limit
        self.watch_disconnect = watches_disconnect(handler)

    async def __call__(self, request: Request) -> Response | None:
        self._remaining -= 1
        if self._remaining == 0:
            self._on_limit()
        return await self._handler(request)


class TrioserveWorker(Worker):  # type: ignore[misc]  # gunicorn's Worker is untyped (Any)
    """A gunicorn worker that serves ASGI 3, WSGI and native trioserve applications.

    Use it as ``gunicorn -k trioserve.workers.TrioserveWorker myapp:app``. The
    application's interface is detected from its signature, as by the ``trioserve``
    command line; subclass and set :attr:`interface` when it cannot be told, and
    :attr:`http` to choose the HTTP engine.
    ``docs/gunicorn.md`` lists the gunicorn settings it honours and how.

    Signals, as gunicorn's workers: SIGTERM shuts down gracefully within
    ``graceful_timeout``; SIGQUIT and SIGINT stop at once (after the ``worker_int``
    hook); SIGUSR1 reopens the log files; SIGWINCH is ignored.

    Error handling: an application of no known interface ends the worker as gunicorn's
    "App failed to load" (exit status 4); a failed startup (ASGI lifespan, TLS
    certificate, an HTTP engine that is not installed) with ``WORKER_BOOT_ERROR`` (3):
    either way the arbiter stops instead of booting workers in a loop.
    """

    #: The application's interface: ``"auto"`` (detect), ``"asgi"``, ``"wsgi"`` or
    #: ``"native"``.
    interface: ClassVar[InterfaceChoice] = "auto"
    #: The HTTP/1.1 engine, ``Config.http``: ``"auto"`` (h11-mypyc when installed,
    #: else h11), ``"h11"`` or ``"h11-mypyc"``.
    http: ClassVar[HTTPEngineName] = "auto"

    #: gunicorn's flag (set by its ``Worker``): False once the worker should stop.
    alive: bool
    #: The interface :meth:`load_wsgi` found.
    found_interface: Interface

    def trioserve_config(self) -> Config:
        """The ``Config`` to serve with: gunicorn's settings mapped onto it. Override
        it to set what gunicorn has no setting for::

            def trioserve_config(self):
                return super().trioserve_config().replace(max_body_size=10 * 2**20)
        """
        return _config_from(self.cfg).replace(http=self.http)

    def init_signals(self) -> None:
        # gunicorn's handlers stay for the boot (before trio runs) and for SIGABRT (the
        # arbiter's WORKER TIMEOUT: its handler raises SystemExit even in a blocked
        # loop). Its wakeup pipe goes: trio sets its own and warns about another.
        super().init_signals()
        signal.set_wakeup_fd(-1)
        # SIGTERM, SIGINT and SIGQUIT only record, outside trio: trio's receiver puts
        # back what it found when it closes, and gunicorn's own SIGQUIT handler
        # (sleep, then sys.exit) firing inside trio's teardown crashed the worker with
        # TrioInternalError. While trio runs, its receiver handles them; before (a
        # slow import) and after, they mark the worker as leaving, which the
        # heartbeat task reads as a graceful shutdown.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._leave)

    def _leave(self, signum: int, frame: object) -> None:
        self.alive = False

    def load_wsgi(self) -> None:
        super().load_wsgi()
        spec = str(self.cfg.wsgi_app or "the application")
        try:
            found, reason = choose_interface(self.wsgi, self.interface, spec)
        except CLIError as exc:  # gunicorn's arbiter stops on AppImportError
            raise AppImportError(str(exc)) from None
        self.found_interface = found
        if self.interface != "auto":
            reason = f"{type(self).__name__}.interface"
        self.log.info("Serving %s (%s)", _INTERFACE_NAMES[found], reason)

    def run(self) -> None:
        self._route_logging()
        try:
            tls = self._ssl_context()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self.log.error("TLS: cannot load the certificate: %s", exc)
            sys.exit(WORKER_BOOT_ERROR)
        config = self.trioserve_config()
        try:
            self.log.info("HTTP engine: %s", load_engine(config.http))
        except ImportError as exc:
            self.log.error("%s", exc)
            sys.exit(WORKER_BOOT_ERROR)
        try:
            trio.run(self._serve, tls, config)
        except StartupError as exc:
            self.log.error("%s", exc, exc_info=exc.__cause__)
            sys.exit(WORKER_BOOT_ERROR)
        except BaseExceptionGroup as group:
            # gunicorn's SIGABRT handler (WORKER TIMEOUT) raises SystemExit wherever the
            # blocked loop was, and trio's nurseries wrap it: exit as that worker would.
            exits, rest = group.split(SystemExit)
            if exits is None or rest is not None:
                raise
            raise SystemExit(1) from None  # gunicorn's handle_abort: sys.exit(1)

    async def _serve(self, tls: ssl.SSLContext | None, config: Config) -> None:
        stopping = trio.Event()  # set: graceful shutdown
        handler, lifespan = self._handler(stopping)
        failure: StartupError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, stopping)
            # The hard stop (SIGQUIT, SIGINT) cancels serve(), which serve documents
            # as the same stop as Server.shutdown(force=True); it works as well during
            # the lifespan startup, before a Server exists.
            with trio.CancelScope() as hard_stop:
                await nursery.start(self._handle_signals, stopping, hard_stop)
                # Duplicates: serve closes its listeners, the arbiter keeps its sockets.
                listeners = [fd_listener(os.dup(s.sock.fileno())) for s in self.sockets]
                try:
                    await serve(
                        handler,
                        config=config,
                        ssl_context=tls,
                        listeners=listeners,
                        lifespan=lifespan,
                        shutdown_trigger=stopping,
                    )
                except StartupError as exc:
                    failure = exc  # raised below, outside the nursery: as itself
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _handler(self, stopping: trio.Event) -> tuple[Handler, Lifespan | None]:
        handler: Handler
        lifespan: Lifespan | None = None
        if self.found_interface == "asgi":
            from .asgi import ASGIHandler

            asgi = ASGIHandler(
                cast("ASGIApp", self.wsgi),
                root_path=str(getattr(self.cfg, "root_path", "") or ""),  # gunicorn 24+
                lifespan=getattr(self.cfg, "asgi_lifespan", "auto"),  # gunicorn 25+
            )
            handler, lifespan = asgi, asgi.lifespan
        elif self.found_interface == "wsgi":
            from .wsgi import DEFAULT_MAX_THREADS, WSGIHandler

            threads = int(self.cfg.threads)
            handler = WSGIHandler(
                cast("WSGIApplication", self.wsgi),
                max_threads=threads if threads > 1 else DEFAULT_MAX_THREADS,
            )
        else:
            handler = cast(Handler, self.wsgi)
        if self.cfg.max_requests > 0:
            handler = _Recycling(handler, int(self.max_requests), lambda: self._recycle(stopping))
        return handler, lifespan

    def _recycle(self, stopping: trio.Event) -> None:
        if self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        stopping.set()

    async def _heartbeat(self, stopping: trio.Event) -> None:
        """Touch gunicorn's heartbeat file until cancelled. A trio task, so an event
        loop that something blocks stops the heartbeat, and the arbiter kills the
        worker after ``timeout`` seconds. ``self.timeout`` is already half of it."""
        interval = min(float(self.timeout) or HEARTBEAT_MAX_INTERVAL, HEARTBEAT_MAX_INTERVAL)
        while True:
            self.notify()
            if self.alive and self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                self.alive = False
            if not self.alive:  # the reloader, max_requests, a signal during the boot
                stopping.set()
            await trio.sleep(interval)

    async def _handle_signals(
        self,
        stopping: trio.Event,
        hard_stop: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """gunicorn's worker signals, received in trio: the handlers only queue them."""
        handled = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGUSR1, signal.SIGWINCH)
        with trio.open_signal_receiver(*handled) as received:
            task_status.started()
            async for signum in received:
                name = signal.Signals(signum).name
                if signum == signal.SIGUSR1:
                    self.log.reopen_files()
                elif signum == signal.SIGWINCH:
                    self.log.debug("worker: SIGWINCH ignored.")
                elif signum == signal.SIGTERM:
                    self.log.info("%s received: shutting down gracefully", name)
                    self.alive = False
                    stopping.set()
                else:
                    self.log.info("%s received: quick shutdown", name)
                    self.alive = False
                    self.cfg.worker_int(self)
                    hard_stop.cancel()

    def _ssl_context(self) -> ssl.SSLContext | None:
        """gunicorn's TLS context (its settings and ``ssl_context`` hook), offering
        only HTTP/1.1 by ALPN: trioserve does not speak h2."""
        if not self.cfg.is_ssl:
            return None
        context: ssl.SSLContext = gunicorn_ssl_context(self.cfg)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _route_logging(self) -> None:
        """Send trioserve's records to gunicorn's handlers (``--error-logfile``, syslog,
        ``--log-config``): ``trioserve.error`` at gunicorn's level, ``trioserve.access``
        (Combined, plus the duration) only when gunicorn's access log is on. A trioserve
        logger the user configured (a handler or level of its own) is left alone."""
        gunicorn_access = logging.getLogger("gunicorn.access")
        for ours, theirs, enabled in (
            (error_logger, logging.getLogger("gunicorn.error"), True),
            # gunicorn's access log is on exactly when its logger has a handler.
            (access_logger, gunicorn_access, bool(gunicorn_access.handlers)),
        ):
            if ours.handlers or ours.level != logging.NOTSET:
                continue
            ours.propagate = False
            if enabled:
                for handler in theirs.handlers:
                    ours.addHandler(handler)
                ours.setLevel(theirs.getEffectiveLevel())
            else:
                ours.setLevel(logging.CRITICAL + 1)
