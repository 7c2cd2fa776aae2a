"""The exception family, sorted by who caused the error.

Rules for this module:
1. A peer that broke HTTP, was too slow or sent too much gets an :class:`HTTPError`
   subclass that knows the status to answer with. Error pages never carry exception
   text, only the status' reason phrase.
2. A peer that went away is :class:`ClientDisconnected`: a normal event, not a failure.
3. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = [
    "BadRequest",
    "ClientDisconnected",
    "ContentTooLarge",
    "HTTPError",
    "HTTPVersionNotSupported",
    "HeaderFieldsTooLarge",
    "RequestTimeout",
    "StartupError",
    "URITooLong",
]


class HTTPError(Exception):
    """The request cannot be served; the server answers ``status_code`` and closes.

    Raised into a handler by the request body methods (for example when the body is
    too large or too slow), and raised by handlers themselves to answer with an error
    status: if it escapes the handler before the response has started, the server
    sends ``status_code`` with ``Connection: close`` instead of a 500.
    """

    status_code: int = 400

    def __init__(self, message: str = "", *, status_code: int | None = None) -> None:
        super().__init__(message or type(self).__name__)
        if status_code is not None:
            if not 400 <= status_code <= 599:
                raise ValueError(f"an HTTPError status must be 4xx or 5xx, not {status_code}")
            self.status_code = status_code


class BadRequest(HTTPError):
    """The request broke HTTP/1.1 (RFC 9112): 400."""

    status_code = 400


class RequestTimeout(HTTPError):
    """The request head or body did not arrive in time: 408."""

    status_code = 408


class ContentTooLarge(HTTPError):
    """The request body is over ``Config.max_body_size``: 413."""

    status_code = 413


class URITooLong(HTTPError):
    """The request target is over ``Config.max_target_length``: 414."""

    status_code = 414


class HeaderFieldsTooLarge(HTTPError):
    """The request head is over ``Config.max_header_size`` or ``max_header_count``: 431."""

    status_code = 431


class HTTPVersionNotSupported(HTTPError):
    """The request's HTTP major version is not 1: 505."""

    status_code = 505


class StartupError(Exception):
    """The ``lifespan`` hook (or an application's startup) failed; nothing was served."""


class ClientDisconnected(Exception):
    """The client went away (EOF, reset or broken pipe) before the exchange finished.

    Raised into a handler that reads the body of a request whose client is gone. The
    server treats it as a normal event: one DEBUG log line, no traceback.
    """


class BodyUnavailable(RuntimeError):
    """The request body was read after its exchange ended (the response is complete,
    or the exchange was aborted). Adapters turn it into their own "no more body"
    answer (ASGI: ``http.disconnect``)."""

    def __init__(self) -> None:
        super().__init__("the request body can only be read while its handler runs")


def split_failure(raised: BaseException) -> tuple[Exception | None, BaseException | None]:
    """Split what application code raised: its own failure (an ``Exception``, or a
    group of them), and what must go on propagating (trio's ``Cancelled``, which the
    cancel scope that caused it absorbs; ``KeyboardInterrupt``)."""
    if isinstance(raised, Exception):
        return raised, None
    if isinstance(raised, BaseExceptionGroup):
        return raised.split(Exception)
    return None, raised


def single_leaf(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (trio's nurseries wrap
    what their bodies raise), or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
