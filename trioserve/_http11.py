"""The HTTP/1.1 protocol engine: h11 plus the strict checks h11 leaves to us.

Rules for this module:
1. It is the only server module that imports h11, and it never awaits: bytes go in,
   request heads and body pieces come out; responses go in, bytes come out.
2. Where RFC 9112 allows a lenient and a strict reading, it takes the strict one that
   leaves no room for request smuggling or desync, even where h11 is lenient
   (docs/framing.md lists the rules). h11 merges repeated Content-Length fields and
   unfolds obs-fold lines before we see the parsed head, so those checks look at the
   raw head bytes (see ``_check_raw_head``); h11 takes any byte but LF in a chunk
   extension, so the chunked framing is checked on the raw body bytes as they are fed
   (see ``_ChunkedFraming``).
3. Every refusal is an ``HTTPError`` subclass that knows its status; the connection
   answers it and closes.
4. A check that runs before h11 has parsed what it checks (a line of an incomplete head,
   see ``_HeadLines``; a chunk-size line) follows h11's grammar wherever it is not
   stricter on purpose, and checks in the same order as the complete parse: the same
   bytes get the same answer however the reads split them.
"""

from __future__ import annotations

import enum
import re
import time
from email.utils import formatdate
from typing import Final

import h11

from ._config import Config
from ._errors import (
    BadRequest,
    ContentTooLarge,
    HeaderFieldsTooLarge,
    HTTPError,
    HTTPVersionNotSupported,
    URITooLong,
)
from ._response import reason_phrase

__all__ = ["END", "NEED_DATA", "HTTP11Protocol", "RequestHead"]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
END: Final = _Sentinel("END")

_INFORMATIONAL_100: Final = h11.InformationalResponse(
    status_code=100, headers=[], reason=b"Continue"
)
_END_OF_MESSAGE: Final = h11.EndOfMessage()

# A line break followed by whitespace (obs-fold, RFC 9112 5.2) or by a Content-Length
# field, whose value is captured (RFC 9112 6.3: we refuse even repeated identical
# values, in separate fields or as a list).
_RAW_HEAD_RE: Final = re.compile(
    rb"\n(?:([ \t])|content-length[ \t]*:[ \t]*([^\r\n]*))", re.IGNORECASE
)
# The end of a head, as h11 finds it (it accepts bare LF line ends).
_END_OF_HEAD_RE: Final = re.compile(rb"\n\r?\n")

# A request line and a header field line as h11 matches them (h11/_abnf.py:
# request_line, header_field), for the lines of an incomplete head. h11's field line,
# ``token ":" OWS ( [^\x00\s]+ ( [ \t]+ [^\x00\s]+ )* )? OWS``, accepts exactly the
# lines whose bytes after the colon are neither NUL nor whitespace other than SP and
# HTAB (so a bare CR is refused): matched here as that, without backtracking.
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_REQUEST_LINE_RE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_FIELD_LINE_RE: Final = re.compile(_TOKEN + rb":[^\x00\n\r\x0b\x0c]*")

# Methods are uppercase ASCII letters, "-" and "_": nginx's rule (ngx_http_parse.c,
# sw_method), which every method in the IANA registry meets ("-" for VERSION-CONTROL,
# BASELINE-CONTROL). RFC 9110 9.1 allows any token and makes methods case-sensitive,
# so "get" is not GET but an unknown method; refusing it, and digits, also refuses a
# desync at once: leftover body bytes read as a method ("loGET", "0GET") get 400
# instead of being served as a request. A switch for the lenient reading would be a
# Config field, and so a command-line flag (there is no flag kind for a bool yet).
_METHOD_RE: Final = re.compile(rb"[A-Z_-]+")

# The chunk-size line, RFC 9112 7.1 and 7.1.1:
#   chunk-size [ chunk-ext ] CRLF
#   chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token; chunk-ext-val = token / quoted-string (RFC 9110 5.6.4)
# with at most 16 hex digits: 2**64 - 1 (llhttp and nginx refuse sizes that overflow
# their 64-bit counters; a size that does not fit in 16 digits is never meant). No
# whitespace before the CRLF (h11 allows it; the grammar does not).
_QUOTED_STRING: Final = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_EXT_VAL: Final = rb"(?:" + _TOKEN + rb"|" + _QUOTED_STRING + rb")"
_CHUNK_EXT: Final = rb"[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*" + _CHUNK_EXT_VAL + rb")?"
_CHUNK_LINE_RE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}(?:" + _CHUNK_EXT + rb")*\r\n")
_MAX_CHUNK_SIZE_DIGITS: Final = 16
_HEX_RUN_RE: Final = re.compile(rb"[0-9A-Fa-f]{0,%d}" % (_MAX_CHUNK_SIZE_DIGITS + 1))
# Bytes that are never valid in a chunk-size line: controls but HTAB, and DEL (a CR
# only as the first half of the CRLF; LF ends the line).
_CHUNK_LINE_CTL_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


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

    def __init__(self, config: Config) -> None:
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
        self._head_lines: _HeadLines | None = None
        # Only while a chunked body is read (see _check_head).
        self._chunked: _ChunkedFraming | None = None
        self._method = b""
        self._declared_length: int | None = None
        self._body_received = 0
        self._http10_keep_alive = False

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_size)

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
        return self._conn.their_state is h11.DONE and bool(self._conn.trailing_data[0])

    def next_request(self) -> RequestHead | _Sentinel:
        """Parse the next request head, or return ``NEED_DATA``.

        Raises:
            HTTPError: the head is malformed (400), too large (414, 431), frames its
                body ambiguously (400), or is not HTTP/1.x (505).
        """
        if not self._head_buf:
            return NEED_DATA  # nothing received yet: no need to ask h11
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            # Judge the head's complete lines first, as if they had come one per read,
            # so that a split does not change the answer (rule 4).
            self._head_line_checker().check(self._head_buf)
            raise self._protocol_error(exc) from exc
        if event is h11.NEED_DATA:
            # h11 judges a head only once its blank line has come: a bad request line
            # would wait for header_timeout (408). Each line is judged as it completes.
            self._head_line_checker().check(self._head_buf)
            return NEED_DATA
        if type(event) is not h11.Request:
            # EOF between requests is handled by the connection before asking, so the
            # only other event here is ConnectionClosed after an EOF mid-head.
            raise BadRequest("connection closed in the middle of a request head")
        head_buf = self._head_buf
        self._head_buf = None
        self._head_lines = None
        return self._check_head(event, head_buf)

    def _head_line_checker(self) -> _HeadLines:
        lines = self._head_lines
        if lines is None:
            lines = self._head_lines = _HeadLines(self._max_target_length)
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
        # Step 1: the request line (as _HeadLines judges it in an incomplete head).
        # HTTP/1.2 and later 1.x are HTTP/1.1 to us (RFC 9110 2.5: a recipient of a
        # higher minor version treats it as the highest it conforms to).
        version = event.http_version
        _check_request_line(event.method, event.target, version, self._max_target_length)
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
            _check_raw_head(head_buf, self._max_header_size, has_length)
        # Step 4: a declared body over the limit is refused before any of it is read
        # and before any 100 Continue.
        self._method = event.method
        self._body_received = 0
        self._declared_length = None
        if has_length:
            declared = _content_length(pairs)
            if declared > self._max_body_size:
                raise ContentTooLarge("declared body too large")
            self._declared_length = declared
        # h11 keeps HTTP/1.1 connections alive unless told otherwise; HTTP/1.0 ones we
        # keep alive ourselves when asked to (see start_next_cycle).
        self._http10_keep_alive = (
            http_version == "1.0"
            and _has_token(connection_tokens, b"keep-alive")
            and not _has_token(connection_tokens, b"close")
        )
        # Step 5: a request with no body (no framing header, or Content-Length: 0;
        # RFC 9112 6.3) is complete now. Taking h11's EndOfMessage at once tells the
        # connection the body is done, so it can watch for a vanished client.
        if has_te:
            # h11 has checked that the coding is chunked. Its buffer holds the body
            # bytes received so far; the rest are fed to the framing check as they come.
            chunked = self._chunked = _ChunkedFraming(self._max_body_size)
            chunked.feed(self._conn.trailing_data[0])
        else:
            self._chunked = None
            if not self._declared_length:
                self._conn.next_event()
        return RequestHead(event.method, event.target, pairs, http_version)

    def next_body_chunk(self) -> bytes | _Sentinel:
        """Return the next piece of request body, ``NEED_DATA``, or ``END``.

        Raises:
            BadRequest: the body is malformed, or the client closed mid-body.
            ContentTooLarge: a chunked body crossed ``Config.max_body_size``, or a
                chunk-size line announced a chunk that would cross it.
        """
        if self._conn.their_state is not h11.SEND_BODY:
            return END  # already complete (h11 would only report NEED_DATA or PAUSED)
        chunked = self._chunked
        if chunked is not None:
            refusal = chunked.due_refusal()
            if refusal is not None:
                raise refusal
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(str(exc)) from exc
        event_type = type(event)
        if event_type is h11.Data:
            data = bytes(event.data)  # type: ignore[union-attr]  # narrowed by event_type
            if chunked is not None and event.chunk_end:  # type: ignore[union-attr]  # as above
                chunked.chunk_ended()
            self._body_received += len(data)
            if self._body_received > self._max_body_size:
                raise ContentTooLarge("body too large")
            return data
        if event_type is h11.EndOfMessage:
            self._chunked = None
            return END
        if event is h11.NEED_DATA:
            return NEED_DATA
        # PAUSED cannot happen before EndOfMessage; ConnectionClosed means EOF mid-body.
        raise BadRequest("connection closed in the middle of a request body")

    @property
    def body_complete(self) -> bool:
        """Whether the whole request body has been received (or there was none)."""
        return self._conn.their_state is not h11.SEND_BODY

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
        if self._conn.their_state is not h11.SEND_BODY:
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
        return self._conn.send(_INFORMATIONAL_100) or b""

    def start_response(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
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
            elif lowered == b"connection" and _has_token(value.lower(), b"close"):
                # Ours is added below; h11 decides keep-alive only after it cleans the
                # headers, so it would not merge the two into one field.
                close = True
                continue
            out.append((name, value))
        if not has_date:
            out.append((b"date", _date_cache.get()))
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
        # Every header here is valid already: the handler's were checked when its
        # Response was built, ours are made valid. ``_parsed=True`` tells h11 so and
        # spares a second regex pass per header (h11 still lower-cases names and
        # checks the framing headers); it is how h11 builds the events it parses.
        event = h11.Response(
            status_code=status, headers=out, reason=reason_phrase(status), _parsed=True
        )
        head = self._conn.send(event) or b""
        if keep_http10:
            head = _http10_keep_alive_head(head)
        return head, body_allowed

    def send_data(self, data: bytes) -> list[bytes]:
        """Frame a piece of response body (raises ``h11.LocalProtocolError`` on overrun)."""
        return self._conn.send_with_data_passthrough(h11.Data(data=data)) or []

    def end_response(self) -> bytes:
        """Frame the end of the response body (raises on a short Content-Length body)."""
        return self._conn.send(_END_OF_MESSAGE) or b""

    def can_send_error_response(self) -> bool:
        return self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

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

    def send_failed(self) -> None:
        """Tell h11 a write failed, so nothing more is sent on this connection."""
        self._conn.send_failed()

    # --- Between requests ------------------------------------------------------------

    def start_next_cycle(self) -> bool:
        """Get ready for the next request on this connection, if it can be kept alive."""
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            leftover, closed = conn.trailing_data
            self._method = b""
            if leftover[:1] in (b"\r", b"\n"):
                # Empty lines before the next request line are in h11's buffer already:
                # a fresh h11 state machine (a new cycle has no state to lose) gets
                # what follows them.
                self._conn = self._new_h11()
                self._head_buf = b""
                self.receive_data(leftover)
                if closed:
                    self._conn.receive_data(b"")
            else:
                self._head_buf = leftover
            return True
        if self._http10_keep_alive and conn.our_state is h11.MUST_CLOSE:
            # h11 never keeps HTTP/1.0 connections alive; we do when the client asked
            # (Connection: keep-alive) and the response had a length. A fresh h11
            # state machine takes over what was received after the request.
            leftover, closed = conn.trailing_data
            if closed:
                return False
            self._conn = self._new_h11()
            self._head_buf = b""
            self._method = b""
            if leftover:  # receive_data(b"") would tell the new h11 the peer sent EOF
                self.receive_data(leftover)
            return True
        return False


class _HeadLines:
    """Judges each line of an incomplete request head once, as soon as it is complete.

    Lifetime: from a read that leaves a head incomplete to the parse of that head.
    Searching resumes where the last search stopped and each line is matched once, so
    a head trickled one byte per read costs linear time. The lines are matched as h11
    will match them, request line first (rule 4); h11's 431 on an oversized incomplete
    head still stops the buffer from growing.
    """

    __slots__ = ("_line_start", "_max_target_length", "_searched")

    def __init__(self, max_target_length: float) -> None:
        self._max_target_length = max_target_length
        self._line_start = 0  # where the first line not yet judged begins
        self._searched = 0  # no line of the head ends before this offset unjudged

    def check(self, buf: bytes | bytearray | None) -> None:
        """Judge the lines of ``buf`` (the head so far) completed since the last call.

        Raises:
            HTTPError: as ``_check_request_line``, or 400 for a malformed field line.
        """
        if not buf:
            return
        start = self._line_start
        end = buf.find(b"\n", self._searched)
        while end != -1:
            # h11 splits a head at LF and drops one CR before it.
            line = buf[start : end - 1 if end > start and buf[end - 1] == 0x0D else end]
            if not line:
                return  # the end of a complete head: the rest is h11's to judge
            if start == 0:
                match = _REQUEST_LINE_RE.fullmatch(line)
                if match is None:
                    raise BadRequest("malformed request line (RFC 9112 3)")
                method, target, version = match.groups()
                _check_request_line(method, target, version, self._max_target_length)
            elif _FIELD_LINE_RE.fullmatch(line) is None:
                if line[:1] in (b" ", b"\t"):
                    raise BadRequest("obsolete line folding in a header (RFC 9112 5.2)")
                raise BadRequest("malformed header field line (RFC 9112 5)")
            start = end + 1
            end = buf.find(b"\n", start)
        self._line_start = start
        self._searched = len(buf)


def _check_request_line(
    method: bytes, target: bytes, version: bytes, max_target_length: float
) -> None:
    # Only HTTP/1.x is spoken here (the HTTP/2 preface "PRI * HTTP/2.0" parses as a
    # request line and ends here too). RFC 9110 15.6.6.
    if not version.startswith(b"1."):
        raise HTTPVersionNotSupported(f"HTTP/{version.decode('ascii')} not supported")
    if len(target) > max_target_length:
        raise URITooLong("request target too long")
    # isalpha() and isupper() on bytes: all of A-Z (the common case, without a regex).
    if not (method.isalpha() and method.isupper()) and _METHOD_RE.fullmatch(method) is None:
        raise BadRequest("method not made of uppercase letters, '-' and '_'")


class _ChunkPhase(enum.Enum):
    SIZE_LINE = "chunk-size line"
    DATA = "chunk data"
    DATA_END = "CRLF after chunk data"
    DONE = "last chunk seen, or refused"


class _ChunkedFraming:
    """Checks a chunked request body's framing on its raw bytes, as they are fed.

    Lifetime: from the parse of a chunked request's head to its last-chunk line; the
    trailer section after it is h11's (h11 matches its lines as header fields).

    h11 matches a chunk-size line against ``chunk-size (";" .*)? OWS CRLF`` with up to
    20 hex digits and drops the extensions, so a bare CR or a NUL in an extension, or a
    size of 2**64 or more, passes it. This follows the same bytes and checks each line
    against the grammar of RFC 9112 7.1 (``_CHUNK_LINE_RE``), refusing at the first
    byte that can never be valid (a control byte, a 17th hex digit), and refuses a
    chunk that would take the body over ``max_body_size`` when its size line arrives
    (413, as a declared Content-Length over it).

    What this relies on in h11 (h11/_readers.py, ChunkedReader): h11 gets the same
    bytes in the same order, and reads a size line up to CRLF, then exactly that many
    bytes of data, then exactly CRLF, until a size of 0; so both see the same lines.
    It marks the last ``Data`` of each chunk with ``chunk_end``.

    A refusal is kept (bytes are fed where no error is expected) and falls due where
    it was found in the body: once h11 has handed out the data of every chunk before
    it, and before h11 parses further. So the handler sees the same body bytes before
    the refusal however the reads split the body (rule 4).
    """

    __slots__ = (
        "_allowance",
        "_checked",
        "_chunks",
        "_ended",
        "_footer",
        "_line",
        "_phase",
        "_refusal",
        "_remaining",
    )

    def __init__(self, max_body_size: float) -> None:
        self._phase = _ChunkPhase.SIZE_LINE
        self._line = bytearray()  # the chunk-size line so far, when it spans reads
        self._checked = 0  # bytes of _line already searched for control bytes
        self._remaining = 0  # chunk data bytes still to come
        self._footer = b""  # the part of the CRLF after chunk data still to come
        self._allowance = max_body_size  # body bytes the chunks so far leave room for
        self._chunks = 0  # chunks whose size line passed (the last chunk aside)
        self._ended = 0  # chunks whose data h11 has handed out in full
        self._refusal: HTTPError | None = None

    def due_refusal(self) -> HTTPError | None:
        """The refusal to raise before h11 parses more of the body, if any."""
        if self._refusal is not None and self._ended >= self._chunks:
            return self._refusal
        return None

    def chunk_ended(self) -> None:
        """h11 handed out the last data of a chunk."""
        self._ended += 1

    def feed(self, data: bytes) -> None:
        """Follow ``data``, the next bytes of the body (or of what follows it)."""
        if self._phase is _ChunkPhase.DONE or not data:
            return
        try:
            self._feed(data)
        except HTTPError as exc:
            self._refusal = exc
            self._phase = _ChunkPhase.DONE

    def _feed(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            phase = self._phase
            if phase is _ChunkPhase.DATA:
                taken = min(self._remaining, size - pos)
                pos += taken
                self._remaining -= taken
                if not self._remaining:
                    self._phase = _ChunkPhase.DATA_END
                    self._footer = b"\r\n"
            elif phase is _ChunkPhase.DATA_END:
                footer = self._footer
                got = data[pos : pos + len(footer)]
                if not footer.startswith(got):
                    raise BadRequest("chunk data not followed by CRLF (RFC 9112 7.1)")
                pos += len(got)
                self._footer = footer[len(got) :]
                if not self._footer:
                    self._phase = _ChunkPhase.SIZE_LINE
            elif phase is _ChunkPhase.SIZE_LINE:
                end = data.find(b"\n", pos)
                if end == -1:
                    self._line += data[pos:]
                    self._check_partial_line()
                    return
                if self._line:
                    line: bytes | bytearray = self._line + data[pos : end + 1]
                    self._line = bytearray()
                    self._checked = 0
                else:
                    line = data[pos : end + 1]
                pos = end + 1
                self._check_line(line)
            else:
                return  # the trailer section, then what follows the request

    def _check_size(self, line: bytes | bytearray) -> int:
        """The size a chunk-size line starts with (complete or not), or a refusal.

        The same checks in the same order for a partial and a complete line, so the
        answer does not depend on where the reads split it (rule 4).
        """
        run = _HEX_RUN_RE.match(line).end()  # type: ignore[union-attr]  # {0,n} always matches
        size = int(line[: min(run, _MAX_CHUNK_SIZE_DIGITS)], 16) if run else 0
        if size > self._allowance:
            raise ContentTooLarge("a chunk would take the body over max_body_size")
        if run > _MAX_CHUNK_SIZE_DIGITS:
            raise BadRequest("chunk size of more than 16 hex digits (2**64 or more)")
        if run < len(line) and (run == 0 or line[run] not in b" \t;\r"):
            raise BadRequest("malformed chunk size (RFC 9112 7.1)")
        return size

    def _check_partial_line(self) -> None:
        line = self._line
        self._check_size(line)
        # Only the bytes new since the last search, and the one before them: a CR that
        # ended the last read is fine only if this read begins with the LF.
        bad = _CHUNK_LINE_CTL_RE.search(line, max(self._checked - 1, 0))
        if bad is not None and not (bad.start() == len(line) - 1 and line[-1] == 0x0D):
            raise BadRequest("control byte in a chunk-size line (RFC 9112 7.1.1)")
        self._checked = len(line)

    def _check_line(self, line: bytes | bytearray) -> None:
        size = self._check_size(line)
        if _CHUNK_LINE_RE.fullmatch(line) is None:
            raise BadRequest("malformed chunk-size line (RFC 9112 7.1.1)")
        self._allowance -= size
        if size:
            self._phase = _ChunkPhase.DATA
            self._remaining = size
            self._chunks += 1
        else:
            self._phase = _ChunkPhase.DONE


def _check_raw_head(buf: bytes | bytearray, max_header_size: int, has_length: bool) -> None:
    # The common case costs two substring scans: no line starts with whitespace, no
    # Content-Length to count (h11 shows one if the head had any), and the bytes
    # received, head and all, are within the limit.
    if len(buf) <= max_header_size and not has_length and b"\n " not in buf and b"\n\t" not in buf:
        return
    end = _END_OF_HEAD_RE.search(buf)
    head = buf if end is None else memoryview(buf)[: end.end()]
    if len(head) > max_header_size:
        raise HeaderFieldsTooLarge("request head too large")
    lengths = 0
    for match in _RAW_HEAD_RE.finditer(head):
        if match.group(1) is not None:
            raise BadRequest("obsolete line folding in a header (RFC 9112 5.2)")
        lengths += 1
        # h11 accepts a list of identical values ("5, 5"); RFC 9110 8.6 lets us refuse
        # it, and we do: one field, one number.
        if not match.group(2).rstrip(b" \t").isdigit():
            raise BadRequest("Content-Length is not a single number (RFC 9112 6.3)")
    if lengths > 1:
        raise BadRequest("more than one Content-Length field (RFC 9112 6.3)")


def _content_length(pairs: list[tuple[bytes, bytes]]) -> int:
    for name, value in pairs:
        if name == b"content-length":
            return int(value)
    raise AssertionError("no content-length")


def _has_token(tokens: bytes, token: bytes) -> bool:
    return any(part.strip() == token for part in tokens.split(b","))


# h11 always ends the head with this field when it will close the connection.
_H11_CLOSE_TRAILER: Final = b"Connection: close\r\n\r\n"


def _http10_keep_alive_head(head: bytes) -> bytes:
    if head.endswith(_H11_CLOSE_TRAILER):
        return head[: -len(_H11_CLOSE_TRAILER)] + b"Connection: keep-alive\r\n\r\n"
    return head


def _as_int(value: float) -> int:
    return int(value) if value != float("inf") else 2**62
