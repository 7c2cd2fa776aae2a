"""The command line: ``trioserve MODULE:ATTR [options]``, also ``python -m trioserve``.

Rules for this module:
1. The flags for ``Config``'s fields are generated from it (``_cli_config``), so the
   command line cannot drift from the configuration; listening and TLS flags are
   ``_cli_listen``'s.
2. Every mistake a user can make here ends in one line on stderr and a non-zero exit
   status (2 for a bad command line, as argparse; 1 for the rest), never a
   traceback. The traceback of an error in the user's own code (an import that
   fails, a factory that raises) is logged on ``trioserve.error`` at DEBUG, so
   ``--log-level debug`` shows it.
3. It is built on the public surface: :func:`trioserve.run` and the adapters.
   Only ``__main__`` and the ``trioserve`` console script import this module.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import math
import os
import platform
import sys
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

import trio

from ._cli_app import (
    _INTERFACE_NAMES,
    USAGE_ERROR,
    CLIError,
    Interface,
    InterfaceChoice,
    choose_interface,
    load_app,
)
from ._cli_config import POSITIVE_INT, add_config_flags, config_from, format_number
from ._cli_listen import Listening, add_listen_flags, listening_from
from ._cli_workers import add_worker_flags, supervise, worker_settings_from
from ._config import Config, HTTPEngineName
from ._engines import load_engine
from ._guest import Loop
from ._handler import Handler
from ._logging import StderrHandler, configure_logging, error_logger, say
from ._run import EXIT_INTERRUPTED, run
from ._server import Lifespan, Server
from ._supervisor import WorkerSettings
from ._version import __version__
from ._worker import CountingHandler, WorkerPlan, report_to_supervisor, watch_supervisor

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from .asgi import ASGIApp

__all__ = ["main"]

LifespanChoice = Literal["auto", "on", "off"]

_LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")

#: File descriptors kept for other uses than client connections when the open-file
#: limit is raised for ``max_connections``: listeners, log files, the application's
#: own files and sockets (a database pool), trio's internals.
FD_HEADROOM: Final = 128

_EPILOG = """\
The first SIGINT (Ctrl+C) or SIGTERM shuts down gracefully: listeners close, idle
connections close, requests in flight get --shutdown-timeout seconds to finish. A
second signal forces the shutdown. Exit status: 0 after a clean graceful shutdown,
1 after a forced one or when nothing could be served, 2 for a bad command line.

examples:
  trioserve myapp:app                       an ASGI, WSGI or native app, on 127.0.0.1:8000
  trioserve myapp:create_app --factory      call create_app() to get the app
  trioserve myapp:app --host 0.0.0.0 --port 8080 --keep-alive-timeout 15
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The parsed command line (see :func:`parse_args`)."""

    app: str
    factory: bool
    interface: InterfaceChoice
    loop: Loop
    listening: Listening
    workers: WorkerSettings | None
    worker: WorkerPlan | None
    app_dir: str
    root_path: str | None
    lifespan: LifespanChoice | None
    wsgi_max_threads: int | None
    log_level: str
    access_log: bool
    config: Config
    #: The HTTP engine ``config.http`` resolves to, with its version.
    http_engine: str


def main(argv: Sequence[str] | None = None, *, prog: str = "trioserve") -> int:
    """Run the command line; return the exit status.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when omitted.
        prog: the program name shown in ``--help``.

    Returns:
        0 after a clean graceful shutdown; 1 after a forced shutdown or when nothing
        could be served (the application cannot be loaded, the port cannot be bound,
        startup failed); 2 for a bad command line (argparse exits with it itself);
        130 when interrupted before serving.
    """
    options = parse_args(argv, prog=prog)
    if options.worker is not None:
        watch_supervisor(options.worker)
    process = f"worker {os.getpid()}" if options.worker else None
    if options.workers is not None:
        process = "supervisor"
    configure_logging(options.log_level, access_log=options.access_log, process=process)
    if options.workers is not None:
        # Workers import the application; a supervisor never does.
        args = sys.argv[1:] if argv is None else list(argv)
        backlog = options.config.backlog
        return supervise(args, options.listening, options.workers, backlog=backlog)
    try:
        app = load_app(options.app, factory=options.factory, app_dir=options.app_dir)
        interface, reason = choose_interface(app, options.interface, options.app)
        handler, lifespan = build_handler(app, interface, options)
    except CLIError as exc:
        if exc.__cause__ is not None:
            error_logger.debug("traceback of the error below", exc_info=exc.__cause__)
        say(f"trioserve: {exc}")
        return exc.status
    except KeyboardInterrupt:  # a slow import, interrupted
        say("trioserve: interrupted before serving")
        return EXIT_INTERRUPTED
    recycle: trio.Event | None = None
    worker = options.worker
    if worker is not None and worker.max_requests is not None:
        counting = CountingHandler(handler, worker.max_requests)
        handler, recycle = counting, counting.reached
    raise_open_file_limit(options.config.max_connections)
    say(f"Interface: {_INTERFACE_NAMES[interface]} ({reason})")
    say(f"HTTP engine: {options.http_engine}")
    listening = options.listening
    return run(
        handler,
        listening.port,
        host=listening.host,
        config=options.config,
        lifespan=lifespan,
        ssl_context=listening.ssl_context,
        uds=listening.uds,
        uds_permissions=listening.uds_permissions,
        listeners=listening.listeners,
        reload_tls=listening.reload_tls,
        while_serving=_reporter(worker, recycle),
        announce=options.worker is None,
        loop=options.loop,
    )


def _reporter(
    worker: WorkerPlan | None, recycle: trio.Event | None
) -> Callable[[Server], Awaitable[None]] | None:
    """A worker tells its supervisor that it serves, and that it is alive."""
    if worker is None:
        return None
    return functools.partial(_report_to_supervisor, worker, recycle)


async def _report_to_supervisor(
    worker: WorkerPlan, recycle: trio.Event | None, server: Server
) -> None:
    await report_to_supervisor(server, worker, recycle)


# --- The command line -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        """One line, not argparse's usage block: the mistake, and where help is."""
        self.exit(USAGE_ERROR, f"trioserve: {message} (see {self.prog} --help)\n")


def build_parser(
    prog: str = "trioserve", argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The argument parser, with a flag for every ``Config`` field (``argv``: the
    arguments, for the engine that ``--version`` reports)."""
    parser = _Parser(
        prog=prog,
        description=(
            "Serve an application over HTTP/1.1 with trioserve: a native trioserve "
            "handler, an ASGI 3 application (FastAPI, Starlette, Django) or a WSGI "
            "application (Flask, Django)."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "app",
        metavar="MODULE:ATTR",
        help="the application: ATTR (dotted for nested attributes) in module MODULE, "
        "imported from --app-dir",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_line(_engine_asked(argv)),
        help="print the version and the HTTP engine --http chooses, and exit",
    )

    application = parser.add_argument_group("application")
    application.add_argument(
        "--factory",
        action="store_true",
        help="ATTR is a function taking no arguments that returns the application",
    )
    application.add_argument(
        "--interface",
        choices=("auto", "native", "asgi", "wsgi"),
        default="auto",
        help="how to call the application: native (async def handler(request)), asgi "
        "(async def app(scope, receive, send)), wsgi (def app(environ, start_response)); "
        "auto detects it from the signature (default: auto)",
    )
    application.add_argument(
        "--loop",
        choices=("trio", "asyncio", "uvloop"),
        default="trio",
        help="the event loop: trio, or asyncio (uvloop: asyncio's with uvloop) with the "
        "server as its trio guest, so that ASGI applications run as asyncio tasks and "
        "may use asyncio libraries (Django, asyncio database drivers); native and WSGI "
        "handlers stay on trio (default: trio)",
    )
    application.add_argument(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="directory put first on sys.path to import MODULE from (default: the "
        "current directory)",
    )
    application.add_argument(
        "--root-path",
        type=_root_path,
        metavar="PATH",
        help="ASGI and WSGI: the path prefix the application is mounted at behind a "
        "proxy, e.g. /api (scope['root_path'], SCRIPT_NAME) (default: none)",
    )
    application.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        help="ASGI: run the lifespan protocol; auto goes on without it if the app does "
        "not support it, on makes that a startup failure (default: auto)",
    )
    application.add_argument(
        "--wsgi-max-threads",
        type=POSITIVE_INT,
        metavar="N",
        help="WSGI: requests the application handles at once, one thread each (default: 40)",
    )

    add_listen_flags(parser)

    logs = parser.add_argument_group("logging (to stderr)")
    logs.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="info",
        type=str.lower,
        help="level of the trioserve.error log; debug also shows the tracebacks of "
        "errors in the application's import and startup (default: info)",
    )
    access = logs.add_mutually_exclusive_group()
    access.add_argument(
        "--access-log",
        dest="access_log",
        action="store_true",
        default=True,
        help="log one line per response on trioserve.access (default)",
    )
    access.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="no access log"
    )

    add_worker_flags(parser)
    add_config_flags(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None, *, prog: str = "trioserve") -> Options:
    """Parse the command line into :class:`Options`.

    Raises:
        SystemExit: with status 2 and one line on stderr for a bad command line; with
            status 0 after ``--help`` or ``--version``.
    """
    parser = build_parser(prog, sys.argv[1:] if argv is None else argv)
    namespace = parser.parse_args(argv)
    try:
        config = config_from(namespace)
        worker = WorkerPlan.parse()
    except (TypeError, ValueError) as exc:  # each flag was checked alone: a combination
        parser.error(str(exc))
    try:
        http_engine = str(load_engine(config.http))
    except ImportError as exc:  # not installed: as bad as an unknown choice
        parser.error(f"argument --http: {exc}")
    try:
        listening = listening_from(namespace, worker)
        workers = None
        if worker is None:  # a worker serves; its supervisor supervises
            workers = worker_settings_from(
                namespace,
                listening,
                app_dir=str(namespace.app_dir),
                shutdown=config.shutdown_timeout,
            )
    except CLIError as exc:
        if exc.status == USAGE_ERROR:
            parser.error(str(exc))
        say(f"trioserve: {exc}")
        raise SystemExit(exc.status) from None
    return Options(
        app=str(namespace.app),
        factory=bool(namespace.factory),
        interface=cast(InterfaceChoice, namespace.interface),
        loop=cast(Loop, namespace.loop),
        listening=listening,
        workers=workers,
        worker=worker,
        app_dir=str(namespace.app_dir),
        root_path=cast("str | None", namespace.root_path),
        lifespan=cast("LifespanChoice | None", namespace.lifespan),
        wsgi_max_threads=cast("int | None", namespace.wsgi_max_threads),
        log_level=str(namespace.log_level),
        access_log=bool(namespace.access_log),
        config=config,
        http_engine=http_engine,
    )


def version_line(http: HTTPEngineName = "auto") -> str:
    """``trioserve 0.1.0 (trio 0.30.0, h11 0.16.0, CPython 3.12.3 on Linux)`` and, on a
    second line, ``HTTP engine: h11-mypyc 0.17.0 (--http auto)``."""
    try:
        engine = str(load_engine(http))
    except ImportError:
        engine = f"{http}, not installed"
    return (
        f"trioserve {__version__} (trio {trio.__version__}, "
        f"h11 {importlib.metadata.version('h11')}, "
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()})\n"
        f"HTTP engine: {engine} (--http {http})"
    )


def _engine_asked(argv: Sequence[str] | None) -> HTTPEngineName:
    """The engine that ``--http`` asks for anywhere in ``argv`` (``--version`` is acted
    on as soon as it is parsed, maybe before a later ``--http``); else ``auto``."""
    asked = "auto"
    args = list(argv or ())
    for i, arg in enumerate(args):
        if arg == "--http" and i + 1 < len(args):
            asked = args[i + 1]
        elif arg.startswith("--http="):
            asked = arg.partition("=")[2]
    # A wrong name is argparse's to refuse, after --version has had its say.
    return cast(HTTPEngineName, asked) if asked in typing.get_args(HTTPEngineName) else "auto"


def _root_path(text: str) -> str:
    if text == "":
        return text
    if not text.startswith("/") or text.endswith("/"):
        raise argparse.ArgumentTypeError(
            f"expected a path that starts with '/' and does not end with one, "
            f"such as /api, not {text!r}"
        )
    return text


# --- Logging ------------------------------------------------------------------------------

# The setup lives in _logging, shared with trioserve.run(). tests/test_cli.py still names
# the handler class by its old name here; drop this alias once it names
# _logging.StderrHandler.
_CLIHandler = StderrHandler


# --- Building the handler ---------------------------------------------------------------


def build_handler(
    app: object, interface: Interface, options: Options
) -> tuple[Handler, Lifespan | None]:
    """Wrap ``app`` in the adapter for ``interface``; the lifespan to serve it with.

    Raises:
        CLIError: an option that only applies to another interface was given
            (status 2).
    """
    name = _INTERFACE_NAMES[interface]
    if options.root_path and interface == "native":
        raise CLIError(
            "--root-path applies to ASGI and WSGI applications; a native handler sees "
            "the whole path",
            status=USAGE_ERROR,
        )
    if options.lifespan is not None and interface != "asgi":
        raise CLIError(f"--lifespan applies to ASGI applications, not {name}", status=USAGE_ERROR)
    if options.wsgi_max_threads is not None and interface != "wsgi":
        raise CLIError(
            f"--wsgi-max-threads applies to WSGI applications, not {name}", status=USAGE_ERROR
        )
    if interface == "native":
        return cast(Handler, app), None
    if interface == "asgi":
        from .asgi import ASGIHandler

        asgi = ASGIHandler(
            cast("ASGIApp", app),
            root_path=options.root_path or "",
            lifespan=options.lifespan or "auto",
        )
        return asgi, asgi.lifespan
    from .wsgi import DEFAULT_MAX_THREADS, WSGIHandler

    wsgi = WSGIHandler(
        cast("WSGIApplication", app),
        root_path=options.root_path or "",
        max_threads=options.wsgi_max_threads or DEFAULT_MAX_THREADS,
    )
    return wsgi, None


# --- The open-file limit ----------------------------------------------------------------


def plan_open_file_limit(
    soft: int, hard: int, max_connections: float, *, unlimited: int = -1
) -> tuple[int, str | None]:
    """The soft RLIMIT_NOFILE to set for ``max_connections``, and a warning if short.

    Each connection is a file descriptor, and the usual soft limit (1024) is far
    below ``Config.max_connections`` (10 000): without raising it, accepting fails
    with EMFILE long before the cap. The soft limit is raised towards
    ``max_connections`` + :data:`FD_HEADROOM`, never above the hard limit and never
    lowered.

    Args:
        soft: the current soft limit.
        hard: the hard limit.
        max_connections: ``Config.max_connections``; ``math.inf`` raises the soft
            limit to the hard one (when that is finite) and never warns.
        unlimited: the value of ``RLIM_INFINITY`` on this system.

    Returns:
        The soft limit to set (``soft`` itself for no change), and one line to log as
        a warning when even that leaves fewer than ``max_connections`` + the headroom.
    """
    if soft == unlimited:
        return soft, None
    if math.isinf(max_connections):
        # No cap to make reachable: as many as allowed, and nothing to warn about.
        return (soft if hard == unlimited else max(soft, hard)), None
    wanted = int(max_connections) + FD_HEADROOM
    new_soft = max(soft, wanted if hard == unlimited else min(wanted, hard))
    if new_soft >= wanted:
        return new_soft, None
    hard_text = "unlimited" if hard == unlimited else str(hard)
    return new_soft, (
        f"open-file limit {new_soft} (hard limit {hard_text}) is short of --max-connections "
        f"{format_number(max_connections)} plus {FD_HEADROOM} for other files: about "
        f"{max(new_soft - FD_HEADROOM, 0)} connections fit; raise the hard limit "
        "(ulimit -Hn, LimitNOFILE= in systemd) or lower --max-connections"
    )


def raise_open_file_limit(max_connections: float) -> None:
    """Raise this process's soft RLIMIT_NOFILE for ``max_connections`` (POSIX only).

    Logs the change at INFO and a shortfall as one WARNING on ``trioserve.error``;
    see :func:`plan_open_file_limit`.
    """
    try:
        import resource
    except ImportError:  # Windows: no per-process descriptor limit for sockets
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new_soft, warning = plan_open_file_limit(
        soft, hard, max_connections, unlimited=resource.RLIM_INFINITY
    )
    if new_soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (OSError, ValueError) as exc:  # macOS caps below an "unlimited" hard limit
            error_logger.warning(
                "could not raise the open-file limit from %d to %d (%s): about %d "
                "connections fit; lower --max-connections or raise the limit",
                soft,
                new_soft,
                exc,
                max(soft - FD_HEADROOM, 0),
            )
            return
        error_logger.info("open-file limit raised from %d to %d", soft, new_soft)
    if warning is not None:
        error_logger.warning("%s", warning)
