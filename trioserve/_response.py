"""Response: what a handler returns.

Rules for this module:
1. A Response is a value: status, header pairs and a body. It does no I/O and knows
   nothing of framing; the connection chooses Content-Length, chunked or
   close-delimited framing from it (RFC 9112 6).
2. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Final

__all__ = ["BodyAfterFirst", "Response"]

Body = bytes | str | AsyncIterable[bytes]


class Response:
    """One HTTP response.

    Args:
        status: the status code, 200 to 999 (1xx interim responses are the server's).
        headers: ``(name, value)`` pairs, ``str`` or ``bytes``. ``Date``, ``Server``
            and the framing headers are added by the server; an explicit
            ``content-length`` with an async-iterable body is honoured and enforced
            (a body that ends short or runs long aborts the connection).
        body: ``bytes``; ``str`` (sent as UTF-8); or an async iterable of ``bytes``,
            streamed as it is produced (chunked on HTTP/1.1, close-delimited on
            HTTP/1.0, unless a ``content-length`` is given).

    Example::

        Response(200, headers=[("content-type", "text/plain")], body="hello")

    Raises:
        ValueError: the status is out of range, or a header name or value is not
            valid HTTP (RFC 9110 5.1, 5.5: a CR, LF or NUL in a value, for example).
        TypeError: the body or a header has the wrong type.
    """

    __slots__ = ("body", "headers", "status")

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | AsyncIterable[bytes]

    def __init__(
        self,
        status: int = 200,
        *,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        body: Body = b"",
    ) -> None:
        if type(status) is not int:
            raise TypeError(f"status must be an int, not {type(status).__name__}")
        if not 200 <= status <= 999:
            raise ValueError(f"status must be from 200 to 999, not {status}")
        _set = object.__setattr__  # frozen: see __setattr__
        _set(self, "status", status)
        _set(self, "headers", tuple([_header_pair(name, value) for name, value in headers]))
        _set(self, "body", _valid_body(body))

    def with_body(self, body: Body) -> Response:
        """A copy of this response with another body (status and headers, already
        valid, are kept as they are: an adapter can validate a head before its body
        is known, then add the body without checking the head again)."""
        copy = object.__new__(type(self))
        _set = object.__setattr__
        _set(copy, "status", self.status)
        _set(copy, "headers", self.headers)
        _set(copy, "body", _valid_body(body))
        return copy

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            f"Response is frozen: build a new one (or use with_body), not .{name}"
        )

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Response is frozen: cannot delete .{name}")

    def __reduce__(self) -> tuple[object, ...]:
        # copy and pickle would restore the slots with setattr, which is refused.
        return (_rebuild, (type(self), self.status, self.headers, self.body))

    def __repr__(self) -> str:
        kind = f"{len(self.body)} bytes" if isinstance(self.body, bytes) else "streamed"
        return f"<Response {self.status} ({kind})>"


class BodyAfterFirst:
    """A streamed body whose first piece is known when the response starts, the rest
    coming from :meth:`next_piece` (the ASGI and WSGI adapters hand a response over
    with its first piece of body). Subclasses add ``next_piece`` and ``aclose``."""

    __slots__ = ("_first",)

    def __init__(self, first: bytes) -> None:
        self._first = first

    def __aiter__(self) -> BodyAfterFirst:
        return self

    async def __anext__(self) -> bytes:
        first = self._first
        if first:
            self._first = b""
            return first
        return await self.next_piece()

    async def next_piece(self) -> bytes:
        """The next piece after the first (raise ``StopAsyncIteration`` at the end)."""
        raise NotImplementedError


def _rebuild(
    cls: type[Response],
    status: int,
    headers: tuple[tuple[bytes, bytes], ...],
    body: bytes | AsyncIterable[bytes],
) -> Response:
    response = object.__new__(cls)
    object.__setattr__(response, "status", status)
    object.__setattr__(response, "headers", headers)
    object.__setattr__(response, "body", body)
    return response


def _valid_body(body: Body) -> bytes | AsyncIterable[bytes]:
    if type(body) is bytes:
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if not isinstance(body, (bytes, AsyncIterable)):
        raise TypeError(
            f"body must be bytes, str or an async iterable of bytes, not {type(body).__name__}"
        )
    return body


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of ``status`` (RFC 9110 15), or ``b""``."""
    return _REASONS.get(status, b"")


_REASONS = {int(s): s.phrase.encode("ascii") for s in HTTPStatus}


# RFC 9110 5.1 (a field name is a token) and 5.5 (a field value is visible characters
# and obs-text, with single spaces or tabs inside; no CR, LF or NUL: no header
# injection). The same rules h11 applies; checking them here makes a bad header an
# error in the handler that built it, answered with a 500, never a broken response.
_FIELD_NAME_RE: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE_RE: Final = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")


def _header_pair(name: str | bytes, value: str | bytes) -> tuple[bytes, bytes]:
    raw_name = _header_bytes(name)
    raw_value = _header_bytes(value).strip(b" \t")
    if _FIELD_NAME_RE.fullmatch(raw_name) is None:
        raise ValueError(f"invalid header name {raw_name!r}")
    if _FIELD_VALUE_RE.fullmatch(raw_value) is None:
        raise ValueError(f"invalid value for header {raw_name!r}: {raw_value!r}")
    return raw_name, raw_value


def _header_bytes(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header text must be ISO-8859-1, not {value!r}") from None
    raise TypeError(f"header names and values must be str or bytes, not {type(value).__name__}")


class _DateCache:
    """The ``Date`` header value (RFC 9110 6.6.1), formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._value = formatdate(now, usegmt=True).encode("ascii")
            self._second = now
        return self._value


_date_cache: Final = _DateCache()
#: The current ``Date`` header value, as bytes.
date_header: Final = _date_cache.get
