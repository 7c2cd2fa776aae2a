"""The two loggers, and the access-log line.

trioserve configures no handlers: an embedding application decides where records go.
``trioserve.error`` gets handler failures (with tracebacks) and server lifecycle lines;
``trioserve.access`` gets one INFO line per response, formatted only when enabled.
"""

from __future__ import annotations

import logging
import time

__all__ = ["access_logger", "error_logger", "log_access", "log_refusal"]

error_logger = logging.getLogger("trioserve.error")
access_logger = logging.getLogger("trioserve.access")


def log_access(
    client: tuple[str, int] | None,
    method: str,
    target: str,
    http_version: str,
    status: int,
    size: int,
    referer: str | None,
    user_agent: str | None,
    duration: float,
) -> None:
    """One Combined-Log-Format line, plus the duration in seconds.

    ``127.0.0.1:50312 - - [22/Nov/2026:01:02:03 +0000] "GET / HTTP/1.1" 200 13 "-"``
    ``"curl/8.5" 0.000412`` (one line)
    """
    host = f"{client[0]}:{client[1]}" if client is not None else "-"
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    access_logger.info(
        '%s - - [%s] "%s %s HTTP/%s" %d %s "%s" "%s" %.6f',
        host,
        when,
        method,
        target,
        http_version,
        status,
        size if size else "-",
        referer or "-",
        user_agent or "-",
        duration,
    )


def log_refusal(client: tuple[str, int] | None, status: int) -> None:
    """The access-log line of a request refused before any handler saw it (a head
    too slow, malformed, too large, ambiguous or not HTTP/1.x: 400, 408, 414, 431,
    501, 505): the request line is ``"-"``, as nginx logs a request it could not
    parse."""
    host = f"{client[0]}:{client[1]}" if client is not None else "-"
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z")
    access_logger.info('%s - - [%s] "-" %d - "-" "-" -', host, when, status)
