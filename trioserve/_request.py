"""Request: what a handler sees of one HTTP request.

Rules for this module:
1. A Request never touches a stream: its body comes from a ``RequestSource`` that the
   connection hands in, so the request reads from the socket only as fast as the
   handler consumes (backpressure).
2. Everything derived from the target (path, query) is computed on first use: the hot
   path pays only for what the handler asks for.
3. This module imports only value modules (``_headers``, ``_errors``, ``_cookies``),
   the sans-I/O ``_ws_protocol``, and ``_forms``, which reads a body through
   ``stream()`` like any handler.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol
from urllib.parse import parse_qs, unquote

import trio

from ._cookies import parse_cookie_header
from ._errors import BadRequest, HTTPError
from ._forms import FormData, read_form
from ._headers import Headers
from ._ws_protocol import is_upgrade, offered_subprotocols

if TYPE_CHECKING:
    from ._websocket import WebSocket

__all__ = ["Request", "RequestSource", "TLSInfo"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSInfo:
    """What a handler may know of a TLS connection (``Request.tls``).

    The fields are those of the ASGI TLS extension, which the ASGI adapter passes on.

    Attributes:
        version: the TLS version as its protocol number: ``0x0303`` for TLS 1.2,
            ``0x0304`` for TLS 1.3.
        cipher_suite: the cipher suite's IANA number (``0x1301`` for
            TLS_AES_128_GCM_SHA256), or None when unknown.
        client_cert_chain: the client's certificate (PEM) when one was asked for
            (``--ssl-cert-reqs``) and sent; empty otherwise. Only the client's own
            certificate: Python's ``ssl`` does not show the rest of its chain.
        client_cert_name: that certificate's subject as an RFC 4514 string
            (``CN=alice,O=Example``), or None.
        alpn_protocol: the protocol agreed by ALPN (``"http/1.1"``), or None.
    """

    version: int
    cipher_suite: int | None
    client_cert_chain: tuple[str, ...] = ()
    client_cert_name: str | None = None
    alpn_protocol: str | None = None


class RequestSource(Protocol):
    """Where a request's body and fate come from (the connection implements it)."""

    async def receive_body_chunk(self) -> bytes:
        """The next piece of body; ``b""`` once the body is complete.

        Cancellation-safe: if cancelled, no byte was taken, and the next call goes on
        exactly where this one would have.

        Raises:
            trioserve.HTTPError: the body is too large (413) or too slow (408).
            trioserve.ClientDisconnected: the client went away mid-body.
        """
        ...

    async def wait_disconnected(self) -> None:
        """Return once the client has gone away or the exchange is over."""
        ...

    def is_disconnected(self) -> bool:
        """Whether the client is known gone or the exchange over (watching begins)."""
        ...

    async def accept_websocket(
        self, subprotocol: str | None, headers: Iterable[tuple[str | bytes, str | bytes]]
    ) -> WebSocket:
        """Accept the request's WebSocket upgrade (see ``Request.accept_websocket``)."""
        ...


class _BytesBody:
    """A body that is already in memory (requests built by hand, e.g. in tests)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def receive_body_chunk(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        data, self._data = self._data, b""
        return data

    async def wait_disconnected(self) -> None:
        await trio.sleep_forever()

    def is_disconnected(self) -> bool:
        return False

    async def accept_websocket(
        self, subprotocol: str | None, headers: Iterable[tuple[str | bytes, str | bytes]]
    ) -> WebSocket:
        raise RuntimeError("accept_websocket() needs a request served by a trioserve server")


class Request:
    """One HTTP request, as a handler sees it.

    Attributes:
        method: ``"GET"``, ``"POST"``, ... (``str``, as sent).
        target: the request target as sent (``str``), for example ``"/a%20b?x=1"``.
        raw_path: the path part of the target, still percent-encoded (``bytes``).
        path: ``raw_path`` percent-decoded (``str``), without the query, and without
            scheme and authority for absolute-form targets (``GET http://h/p``).
        query_string: the part of the target after ``?`` (``bytes``).
        query: ``query_string`` parsed, ``{name: [values, ...]}``.
        headers: :class:`trioserve.Headers`, case-insensitive and multi-valued.
        http_version: ``"1.0"`` or ``"1.1"``.
        client: the peer's ``(host, port)``, or ``None`` when unknown.
        server: our ``(host, port)``, or ``None`` when unknown.
        scheme: ``"http"`` or ``"https"``.
        tls: :class:`TLSInfo` on a TLS connection, else ``None``.

    Behind a trusted proxy (``Config.proxy_headers``, ``Config.proxy_protocol``),
    ``client``, ``scheme``, ``server`` and the ``Host`` header are what the proxy
    says it forwarded; see docs/deployment.md.

    The body is read with ``await request.body()`` (all of it, bounded by
    ``Config.max_body_size``) or ``async for chunk in request.stream()``; either can be
    used once. Both are safe to cancel (a handler's own timeout): no byte is lost, and
    calling ``body()`` again, or iterating the same stream again, goes on where the
    cancelled call stopped. Reading raises :class:`trioserve.HTTPError` (413, 408) or
    :class:`trioserve.ClientDisconnected`, which handlers normally let propagate.

    For the everyday cases: ``await request.json()``, ``await request.form()``
    (urlencoded or multipart, with limits), ``request.cookies`` and ``request.url``.
    """

    __slots__ = (
        "_body_consumed",
        "_body_parts",
        "_cookies",
        "_form",
        "_path",
        "_query",
        "_shutdown",
        "_source",
        "_split",
        "client",
        "headers",
        "http_version",
        "method",
        "scheme",
        "server",
        "target",
        "tls",
    )

    def __init__(
        self,
        *,
        method: str,
        target: str,
        headers: Headers | None = None,
        http_version: str = "1.1",
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        scheme: str = "http",
        tls: TLSInfo | None = None,
        body: bytes | RequestSource = b"",
        shutdown_event: trio.Event | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers if headers is not None else Headers()
        self.http_version = http_version
        self.client = client
        self.server = server
        self.scheme = scheme
        self.tls = tls
        self._source: RequestSource = _BytesBody(body) if isinstance(body, bytes) else body
        self._shutdown = shutdown_event
        self._body_consumed = False
        self._body_parts: list[bytes] | None = None  # what a cancelled body() had read
        self._cookies: Mapping[str, str] | None = None
        self._form: FormData | None = None
        self._path: str | None = None
        self._query: dict[str, list[str]] | None = None
        self._split: tuple[bytes, bytes] | None = None

    @property
    def raw_path(self) -> bytes:
        return self._split_target()[0]

    @property
    def query_string(self) -> bytes:
        return self._split_target()[1]

    def _split_target(self) -> tuple[bytes, bytes]:
        split = self._split
        if split is None:
            split = self._split = _split_target(self.target)
        return split

    @property
    def path(self) -> str:
        path = self._path
        if path is None:
            path = self._path = unquote(self.raw_path.decode("latin-1"))
        return path

    @property
    def query(self) -> dict[str, list[str]]:
        query = self._query
        if query is None:
            query = self._query = parse_qs(
                self.query_string.decode("latin-1"), keep_blank_values=True
            )
        return query

    @property
    def server_shutting_down(self) -> bool:
        """True once the server has begun a graceful shutdown."""
        return self._shutdown is not None and self._shutdown.is_set()

    async def wait_server_shutdown(self) -> None:
        """Return once the server begins a graceful shutdown (never, if it does not).

        Long-poll and streaming handlers can race this against their own work to
        finish early instead of being cut off at ``Config.shutdown_timeout``.
        """
        if self._shutdown is None:
            await trio.sleep_forever()
        else:
            await self._shutdown.wait()

    async def wait_disconnected(self) -> None:
        """Return once the client has gone away, or once this exchange is over.

        The server notices a vanished client while the handler waits after the body
        is complete, and while the response is sent. Adapters use this to tell an
        application that its client left (ASGI ``http.disconnect``).
        """
        await self._source.wait_disconnected()

    def is_disconnected(self) -> bool:
        """Whether the client is known to have gone away, or this exchange is over.

        Does not wait: the first call makes the server start watching the connection
        (once the body has been read), so a later call sees a client that left since.
        """
        return self._source.is_disconnected()

    @property
    def is_websocket(self) -> bool:
        """Whether the client asks for a WebSocket (``Upgrade: websocket``). The
        handshake was checked before the handler ran: a bad one got a 400 or 426."""
        return is_upgrade(self.headers._raw)

    @property
    def websocket_subprotocols(self) -> list[str]:
        """The subprotocols the client offers (``Sec-WebSocket-Protocol``), in its
        order of preference; pick one for :meth:`accept_websocket`."""
        return offered_subprotocols(self.headers._raw)

    async def accept_websocket(
        self,
        subprotocol: str | None = None,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    ) -> WebSocket:
        """Accept the WebSocket the client asks for: send the ``101`` and return the
        :class:`trioserve.WebSocket`. The handler then talks over it and returns
        ``None`` when done: returning closes a WebSocket left open with 1000, raising
        closes it with 1011. To refuse, return an ordinary ``Response`` (403, 404)
        instead of calling this.

        Args:
            subprotocol: one of the client's ``Sec-WebSocket-Protocol`` offers, or None.
            headers: more header fields for the ``101`` (not the handshake's own).

        Raises:
            RuntimeError: the request does not ask for a WebSocket, or was answered.
            ValueError: the subprotocol was not offered, or a header is not allowed.
            trioserve.ClientDisconnected: the client left, or did not read the ``101``.
        """
        return await self._source.accept_websocket(subprotocol, headers)

    def stream(self) -> AsyncIterator[bytes]:
        """Yield the body piece by piece as it arrives; a piece is never empty.

        The server reads from the client only when the next piece is asked for, and
        sends ``100 Continue`` (to a client that expects it) on the first ask. A
        cancelled ``__anext__`` loses nothing: the iterator stays usable.

        Raises:
            RuntimeError: the body was already consumed.
            trioserve.HTTPError: too large (413) or too slow (408).
            trioserve.ClientDisconnected: the client went away.
        """
        self._claim_body()
        return _BodyIterator(self._source)

    async def body(self) -> bytes:
        """Read and return the whole body (see :meth:`stream` for what it raises).

        If cancelled, what was read is kept: calling ``body()`` again goes on from there.
        """
        parts = self._body_parts
        if parts is None:
            self._claim_body()
            parts = self._body_parts = []
        receive = self._source.receive_body_chunk
        while chunk := await receive():
            parts.append(chunk)
        self._body_parts = None
        return b"".join(parts)

    async def json(self) -> object:
        """Read the body and parse it as JSON (RFC 8259).

        The body is read as :meth:`body` reads it (bounded by ``Config.max_body_size``,
        once per request); the result is what ``json.loads`` returns.

        Raises:
            trioserve.HTTPError: 415 when the ``Content-Type`` is not
                ``application/json`` or ``application/<anything>+json`` (RFC 6839 3.1);
                400 (:class:`trioserve.BadRequest`) when the body is not UTF-8 (RFC 8259
                8.1) or not JSON; what :meth:`stream` raises (413, 408, a client gone).
            RuntimeError: the body was already consumed.
        """
        if not _is_json(self.headers.get("content-type")):
            raise HTTPError("the body is not declared as JSON", status_code=415)
        body = await self.body()
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest("the JSON body is not UTF-8") from None
        except (ValueError, RecursionError):
            # json.JSONDecodeError is a ValueError, as is an integer too long for
            # int(); RecursionError: nesting deeper than the interpreter's stack.
            raise BadRequest("the body is not valid JSON") from None

    async def form(
        self,
        *,
        max_fields: int = 1000,
        max_files: int = 100,
        max_field_size: int = 1024 * 1024,
        max_file_size: float = math.inf,
        spool_size: int = 1024 * 1024,
    ) -> FormData:
        """Read the body as a form: ``application/x-www-form-urlencoded`` or
        ``multipart/form-data`` (RFC 7578), and return a :class:`trioserve.FormData`.

        The body is read as :meth:`stream` reads it (bounded by
        ``Config.max_body_size``, never held whole for multipart); a second call
        returns the same form. Unlike :meth:`body`, a cancelled ``form()`` cannot be
        resumed: the files read so far are closed and the body stays consumed.
        Multipart needs ``python-multipart`` (``pip install trioserve[multipart]``).

        Args:
            max_fields: most fields (files not counted); more is a 400.
            max_files: most file parts; more is a 400.
            max_field_size: largest value of a text field, in bytes (and largest
                urlencoded body, held whole in memory); more is a 413.
            max_file_size: largest file part, in bytes; more is a 413 (the body limit
                bounds it anyway).
            spool_size: file parts up to this size stay in memory; larger ones go
                to an anonymous temporary file.

        Resource handling:
            Close the form when done with its files (``form.close()``, or
            ``with await request.form() as form:``). Temporary files are anonymous
            (unlinked at creation on POSIX), so a form never closed costs an open
            file until it is garbage-collected, never a file left on disk.

        Raises:
            trioserve.HTTPError: 415 for another content type; 400 for a malformed
                form (a bad boundary, bad percent-encoding or UTF-8, too many fields
                or files); 413 for a field, file or part header over its limit; what
                :meth:`stream` raises (413, 408, a client gone).
            RuntimeError: the body was already consumed by another method, or the
                body is multipart and ``python-multipart`` is not installed.
        """
        form = self._form
        if form is None:
            form = await read_form(
                self.headers.get("content-type"),
                self.stream,
                max_fields=max_fields,
                max_files=max_files,
                max_field_size=max_field_size,
                max_file_size=max_file_size,
                spool_size=spool_size,
            )
            self._form = form
        return form

    @property
    def cookies(self) -> Mapping[str, str]:
        """The cookies the client sent, as a read-only ``{name: value}`` mapping.

        Read from every ``Cookie`` header (RFC 6265 5.4); a pair without ``=`` or
        with a name that is not a token is skipped, double quotes around a value
        are removed, and the first of a repeated name wins.
        """
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = parse_cookie_header(self.headers.getall("cookie"))
        return cookies

    @property
    def url(self) -> str:
        """The full URL the client asked for: ``scheme://host/path?query``.

        A ``str`` rather than a URL object: its parts are already on the request
        (``scheme``, ``path``, ``raw_path``, ``query_string``, ``query``), and a string
        is what redirects, logs and ``urllib.parse.urlsplit`` take.

        The path stays percent-encoded as sent. The host is the ``Host`` header (behind
        a trusted proxy, the one it forwarded: see docs/deployment.md); without one,
        or with one that is not a valid host (RFC 3986 3.2.2), the server's own
        address; failing that, ``localhost``.
        """
        query = self.query_string
        path = self.raw_path.decode("latin-1") or "/"
        if query:
            path = f"{path}?{query.decode('latin-1')}"
        if path == "*" or not path.startswith("/"):
            path = "/"  # asterisk-form (OPTIONS *) and authority-form (CONNECT)
        return f"{self.scheme}://{self._host()}{path}"

    def _host(self) -> str:
        host = self.headers.get("host")
        if host and _HOST_RE.fullmatch(host):
            return host
        if self.server is not None:
            address, port = self.server
            if ":" in address:
                address = f"[{address}]"
            default = 443 if self.scheme in ("https", "wss") else 80
            return address if port == default else f"{address}:{port}"
        return "localhost"

    def _claim_body(self) -> None:
        if self._body_consumed:
            raise RuntimeError("the request body can be read only once")
        self._body_consumed = True

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.http_version}>"


class _BodyIterator:
    """The iterator :meth:`Request.stream` returns.

    A class rather than an async generator: a generator that a cancellation passes
    through is finished, and its next ``__anext__`` would say the body had ended.
    """

    __slots__ = ("_receive",)

    def __init__(self, source: RequestSource) -> None:
        self._receive = source.receive_body_chunk

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._receive()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        """Nothing to release (the body stays with the connection); for symmetry with
        async generators, which callers may close."""
        await trio.lowlevel.checkpoint()


# RFC 3986 3.2.2 and 3.2.3: reg-name (unreserved, pct-encoded, sub-delims) or an
# IP literal in brackets, then an optional port. No "/", "?", "#", "@" or space: a
# Host header cannot move the URL's path or add user information.
_HOST_RE: Final = re.compile(r"(?:[A-Za-z0-9\-._~%!$&'()*+,;=]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")


def _is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is JSON: ``application/json``, or a ``+json`` structured
    syntax suffix (RFC 6839 3.1: ``application/problem+json``). Parameters (a
    ``charset``) are ignored: JSON is UTF-8 whatever they say (RFC 8259 8.1)."""
    if content_type is None:
        return False
    media_type = content_type.partition(";")[0].strip(" \t").lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _split_target(target: str) -> tuple[bytes, bytes]:
    """Split a request target into (raw path, query string), RFC 9112 3.2.

    origin-form ``/p?q`` and asterisk-form ``*`` keep their path; absolute-form
    ``http://host/p?q`` loses scheme and authority (3.2.2); authority-form
    ``host:port`` (CONNECT) has the whole target as its path.
    """
    raw = target.encode("latin-1")
    path, sep, query = raw.partition(b"?")
    if not path.startswith(b"/") and b"://" in path:
        authority_and_path = path.split(b"://", 1)[1]
        slash = authority_and_path.find(b"/")
        path = authority_and_path[slash:] if slash >= 0 else b"/"
    return path, query if sep else b""
