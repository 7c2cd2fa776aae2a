"""The command line's process flags: ``--workers``, ``--reload`` and their company.

Rules for this module:
1. The flags are uvicorn's names (``--workers``, ``--limit-max-requests``,
   ``--timeout-worker-healthcheck``, ``--reload-dir``, ...). Any of ``--workers``,
   ``--limit-max-requests`` or ``--reload`` makes this process a supervisor
   (``_supervisor``) of worker processes that run the same command line.
2. A worker is told so by its environment (``_worker.ENV``): it serves the sockets
   it was given and ignores the process flags, so one command line means the same in
   both.
3. Every mistake is one line (``CLIError``), before anything is bound or started.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import socket as stdlib_socket
from collections.abc import Sequence
from typing import Final

import trio

from ._cli_app import USAGE_ERROR, CLIError
from ._cli_config import POSITIVE_INT
from ._cli_listen import Listening
from ._listeners import describe_listener, open_reuse_port_sockets, open_unix_listener
from ._logging import error_logger, say
from ._run import EXIT_FAILURE, EXIT_INTERRUPTED, listen_error_line
from ._supervisor import Supervisor, WorkerSettings
from ._watch import WatchSpec, watcher_name

__all__ = ["add_worker_flags", "supervise", "worker_settings_from"]

#: --timeout-worker-healthcheck's default: gunicorn's timeout. The heartbeat comes from
#: the worker's event loop, so it also catches a loop that stopped turning; uvicorn's
#: 5 s (answered from a thread) would kill a worker that is only busy (one turn
#: running 60 CPU-heavy requests took 6 s in the review's test).
HEALTHCHECK_TIMEOUT: Final = 30.0


def add_worker_flags(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--timeout-worker-healthcheck``, ``--limit-max-requests``,
    ``--reuse-port``, ``--reload`` and ``--reload-dir``/``-include``/``-exclude``."""
    group = parser.add_argument_group("processes")
    group.add_argument(
        "--workers",
        type=POSITIVE_INT,
        metavar="N",
        help="serve with N worker processes under a supervisor that binds the sockets "
        "once, replaces workers that die, and restarts them one at a time on SIGHUP "
        "(SIGTTIN/SIGTTOU add/remove one) (default: one process, no supervisor)",
    )
    group.add_argument(
        "--timeout-worker-healthcheck",
        type=_positive_float,
        metavar="SECONDS",
        default=HEALTHCHECK_TIMEOUT,
        help="a worker whose event loop sends no heartbeat for this long is killed and "
        f"replaced (default: {HEALTHCHECK_TIMEOUT:g}, as gunicorn's --timeout)",
    )
    group.add_argument(
        "--limit-max-requests",
        type=POSITIVE_INT,
        metavar="N",
        help="replace a worker after it has served N requests (plus up to 10%% jitter), "
        "starting its successor before it stops (default: never)",
    )
    group.add_argument(
        "--reuse-port",
        action="store_true",
        help="each worker binds its own SO_REUSEPORT socket for --host/--port, and the "
        "kernel spreads connections over them; a worker's queued connections are lost "
        "when it exits (default: one shared socket)",
    )
    group.add_argument(
        "--reload",
        action="store_true",
        help="for development: restart when a file under --reload-dir changes (one "
        "process; a file that does not compile is reported and the old process goes on)",
    )
    group.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="directory to watch, repeatable (default: --app-dir)",
    )
    group.add_argument(
        "--reload-include",
        action="append",
        metavar="GLOB",
        help="file names to watch, repeatable (default: *.py)",
    )
    group.add_argument(
        "--reload-exclude",
        action="append",
        metavar="GLOB",
        help="file or directory names not to watch, repeatable (default: .*, "
        ".py[cod], .sw.*, ~*, __pycache__)",
    )


def worker_settings_from(
    namespace: argparse.Namespace, listening: Listening, *, app_dir: str, shutdown: float
) -> WorkerSettings | None:
    """The supervisor's settings, or None to serve in this one process.

    Raises:
        CLIError: flags that do not go together (status 2), a --reload-dir that does
            not exist (status 2).
    """
    workers: int | None = namespace.workers
    reload: bool = namespace.reload
    for name in ("reload_dir", "reload_include", "reload_exclude"):
        if getattr(namespace, name) is not None and not reload:
            raise CLIError(f"--{name.replace('_', '-')} applies to --reload", status=USAGE_ERROR)
    if reload and workers is not None:
        raise CLIError(
            "--reload restarts one process: it does not go with --workers", status=USAGE_ERROR
        )
    if namespace.reuse_port and listening.port is None:
        raise CLIError("--reuse-port applies to a TCP --host/--port", status=USAGE_ERROR)
    if namespace.reuse_port and workers is None:
        raise CLIError("--reuse-port applies to --workers", status=USAGE_ERROR)
    if workers is None and not reload and namespace.limit_max_requests is None:
        return None
    spec: WatchSpec | None = None
    if reload:
        try:
            spec = WatchSpec.build(
                namespace.reload_dir or [app_dir],
                include=namespace.reload_include or (),
                exclude=namespace.reload_exclude or (),
            )
        except ValueError as exc:
            raise CLIError(str(exc), status=USAGE_ERROR) from exc
    return WorkerSettings(
        workers=workers or 1,
        healthcheck=float(namespace.timeout_worker_healthcheck),
        max_requests=namespace.limit_max_requests,
        # The address here; the port, once the supervisor holds it.
        reuse_port=(listening.host or "", listening.port or 0) if namespace.reuse_port else None,
        shutdown_timeout=shutdown,
        reload=spec,
    )


def supervise(
    argv: Sequence[str], listening: Listening, settings: WorkerSettings, *, backlog: int
) -> int:
    """Bind the listeners, start the workers and supervise them; the exit status.

    The workers run ``python -m trioserve`` with ``argv``: the same command line.
    """
    held: list[stdlib_socket.socket] = []
    try:
        if settings.reuse_port is not None:
            # Held, not listening: the port is ours; the workers bind beside it.
            held = open_reuse_port_sockets(listening.host, listening.port or 0, listen=False)
            port = held[0].getsockname()[1]
            settings = dataclasses.replace(settings, reuse_port=(listening.host or "", port))
        return trio.run(_supervise, list(argv), listening, settings, held, backlog)
    except OSError as exc:  # --reuse-port's bind
        _report(listen_error_line(exc, listening.host, listening.port or 0))
        return EXIT_FAILURE
    except KeyboardInterrupt:  # before the supervisor took the signals
        _report("interrupted before serving")
        return EXIT_INTERRUPTED
    finally:
        for sock in held:
            sock.close()


async def _supervise(
    argv: list[str],
    listening: Listening,
    settings: WorkerSettings,
    held: list[stdlib_socket.socket],
    backlog: int,
) -> int:
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(listening.listeners)
    try:
        try:
            if listening.port is not None and settings.reuse_port is None:
                listeners += await trio.open_tcp_listeners(
                    listening.port, host=listening.host, backlog=backlog
                )
            if listening.uds is not None:
                listeners.append(
                    await open_unix_listener(
                        listening.uds, permissions=listening.uds_permissions, backlog=backlog
                    )
                )
        except OSError as exc:
            _report(listen_error_line(exc, listening.host, listening.port or 0))
            return EXIT_FAILURE
        fds = [_socket_of(listener).fileno() for listener in listeners]
        urls = [describe_listener(listener) for listener in listeners]
        urls += [_url(sock) for sock in held]
        if listening.ssl_context is not None:
            urls = [url.replace("http://", "https://", 1) for url in urls]
        if settings.reload is not None:
            dirs = ", ".join(str(path) for path in settings.reload.dirs)
            error_logger.info("watching %s for changes (%s)", dirs, watcher_name())
        return await Supervisor(argv, fds, settings, urls).run()
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)  # a Unix socket's file is removed


def _url(sock: stdlib_socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return (
        f"http://[{host}]:{port}"
        if sock.family == stdlib_socket.AF_INET6
        else f"http://{host}:{port}"
    )


def _socket_of(listener: trio.abc.Listener[trio.abc.Stream]) -> trio.socket.SocketType:
    socket: trio.socket.SocketType = getattr(listener, "socket")  # noqa: B009  (all ours have one)
    return socket


def _report(line: str) -> None:
    say(f"trioserve: {line}")


def _positive_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return number
