"""Response: what a handler returns.

Rules for this module:
1. A Response is a value: status, header pairs and a body. It does no I/O and knows
   nothing of framing; the connection chooses Content-Length, chunked or
   close-delimited framing from it (RFC 9112 6).
2. This module imports nothing from the rest of trioserve but two leaves: ``_cookies``
   (which writes ``Set-Cookie`` values) and ``_filebody`` (``Response.file``'s body).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterable, Iterable
from datetime import datetime, timezone
from email.utils import formatdate
from http import HTTPStatus
from typing import Final
from urllib.parse import quote

from ._cookies import SameSite, format_set_cookie
from ._filebody import FileSource

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

    @classmethod
    def json(
        cls,
        obj: object,
        status: int = 200,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    ) -> Response:
        """A response whose body is ``obj`` as compact JSON, ``application/json``
        (unless ``headers`` has a ``content-type``: ``application/problem+json``).

        ``json.dumps`` with no spaces and non-ASCII kept as UTF-8 (RFC 8259 8.1).
        NaN and infinities are refused (they are not JSON), as is anything
        ``json.dumps`` cannot serialise.

        Raises:
            TypeError: ``obj`` (or something in it) is not JSON-serialisable.
            ValueError: ``obj`` holds NaN or an infinity, or a circular reference.
        """
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return cls(status, headers=_typed(b"application/json", headers), body=body)

    @classmethod
    def text(
        cls,
        text: str,
        status: int = 200,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    ) -> Response:
        """A response whose body is ``text`` in UTF-8, ``text/plain; charset=utf-8``
        (unless ``headers`` has a ``content-type``: ``text/html; charset=utf-8``).

        Raises:
            TypeError: ``text`` is not a ``str``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return cls(status, headers=_typed(_TEXT_PLAIN, headers), body=text)

    @classmethod
    def redirect(
        cls,
        url: str,
        status: int = 307,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    ) -> Response:
        """A redirect to ``url`` (absolute, or relative to the request: RFC 9110 10.2.2).

        307 (the default) and 308 keep the method and body; 303 makes the client
        follow with a GET (the answer to a form POST); 301 and 302 are the legacy
        forms. Characters outside ASCII, and spaces, are percent-encoded.

        Raises:
            ValueError: ``status`` is not 3xx, or ``url`` holds a control character
                (CR, LF, NUL...: a header injection), or is empty.
        """
        if type(status) is not int or not 300 <= status <= 399:
            raise ValueError(f"a redirect status must be 3xx, not {status!r}")
        if not url or _CONTROL_RE.search(url) is not None:
            raise ValueError(
                f"a redirect URL must be non-empty without control characters: {url!r}"
            )
        location = quote(url, safe=_URL_SAFE)
        return cls(status, headers=[(b"location", location), *headers])

    @classmethod
    def file(
        cls,
        path: str | os.PathLike[str],
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        *,
        media_type: str | None = None,
        filename: str | None = None,
    ) -> Response:
        """The file at ``path``, sent as ``trioserve.static`` sends one: ``ETag`` and
        ``Last-Modified``, 304 and 412 for conditional GET and HEAD, ``Range`` (206,
        416), ``sendfile`` on plain TCP; 404 if it is missing when the response goes.
        The server opens the file when it has the request, in a worker thread.

        Args:
            headers: more header pairs, sent with every answer (304 included).
            media_type: the ``Content-Type`` (default: guessed from the name, with
                ``charset=utf-8`` for text); a ``content-type`` in ``headers`` is the same.
            filename: send as a download: ``Content-Disposition: attachment`` with
                this name (RFC 6266; non-ASCII names go in ``filename*``).

        Raises:
            ValueError: ``headers`` holds a field the file sender writes itself
                (``content-length``, ``etag``...), or a second content type, or
                ``filename`` holds a control character.
        """
        pairs = [_header_pair(name, value) for name, value in headers]
        kept: list[tuple[str | bytes, str | bytes]] = []
        for name, value in pairs:
            lowered = name.lower()
            if lowered == b"content-type":
                if media_type is not None:
                    raise ValueError("give the content type once: media_type or a header")
                media_type = value.decode("latin-1")
            elif lowered in _FILE_SENDER_FIELDS:
                raise ValueError(f"{name.decode('latin-1')!r} is written by the file sender")
            elif lowered == b"content-disposition" and filename is not None:
                raise ValueError("give the download name once: filename or a header")
            else:
                kept.append((name, value))
        if filename is not None:
            kept.append((b"content-disposition", _attachment(filename)))
        if media_type is not None:
            media_type = _header_pair(b"content-type", media_type)[1].decode("latin-1")
        return cls(200, headers=kept, body=FileSource(os.fspath(path), media_type))

    def set_cookie(
        self,
        name: str,
        value: str,
        *,
        max_age: int | None = None,
        expires: datetime | None = None,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: SameSite | None = "lax",
    ) -> Response:
        """A copy of this response with a ``Set-Cookie`` header added (RFC 6265 4.1).

        A ``Response`` is frozen, so this returns a new one (the body is shared)::

            return Response.redirect("/", 303).set_cookie("session", token, httponly=True)

        Args:
            name: a token (letters, digits and ``!#$%&'*+-.^_`|~``).
            value: cookie-octets only: printable ASCII without space, ``"``, ``,``,
                ``;`` or ``\\``. Encode anything else (base64url, percent-encoding).
            max_age: seconds until the cookie expires (``0`` or less: at once).
            expires: when it expires, an aware ``datetime``; prefer ``max_age``.
            path: the paths it is sent for (``None``: the client's default).
            domain: the domain it is sent to, subdomains included (``None``: this
                host only).
            secure: sent over HTTPS only.
            httponly: hidden from scripts in the page.
            samesite: ``"lax"`` (the default, as browsers), ``"strict"``, ``"none"``
                (needs ``secure``) or None (no attribute).

        Raises:
            ValueError: a name, value or attribute breaks RFC 6265 (a ``;``, CR or LF
                among them), or the combination is one browsers refuse.
        """
        cookie = format_set_cookie(
            name,
            value,
            max_age=max_age,
            expires=expires,
            path=path,
            domain=domain,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
        )
        return self._with_header(b"set-cookie", cookie.encode("ascii"))

    def delete_cookie(
        self,
        name: str,
        *,
        path: str | None = "/",
        domain: str | None = None,
        secure: bool = False,
        httponly: bool = False,
        samesite: SameSite | None = "lax",
    ) -> Response:
        """A copy of this response that tells the client to drop cookie ``name``: an
        empty value, ``Max-Age=0`` and an ``Expires`` in the past (for clients older
        than ``Max-Age``). ``path`` and ``domain`` must be those it was set with.

        Raises:
            ValueError: as :meth:`set_cookie`.
        """
        return self.set_cookie(
            name,
            "",
            max_age=0,
            expires=_EPOCH,
            path=path,
            domain=domain,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
        )

    def _with_header(self, name: bytes, value: bytes) -> Response:
        pair = _header_pair(name, value)
        return _rebuild(type(self), self.status, (*self.headers, pair), self.body)

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


_TEXT_PLAIN: Final = b"text/plain; charset=utf-8"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
# What Location keeps as it is: RFC 3986's reserved characters and "%" (already
# percent-encoded input stays as it is); the rest (non-ASCII, space) is encoded.
_URL_SAFE: Final = ":/?#[]@!$&'()*+,;=%~"
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")


def _typed(
    content_type: bytes, headers: Iterable[tuple[str | bytes, str | bytes]]
) -> list[tuple[str | bytes, str | bytes]]:
    """``headers`` after a ``content-type`` of ``content_type``, unless they have one."""
    pairs = list(headers)
    for name, _ in pairs:
        if _header_bytes(name).lower() == b"content-type":
            return pairs
    return [(b"content-type", content_type), *pairs]


#: What ``Response.file`` writes itself (framing, validators, ranges, encoding).
_FILE_SENDER_FIELDS: Final = frozenset(
    (
        b"content-length",
        b"transfer-encoding",
        b"content-range",
        b"accept-ranges",
        b"content-encoding",
        b"etag",
        b"last-modified",
    )
)


def _attachment(filename: str) -> str:
    """``Content-Disposition`` for a download named ``filename`` (RFC 6266 4.1, with
    RFC 8187's ``filename*`` when it is not plain ASCII)."""
    if not filename or _CONTROL_RE.search(filename) is not None:
        raise ValueError(f"a file name must be non-empty without control characters: {filename!r}")
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in filename)
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += "; filename*=UTF-8''" + quote(filename, safe="")
    return value


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
