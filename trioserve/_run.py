"""run(): serve in a program, with signals, until SIGINT or SIGTERM.

Rules for this module:
1. It is for programs (the examples, the command line): it talks to a person on
   stderr. A failure that person can cause before anything is served (a port in use,
   a failed startup, Ctrl+C during startup) becomes one line and an exit status, never
   a traceback; the traceback goes to ``trioserve.error`` at DEBUG.
2. It is built on :func:`serve` and never reaches into the server.
3. A program that has not configured logging gets the command line's setup
   (``_logging.configure_logging``): lifecycle lines and one access line per
   response on stderr. A program that has configured it keeps its own.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import socket
import ssl
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NamedTuple

import trio

from ._config import Config
from ._errors import StartupError
from ._guest import Loop, run_on
from ._handler import Handler
from ._listeners import ListenerError
from ._logging import configure_logging, error_logger, logging_configured, say
from ._server import DEFAULT_PORT, Lifespan, Server, serve

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "announce_urls",
    "describe_exception",
    "listen_error_line",
    "run",
]


#: Exit statuses of :func:`run` (and of the command line).
EXIT_OK: Final = 0
#: A forced shutdown, or nothing was served (the port, the startup).
EXIT_FAILURE: Final = 1
#: Interrupted (Ctrl+C) before the server was listening: 128 + SIGINT, as shells do.
EXIT_INTERRUPTED: Final = 130


def run(
    handler: Handler,
    port: int | None = None,
    *,
    host: str | None = "127.0.0.1",
    config: Config | None = None,
    lifespan: Lifespan | None = None,
    ssl_context: ssl.SSLContext | None = None,
    uds: str | os.PathLike[str] | None = None,
    uds_permissions: int | None = None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    reload_tls: Callable[[], ssl.SSLContext] | None = None,
    while_serving: Callable[[Server], Awaitable[object]] | None = None,
    announce: bool = True,
    loop: Loop = "trio",
) -> int:
    """Serve ``handler`` in this process until SIGINT or SIGTERM; return an exit status.

    For programs (the examples and the command line use it): prints
    ``Serving on http://127.0.0.1:8000 (press CTRL+C to quit)`` to stderr once
    listening (with the real port when ``port`` is 0), then serves. The first SIGINT
    (Ctrl+C) or SIGTERM starts a graceful shutdown, a second one forces it (nothing
    waits any more, ``lifespan``'s exit included); later ones are logged and ignored.
    Use it as ``raise SystemExit(trioserve.run(handler, 8000))``.

    Logging: unless the program has configured logging itself (a handler on the root
    logger, as after ``logging.basicConfig()``, or a handler or level on the
    ``trioserve`` loggers), ``trioserve.error`` and ``trioserve.access`` are sent to
    stderr at INFO, as the command line does: the lifecycle lines (signals, shutdown)
    and one Combined Log Format line per response, followed by its duration.

    Embedding applications call :func:`serve` instead and keep their own signals
    and logging.

    Args:
        handler: ``async def handler(request: Request) -> Response``.
        port: the TCP port; 0 picks a free one. ``None`` (the default): 8000,
            unless ``uds`` or ``listeners`` is given, which are then served alone.
        host: the address to bind; ``None`` binds every interface (IPv4 and IPv6).
        config: deadlines and limits; ``Config()`` when omitted.
        lifespan: as for :func:`serve`: entered before listening, exited after
            draining.
        ssl_context, uds, uds_permissions: as for :func:`serve`.
        listeners: more listeners to serve, already open (inherited sockets).
        reload_tls: called on SIGHUP; returns the TLS context for the connections
            accepted from then on (build a new one with
            :func:`trioserve.create_ssl_context`: open connections keep theirs). Its
            failure is logged and the old context stays.
        while_serving: an async function of the :class:`Server`, run as a task once
            serving and cancelled when the server has finished (a worker's talk with
            its supervisor).
        announce: print the ``Serving on`` lines (a worker leaves them to its
            supervisor).
        loop: ``"trio"`` (the default); ``"asyncio"`` or ``"uvloop"`` run the server
            as the trio guest of that event loop: an ASGI application's calls are
            asyncio tasks there (``--loop`` on the command line; docs/asyncio.md).

    Returns:
        0 (:data:`EXIT_OK`) after a clean graceful shutdown; 1 (:data:`EXIT_FAILURE`)
        after a forced shutdown, or when nothing was served because the address could
        not be bound or ``lifespan`` failed at startup; 130
        (:data:`EXIT_INTERRUPTED`) when interrupted before listening.

    Error handling: the three "nothing was served" cases print one line to stderr,
    ``trioserve: cannot listen on 127.0.0.1:8000: address already in use ...`` or
    ``trioserve: startup failed: ...``, and log the traceback on ``trioserve.error``
    at DEBUG. Anything that goes wrong once serving has begun propagates as usual.
    """
    if port is None and uds is None and not listeners:
        port = DEFAULT_PORT
    if not logging_configured():
        configure_logging("info", access_log=True)
    served: list[Server] = []  # the server, once it serves (for a late Ctrl+C)
    try:
        server = run_on(
            loop,
            functools.partial(
                _serve_and_report,
                handler,
                _Serving(port, host, config, lifespan, ssl_context, uds, uds_permissions),
                listeners,
                _Tasks(reload_tls, while_serving, announce),
                served,
            ),
        )
    except _ListenError as exc:
        _report(listen_error_line(exc.error, host, port or 0), exc)
        return EXIT_FAILURE
    except StartupError as exc:
        _report(_startup_message(exc), exc)
        return EXIT_FAILURE
    except BaseException as exc:
        # Ctrl+C before serve() installed its signal handlers (a slow lifespan
        # startup): trio raises KeyboardInterrupt, possibly inside an exception group.
        if not _only_keyboard_interrupts(exc):
            raise
        if served:
            # A signal in the instant after serve() returned and took its handlers
            # with it: the shutdown was over, or forced.
            return EXIT_FAILURE if served[0].forced else EXIT_OK
        say("trioserve: interrupted before serving")
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if server.forced else EXIT_OK


class _ListenError(Exception):
    """``serve`` could not open its listeners; ``error`` is the OSError."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Serving(NamedTuple):
    """What run() passes on to serve()."""

    port: int | None
    host: str | None
    config: Config | None
    lifespan: Lifespan | None
    ssl_context: ssl.SSLContext | None
    uds: str | os.PathLike[str] | None
    uds_permissions: int | None


class _Tasks(NamedTuple):
    """What run() does beside serving."""

    reload_tls: Callable[[], ssl.SSLContext] | None
    while_serving: Callable[[Server], Awaitable[object]] | None
    announce: bool


async def _serve_and_report(
    handler: Handler,
    serving: _Serving,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
    tasks: _Tasks,
    served: list[Server],
) -> Server:
    failure: _ListenError | StartupError | None = None
    server: Server | None = None
    async with trio.open_nursery() as nursery:
        try:
            server = await nursery.start(
                functools.partial(
                    serve,
                    handler,
                    serving.port,
                    host=serving.host,
                    config=serving.config,
                    ssl_context=serving.ssl_context,
                    uds=serving.uds,
                    uds_permissions=serving.uds_permissions,
                    listeners=listeners,
                    lifespan=serving.lifespan,
                    handle_signals=True,
                )
            )
        except StartupError as exc:
            failure = exc
        except OSError as exc:
            # Before ``started`` only opening the listeners does I/O that can raise
            # OSError: lifespan errors arrive as StartupError.
            failure = _ListenError(exc)
            failure.__cause__ = exc
        else:
            served.append(server)
            # serve() installed its signal handlers before reporting the server.
            if tasks.announce:
                announce_urls(server.urls)
            if tasks.reload_tls is not None:
                reload = functools.partial(_reload_tls_on_sighup, tasks.reload_tls)
                nursery.start_soon(_until_finished, server, reload)
            if tasks.while_serving is not None:
                nursery.start_soon(_until_finished, server, tasks.while_serving)
    # Raised here, outside the nursery, so that it is not wrapped in an exception group.
    if failure is not None:
        raise failure
    assert server is not None  # no failure means started() was called
    return server


def announce_urls(urls: Sequence[str]) -> None:
    """``Serving on URL (press CTRL+C to quit)`` on stderr, one line per URL."""
    for url in urls:
        say(f"Serving on {url} (press CTRL+C to quit)")


async def _until_finished(server: Server, task: Callable[[Server], Awaitable[object]]) -> None:
    """Run ``task(server)`` until it returns or the server has finished."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_finished, server, nursery.cancel_scope)
        await task(server)
        nursery.cancel_scope.cancel()


async def _reload_tls_on_sighup(reload_tls: Callable[[], ssl.SSLContext], server: Server) -> None:
    """On SIGHUP, a new TLS context for the connections accepted from then on (open
    connections keep theirs). A failure keeps the old one, and never stops serving."""
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            try:
                server.ssl_context = reload_tls()
            except ValueError as exc:  # TLSConfigError: one line
                error_logger.error("SIGHUP: certificate not reloaded: %s", exc)
            except Exception:
                error_logger.exception("SIGHUP: certificate not reloaded")
            else:
                error_logger.info("SIGHUP: certificate reloaded")


async def _cancel_when_finished(server: Server, scope: trio.CancelScope) -> None:
    await server.wait_finished()
    scope.cancel()


def describe_exception(exc: BaseException) -> str:
    """One line for an exception from the user's code: type, message, where.

    ``ModuleNotFoundError: No module named 'sqlalchemy' (app.py, line 3)``: the
    location is the innermost frame of the traceback (for a ``SyntaxError``, the
    offending line), relative to the current directory when below it.
    """
    if isinstance(exc, SyntaxError) and exc.filename is not None:
        return f"{type(exc).__name__}: {exc.msg} ({_location(exc.filename, exc.lineno)})"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<")  # importlib's frozen bootstrap
    ]
    if frames:
        text += f" ({_location(frames[-1].filename, frames[-1].lineno)})"
    return text


def _location(filename: str, lineno: int | None) -> str:
    path = os.path.abspath(filename)
    cwd = os.getcwd()
    if os.path.commonpath([path, cwd]) == cwd:
        path = os.path.relpath(path, cwd)
    return f"{path}, line {lineno}" if lineno is not None else path


def _report(line: str, exc: BaseException) -> None:
    error_logger.debug("traceback of the error below", exc_info=exc.__cause__ or exc)
    say(f"trioserve: {line}")


def _startup_message(exc: StartupError) -> str:
    cause = exc.__cause__
    if cause is None:
        return str(exc)  # the application's own words (an ASGI lifespan failure)
    return f"startup failed: {describe_exception(cause)}"


def listen_error_line(error: OSError, host: str | None, port: int) -> str:
    """One line for a listener that cannot be opened on ``host``:``port``."""
    if isinstance(error, ListenerError):  # a Unix socket or a descriptor: its own words
        return str(error)
    return f"cannot listen on {_where(host, port)}: {_listen_reason(error, port)}"


def _where(host: str | None, port: int) -> str:
    if host is None:
        return f"port {port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_reason(error: OSError, port: int) -> str:
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name ({error.strerror})"
    if error.errno == errno.EADDRINUSE:
        return "address already in use (is another server running there? choose another port)"
    if error.errno == errno.EACCES:
        if 0 < port < 1024:
            return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return "permission denied"
    if error.errno == errno.EADDRNOTAVAIL:
        return "address not available (it is not an address of this machine)"
    return error.strerror or str(error)


def _only_keyboard_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(KeyboardInterrupt)
        return rest is None
    return isinstance(exc, KeyboardInterrupt)
