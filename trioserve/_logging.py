"""The two loggers, the access-log line, and the one logging setup for programs.

Rules for this module:
1. The library configures no handlers: ``serve``, ``Server`` and ``trioserve.testing``
   only emit records, and an embedding application decides where they go.
   ``trioserve.error`` gets handler failures (with tracebacks) and server lifecycle
   lines; ``trioserve.access`` gets one INFO line per response, formatted only when
   enabled.
2. Programs get one setup, :func:`configure_logging`: the command line always calls it,
   and :func:`trioserve.run` calls it unless the program has configured logging
   itself (:func:`logging_configured`), so ``python examples/hello.py`` logs what
   ``trioserve examples...`` logs.
3. The access line is the Combined Log Format followed by one field, the duration in
   seconds (see :func:`log_access`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._request import Request

__all__ = [
    "StderrHandler",
    "access_logger",
    "configure_logging",
    "error_logger",
    "log_access",
    "log_refusal",
    "logging_configured",
    "say",
]

error_logger = logging.getLogger("trioserve.error")
access_logger = logging.getLogger("trioserve.access")


def say(line: str) -> None:
    """Print one line on stderr in one write: the lines of processes that share a
    stderr (workers) then never interleave mid-line, even unbuffered (``python -u``,
    ``PYTHONUNBUFFERED``), where ``print`` writes the line and its newline apart."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def log_access(host: str, request: Request, status: int, size: int, duration: float) -> None:
    """One Combined Log Format line, then the duration in seconds as one more field.

    ``127.0.0.1 - - [22/Nov/2026:01:02:03 +0000] "GET / HTTP/1.1" 200 13 "-"``
    ``"curl/8.5" 0.000412`` (one line). The first field is the client's host alone,
    never ``host:port``: every Combined parser reads it as a host (``-`` when unknown,
    ``unix:<path>`` for a client on a Unix socket, as nginx's ``unix:``). The duration
    comes last, after the user agent, where nginx's ``$request_time`` and Apache's
    ``%D`` are usually appended, so parsers that read Combined as a prefix of the line
    (GoAccess's ``COMBINED``, grok's ``COMBINEDAPACHELOG``) read these lines unchanged.
    """
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    access_logger.info(
        '%s - - [%s] "%s %s HTTP/%s" %d %s "%s" "%s" %.6f',
        host,
        when,
        request.method,
        request.target,
        request.http_version,
        status,
        size if size else "-",
        request.headers.get("referer") or "-",
        request.headers.get("user-agent") or "-",
        duration,
    )


def log_refusal(host: str, status: int) -> None:
    """The access-log line of a request refused before any handler saw it (a head
    too slow, malformed, too large, ambiguous or not HTTP/1.x: 400, 408, 414, 431,
    501, 505): the request line is ``"-"``, as nginx logs a request it could not
    parse, and so is the duration."""
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    access_logger.info('%s - - [%s] "-" %d - "-" "-" -', host, when, status)


# --- The setup for programs ---------------------------------------------------------------


# StreamHandler[TextIO] would fail at run time on Python 3.10 (generic from 3.11 on).
class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler installed by :func:`configure_logging`, told apart so that a second
    setup replaces it instead of adding another."""


def configure_logging(
    level: str = "info", *, access_log: bool = True, process: str | None = None
) -> None:
    """Send ``trioserve.error`` (at ``level``) and ``trioserve.access`` to stderr.

    The setup of the command line and of :func:`trioserve.run`, on these two loggers
    only: error lines as ``2026-01-02 03:04:05 INFO    message``, access lines as they
    are (they carry their own timestamp). ``propagate`` is turned off, so a root
    handler the application installs later does not print each line twice. Calling
    it again replaces what it set up before.

    Args:
        level: ``"critical"``, ``"error"``, ``"warning"``, ``"info"`` or ``"debug"``,
            for ``trioserve.error``.
        access_log: log one line per response; when false, ``trioserve.access`` is
            silenced.
        process: a name for this process, put before each error line (``worker
            1234``, ``supervisor``), where several processes share the stderr.
    """
    error_handler = StderrHandler(sys.stderr)
    tag = f"[{process}] " if process else ""
    error_handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s {tag}%(message)s", "%Y-%m-%d %H:%M:%S")
    )
    access_handler = StderrHandler(sys.stderr)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    for logger, handler, logger_level in (
        (error_logger, error_handler, logging.getLevelName(level.upper())),
        (access_logger, access_handler, logging.INFO if access_log else logging.CRITICAL + 1),
    ):
        for old in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logger_level)
        logger.propagate = False


def logging_configured() -> bool:
    """Whether the program has decided where trioserve's records go.

    True when either trioserve logger has a level of its own, or a handler on itself
    or on an ancestor it propagates to: the root logger after ``logging.basicConfig()``
    or ``logging.config.dictConfig(...)``, ``trioserve``, ``trioserve.error``,
    ``trioserve.access`` (a ``NullHandler`` there silences it).
    """
    return any(
        logger.hasHandlers() or logger.level != logging.NOTSET
        for logger in (error_logger, access_logger)
    )
