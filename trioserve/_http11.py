"""The HTTP/1.1 protocol engine: h11 plus the strict checks h11 leaves to us.

Rules for this module:
1. With ``_engines``, the only server module that imports h11; it never awaits:
   bytes go in, request heads and body pieces come out; responses go in, bytes (or
   sendfile ranges) come out. The build of h11 is the ``Engine`` given (``self._h11``),
   its server's choice.
2. Where RFC 9112 allows a lenient and a strict reading, it takes the strict one that
   leaves no room for request smuggling or desync, even where h11 is lenient
   (docs/framing.md lists the rules). h11 merges repeated Content-Length fields and
   unfolds obs-fold lines before we see the parsed head, so those checks look at the
   raw head bytes (see ``check_raw_head``); h11 takes any byte but LF in a chunk
   extension, so the chunked framing is checked on the raw body bytes as they are fed
   (see ``ChunkedFraming``).
3. Every refusal is an ``HTTPError`` subclass that knows its status; the connection
   answers it and closes.
4. A check that runs before h11 has parsed what it checks (a line of an incomplete head,
   see ``HeadLines``; a chunk-size line) follows h11's grammar wherever it is not
   stricter on purpose, and checks in the same order as the complete parse: the same
   bytes get the same answer however the reads split them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence, Sized
from typing import TYPE_CHECKING, Final, Literal, TypeVar

from ._config import Config
from ._engines import Engine
from ._errors import BadRequest, ContentTooLarge, HeaderFieldsTooLarge, HTTPError, URITooLong
from ._response import date_header, reason_phrase
from ._strict import (
    ChunkedFraming,
    HeadLines,
    check_raw_head,
    check_request_line,
    content_length,
    has_token,
)

if TYPE_CHECKING:
    import h11  # the types of both builds (see _engines)

__all__ = [
    "BODY_END",
    "BODY_INCOMPLETE",
    "HEAD_INCOMPLETE",
    "HTTP11Protocol",
    "RequestHead",
    "ResponseFramingError",
]


class _Signal(enum.Enum):
    """What the receiving side returns when it has no head or body piece to give
    (h11's ``NEED_DATA`` and ``PAUSED`` are sentinels in the same spirit). Each has a
    name of its own, so a caller compares with ``is`` and mypy narrows the rest."""

    HEAD_INCOMPLETE = "HEAD_INCOMPLETE"  # no complete request head yet: read more
    BODY_INCOMPLETE = "BODY_INCOMPLETE"  # no body bytes buffered: read more
    BODY_END = "BODY_END"  # the request body is complete


HEAD_INCOMPLETE: Final = _Signal.HEAD_INCOMPLETE
BODY_INCOMPLETE: Final = _Signal.BODY_INCOMPLETE
BODY_END: Final = _Signal.BODY_END


class ResponseFramingError(Exception):
    """A response broke its own framing: its body ran past its ``content-length``, or
    ended short of it (h11's ``LocalProtocolError``, translated at this wall)."""


_Piece = TypeVar("_Piece", bound=Sized)  # a body piece h11 passes through, len() counted


class RequestHead:
    """A request line and headers that passed every check."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version


class HTTP11Protocol:
    """One connection's protocol state: an ``h11.Connection`` and our own checks.

    Receiving: :meth:`receive_data` feeds bytes; :meth:`next_request` returns a
    :class:`RequestHead` or ``NEED_DATA``; :meth:`next_body_chunk` returns body bytes,
    ``NEED_DATA`` or ``END``. Sending: :meth:`start_response`, :meth:`send_data`,
    :meth:`end_response` and :meth:`error_response` return the bytes to write.
    """

    __slots__ = (
        "_body_received",
        "_chunked",
        "_conn",
        "_cr_pending",
        "_declared_length",
        "_h11",
        "_head_buf",
        "_head_lines",
        "_http10_keep_alive",
        "_max_body_size",
        "_max_header_count",
        "_max_header_size",
        "_max_target_length",
        "_method",
        "_server_header",
    )

    def __init__(self, config: Config, engine: Engine) -> None:
        self._h11 = engine
        self._max_header_size = _as_int(config.max_header_size)
        self._max_target_length = config.max_target_length
        self._max_header_count = config.max_header_count
        self._max_body_size = config.max_body_size
        self._server_header = (
            config.server_header.encode("ascii") if config.server_header is not None else None
        )
        self._conn = self._new_h11()
        self._cr_pending = False
        # Bytes of the request head being received (None once it has been parsed):
        # the first read as received (no copy, the common case), a bytearray after.
        self._head_buf: bytes | bytearray | None = b""
        # Only while a head is incomplete (see next_request).
        self._head_lines: HeadLines | None = None
        # Only while a chunked body is read (see _check_head).
        self._chunked: ChunkedFraming | None = None
        self._method = b""
        self._declared_length: int | None = None
        self._body_received = 0
        self._http10_keep_alive = False

    def _new_h11(self) -> h11.Connection:
        engine = self._h11
        return engine.Connection(engine.SERVER, max_incomplete_event_size=self._max_header_size)

    def _restart_h11(self, leftover: bytes, *, closed: bool) -> None:
        """Go on with a fresh ``h11.Connection`` fed what the last one had not parsed.

        Relies on h11's ``trailing_data`` (public: the bytes received past the last
        event, and whether EOF came) being all the state a connection carries from one
        request to the next once both sides are DONE or the response was framed with a
        length: a new cycle has nothing else to lose. Used where h11 itself would not go
        on (an HTTP/1.0 keep-alive) or would refuse what comes (empty lines first).
        """
        self._conn = self._new_h11()
        self._head_buf = b""
        self._method = b""
        if leftover:  # receive_data(b"") would tell the new h11 the peer sent EOF
            self.receive_data(leftover)
        if closed:
            self._conn.receive_data(b"")

    # --- Receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes received from the client (``b""`` for EOF)."""
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._head_buf
        if data and buf is not None and not buf:
            data = self._skip_empty_lines(data)
            if not data:
                return
        self._conn.receive_data(data)
        if buf is None:
            chunked = self._chunked
            if chunked is not None:
                chunked.feed(data)
            return
        if not buf:
            self._head_buf = data
        elif type(buf) is bytearray:
            buf += data
        else:
            self._head_buf = bytearray(buf) + data

    def _skip_empty_lines(self, data: bytes) -> bytes:
        """Drop empty lines before a request line (RFC 9112 2.2: a server SHOULD
        ignore them; some clients send a CRLF after a POST body). h11 would take an
        empty line for a missing request line and refuse it."""
        if self._cr_pending:
            self._cr_pending = False
            data = data[1:] if data[:1] == b"\n" else b"\r" + data  # a lone CR stays
        while data[:1] in (b"\r", b"\n"):
            if data[:2] == b"\r\n":
                data = data[2:]
            elif data[:1] == b"\n":
                data = data[1:]
            elif data == b"\r":  # the CRLF is split between two reads
                self._cr_pending = True
                return b""
            else:
                break  # a CR not followed by LF: h11 refuses the line
        return data

    @property
    def has_partial_request(self) -> bool:
        """Whether any byte of the next request has arrived (the idle phase is over)."""
        return bool(self._head_buf)

    @property
    def has_pipelined_data(self) -> bool:
        """Whether bytes past the current request wait unprocessed (rarely asked)."""
        return self._conn.their_state is self._h11.DONE and bool(self._conn.trailing_data[0])

    def next_request(self) -> RequestHead | Literal[_Signal.HEAD_INCOMPLETE]:
        """Parse the next request head, or return ``HEAD_INCOMPLETE``.

        Raises:
            HTTPError: the head is malformed (400), too large (414, 431), frames its
                body ambiguously (400), or is not HTTP/1.x (505).
        """
        if not self._head_buf:
            return HEAD_INCOMPLETE  # nothing received yet: no need to ask h11
        try:
            event = self._conn.next_event()
        except self._h11.RemoteProtocolError as exc:
            # Judge the head's complete lines first, as if they had come one per read,
            # so that a split does not change the answer (rule 4).
            self._head_line_checker().check(self._head_buf)
            raise self._protocol_error(exc) from exc
        if event is self._h11.NEED_DATA:
            # h11 judges a head only once its blank line has come: a bad request line
            # would wait for header_timeout (408). Each line is judged as it completes.
            self._head_line_checker().check(self._head_buf)
            return HEAD_INCOMPLETE
        if type(event) is not self._h11.Request:
            # EOF between requests is handled by the connection before asking, so the
            # only other event here is ConnectionClosed after an EOF mid-head.
            raise BadRequest("connection closed in the middle of a request head")
        head_buf = self._head_buf
        self._head_buf = None
        self._head_lines = None
        return self._check_head(event, head_buf)

    def _head_line_checker(self) -> HeadLines:
        lines = self._head_lines
        if lines is None:
            lines = self._head_lines = HeadLines(self._max_target_length)
        return lines

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> HTTPError:
        status = exc.error_status_hint
        if status == 431 and self._request_line_too_long():
            return URITooLong("request line too long")
        if status == 431:
            return HeaderFieldsTooLarge(str(exc))
        if status in (400, 501):
            # h11 hints 501 for a Transfer-Encoding other than "chunked" (RFC 9112
            # 6.1), but in a request whose final coding is not chunked the length
            # cannot be known: RFC 9112 6.3 says 400 and close.
            return BadRequest(str(exc))
        return HTTPError(str(exc), status_code=status)

    def _request_line_too_long(self) -> bool:
        buf = self._head_buf
        return buf is not None and b"\n" not in buf[: int(self._max_target_length) + 64]

    def _check_head(self, event: h11.Request, head_buf: bytes | bytearray | None) -> RequestHead:
        # Step 1: the request line (as HeadLines judges it in an incomplete head).
        # HTTP/1.2 and later 1.x are HTTP/1.1 to us (RFC 9110 2.5: a recipient of a
        # higher minor version treats it as the highest it conforms to).
        version = event.http_version
        check_request_line(event.method, event.target, version, self._max_target_length)
        http_version = "1.0" if version == b"1.0" else "1.1"
        pairs = list(event.headers)
        if len(pairs) > self._max_header_count:
            raise HeaderFieldsTooLarge("too many header fields")
        # Step 2: framing must be unambiguous (RFC 9112 6.1, 6.3): never both
        # Content-Length and Transfer-Encoding, never Transfer-Encoding on HTTP/1.0,
        # never more than one Host (RFC 9112 3.2).
        has_length = has_te = False
        hosts = 0
        connection_tokens = b""
        for name, value in pairs:
            if name == b"content-length":
                has_length = True
            elif name == b"transfer-encoding":
                has_te = True
            elif name == b"host":
                # "Host: a, b" is two values in one line: as bad as two lines.
                hosts += 1 + value.count(b",")
            elif name == b"connection":
                connection_tokens += b"," + value.lower()
        if has_length and has_te:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if has_te and http_version == "1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if hosts > 1:
            raise BadRequest("more than one Host header field")
        if hosts == 0 and http_version == "1.1":
            # h11 requires Host for exactly 1.1; 1.2 and later are 1.1 here too.
            raise BadRequest("no Host header field in an HTTP/1.1 request (RFC 9112 3.2)")
        # A server that cannot tunnel answers CONNECT with 501 (RFC 9110 9.3.6, 15.6.2);
        # letting a handler answer 2xx would make h11 switch protocols mid-response.
        if event.method == b"CONNECT":
            raise HTTPError("CONNECT is not supported", status_code=501)
        # Step 3: what h11 smoothed over in the raw bytes: obs-fold, repeated
        # Content-Length fields, and a head over max_header_size that arrived in one
        # read (h11 enforces max_incomplete_event_size only on incomplete heads).
        if head_buf is not None:
            check_raw_head(head_buf, self._max_header_size, has_length)
        # Step 4: a declared body over the limit is refused before any of it is read
        # and before any 100 Continue.
        self._method = event.method
        self._body_received = 0
        self._declared_length = None
        if has_length:
            declared = content_length(pairs)
            if declared > self._max_body_size:
                raise ContentTooLarge("declared body too large")
            self._declared_length = declared
        # h11 keeps HTTP/1.1 connections alive unless told otherwise; HTTP/1.0 ones we
        # keep alive ourselves when asked to (see start_next_cycle).
        self._http10_keep_alive = (
            http_version == "1.0"
            and has_token(connection_tokens, b"keep-alive")
            and not has_token(connection_tokens, b"close")
        )
        # Step 5: a request with no body (no framing header, or Content-Length: 0;
        # RFC 9112 6.3) is complete now. Taking h11's EndOfMessage at once tells the
        # connection the body is done, so it can watch for a vanished client.
        if has_te:
            # h11 has checked that the coding is chunked. Its buffer holds the body
            # bytes received so far; the rest are fed to the framing check as they come.
            chunked = self._chunked = ChunkedFraming(self._max_body_size)
            chunked.feed(self._conn.trailing_data[0])
        else:
            self._chunked = None
            if not self._declared_length:
                self._conn.next_event()
        return RequestHead(event.method, event.target, pairs, http_version)

    def next_body_chunk(
        self,
    ) -> bytes | Literal[_Signal.BODY_INCOMPLETE, _Signal.BODY_END]:
        """Return the next piece of request body, ``BODY_INCOMPLETE``, or ``BODY_END``.

        Raises:
            BadRequest: the body is malformed, or the client closed mid-body.
            ContentTooLarge: a chunked body crossed ``Config.max_body_size``, or a
                chunk-size line announced a chunk that would cross it.
        """
        engine = self._h11
        if self._conn.their_state is not engine.SEND_BODY:
            return BODY_END  # already complete (h11 would only report NEED_DATA or PAUSED)
        chunked = self._chunked
        if chunked is not None:
            refusal = chunked.due_refusal()
            if refusal is not None:
                raise refusal
        try:
            event = self._conn.next_event()
        except engine.RemoteProtocolError as exc:
            raise BadRequest(str(exc)) from exc
        event_type = type(event)
        if event_type is engine.Data:
            data = bytes(event.data)  # type: ignore[union-attr]  # narrowed by event_type
            if chunked is not None and event.chunk_end:  # type: ignore[union-attr]  # as above
                chunked.chunk_ended()
            self._body_received += len(data)
            if self._body_received > self._max_body_size:
                raise ContentTooLarge("body too large")
            return data
        if event_type is engine.EndOfMessage:
            self._chunked = None
            return BODY_END
        if event is engine.NEED_DATA:
            return BODY_INCOMPLETE
        # PAUSED cannot happen before EndOfMessage; ConnectionClosed means EOF mid-body.
        raise BadRequest("connection closed in the middle of a request body")

    @property
    def body_complete(self) -> bool:
        """Whether the whole request body has been received (or there was none)."""
        return self._conn.their_state is not self._h11.SEND_BODY

    @property
    def they_are_waiting_for_100_continue(self) -> bool:
        return self._conn.they_are_waiting_for_100_continue

    def unread_body_forces_close(self, max_drain_size: float) -> bool:
        """Whether the unread rest of the body is too much to drain after responding.

        True when the client still waits for ``100 Continue`` (it may or may not send
        the body: RFC 9110 10.1.1), or when more than ``max_drain_size`` bytes of a
        declared length are left. (A chunked body's size is unknown: the drain after
        the response stops at ``max_drain_size`` and closes then.)
        """
        if self._conn.their_state is not self._h11.SEND_BODY:
            return False
        if self._conn.they_are_waiting_for_100_continue:
            return True
        if self._declared_length is None:
            return False
        return self._declared_length - self._body_received > max_drain_size

    @property
    def body_received(self) -> int:
        """Bytes of the current request's body received so far."""
        return self._body_received

    # --- Sending ---------------------------------------------------------------------

    def informational_continue(self) -> bytes:
        """The bytes of ``100 Continue`` (RFC 9110 15.2.1)."""
        return self._conn.send(self._h11.informational_100) or b""

    def start_response(
        self,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        content_length: int | None,
        *,
        close: bool,
    ) -> tuple[bytes, bool]:
        """Return the bytes of a response head, and whether a body may follow.

        ``content_length`` is the body's length when known; ``None`` streams it
        (chunked on HTTP/1.1, close-delimited on HTTP/1.0). The framing headers are
        ours: a ``transfer-encoding`` from the handler is dropped, a
        ``content-length`` is replaced by the known length. HEAD responses carry the
        GET headers and no body; 1xx, 204 and 304 never carry a body or a
        ``content-length`` (RFC 9110 6.4.1, 8.6).
        """
        out: list[tuple[bytes, bytes]] = []
        has_date = has_server = False
        user_length: bytes | None = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                user_length = value
                continue
            if lowered == b"transfer-encoding":
                continue
            if lowered == b"date":
                has_date = True
            elif lowered == b"server":
                has_server = True
            elif lowered == b"connection" and has_token(value.lower(), b"close"):
                # Ours is added below; h11 decides keep-alive only after it cleans the
                # headers, so it would not merge the two into one field.
                close = True
                continue
            out.append((name, value))
        if not has_date:
            out.append((b"date", date_header()))
        if not has_server and self._server_header is not None:
            out.append((b"server", self._server_header))
        body_allowed = status not in (204, 304) and self._method != b"HEAD"
        if status not in (204, 304):
            if content_length is not None:
                out.append((b"content-length", b"%d" % content_length))
            elif user_length is not None:
                out.append((b"content-length", user_length))
        keep_http10 = self._http10_keep_alive and not close
        if keep_http10 and content_length is None and user_length is None:
            keep_http10 = False  # a close-delimited body ends the connection
        self._http10_keep_alive = keep_http10
        if close:
            out.append((b"connection", b"close"))
        try:
            head = self._conn.send(self._valid_response(status, out)) or b""
        except self._h11.LocalProtocolError as exc:
            raise ResponseFramingError(str(exc)) from exc
        if keep_http10:
            head = _http10_keep_alive_head(head)
        return head, body_allowed

    def send_data(self, data: _Piece) -> list[bytes | _Piece]:
        """Frame a piece of response body (bytes, or a placeholder for ``sendfile``).

        Raises:
            ResponseFramingError: the body runs past its ``content-length``.
        """
        event = self._h11.Data(data=data)  # type: ignore[arg-type]  # h11 frames any len()-able
        try:
            return self._conn.send_with_data_passthrough(event) or []  # type: ignore[return-value]
        except self._h11.LocalProtocolError as exc:
            raise ResponseFramingError(str(exc)) from exc

    def end_response(self) -> bytes:
        """Frame the end of the response body.

        Raises:
            ResponseFramingError: the body ended short of its ``content-length``.
        """
        try:
            return self._conn.send(self._h11.end_of_message) or b""
        except self._h11.LocalProtocolError as exc:
            raise ResponseFramingError(str(exc)) from exc

    def can_send_error_response(self) -> bool:
        return self._conn.our_state in (self._h11.IDLE, self._h11.SEND_RESPONSE)

    def error_response(self, status: int) -> bytes:
        """The bytes of a complete error response with ``Connection: close``.

        The body is the reason phrase only: error pages never carry exception text.
        """
        body = reason_phrase(status) + b"\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        head, body_allowed = self.start_response(status, headers, len(body), close=True)
        if body_allowed:
            head += b"".join(self.send_data(body))
        return head + self.end_response()

    @property
    def can_switch_protocols(self) -> bool:
        """Whether a complete request asked to upgrade and nothing answered it yet."""
        their, ours = self._conn.their_state, self._conn.our_state
        return their is self._h11.MIGHT_SWITCH_PROTOCOL and ours is self._h11.SEND_RESPONSE

    def switch_protocols(self, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        """The ``101`` taking the upgrade (RFC 9110 7.8); HTTP ends with it."""
        out = [*headers, (b"date", date_header())]
        if self._server_header is not None:
            out.append((b"server", self._server_header))
        reason = reason_phrase(101)
        event = self._h11.InformationalResponse(status_code=101, headers=out, reason=reason)
        return self._conn.send(event) or b""

    def switched_data(self) -> bytes:
        """The bytes received past the upgrade request: the new protocol's."""
        return bytes(self._conn.trailing_data[0])

    def send_failed(self) -> None:
        """Tell h11 a write failed, so nothing more is sent on this connection."""
        self._conn.send_failed()

    # --- Between requests ------------------------------------------------------------

    def start_next_cycle(self) -> bool:
        """Get ready for the next request on this connection, if it can be kept alive."""
        conn, engine = self._conn, self._h11
        if conn.our_state is engine.DONE and conn.their_state is engine.DONE:
            conn.start_next_cycle()
            leftover, closed = conn.trailing_data
            self._method = b""
            if leftover[:1] in (b"\r", b"\n"):
                # Empty lines before the next request line are in h11's buffer already,
                # and h11 would refuse them: a fresh h11 gets what follows them.
                self._restart_h11(leftover, closed=closed)
            else:
                self._head_buf = leftover
            return True
        if self._http10_keep_alive and conn.our_state is engine.MUST_CLOSE:
            # h11 never keeps HTTP/1.0 connections alive; we do when the client asked
            # (Connection: keep-alive) and the response had a length. A fresh h11
            # state machine takes over what was received after the request.
            leftover, closed = conn.trailing_data
            if closed:
                return False
            self._restart_h11(leftover, closed=False)
            return True
        return False

    def _valid_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
        """An ``h11.Response`` event for headers that are valid already.

        The handler's headers were checked when its Response was built, ours are made
        valid. ``_parsed=True`` (a private argument of h11's event classes) tells h11 so
        and spares a second regex pass per header (h11 still lower-cases names and
        checks the framing headers); it is how h11 builds the events it parses itself.
        """
        return self._h11.Response(
            status_code=status, headers=headers, reason=reason_phrase(status), _parsed=True
        )


# h11 ends the head with this field when it will close the connection (h11/_connection.py,
# _clean_up_response_headers_for_sending appends it last), which it always does for
# an HTTP/1.0 client. We keep an HTTP/1.0 connection alive when asked by rewriting it:
# the one place that depends on the bytes h11 writes rather than on its API.
_H11_CLOSE_TRAILER: Final = b"Connection: close\r\n\r\n"


def _http10_keep_alive_head(head: bytes) -> bytes:
    if head.endswith(_H11_CLOSE_TRAILER):
        return head[: -len(_H11_CLOSE_TRAILER)] + b"Connection: keep-alive\r\n\r\n"
    return head


def _as_int(value: float) -> int:
    return int(value) if value != float("inf") else 2**62
