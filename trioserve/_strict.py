"""The strict checks of RFC 9112 that h11 leaves to us, on raw bytes.

Rules for this module:
1. It never imports h11 and never awaits: it looks at bytes the protocol module
   (``_http11``) hands it, and raises an ``HTTPError`` subclass that knows its status.
2. A check that runs before h11 has parsed what it checks (a line of an incomplete
   head, see ``HeadLines``; a chunk-size line, see ``ChunkedFraming``) follows h11's
   grammar wherever it is not stricter on purpose, and checks in the same order as the
   complete parse: the same bytes get the same answer however the reads split them.
   What each check relies on in h11 is said where it does.
3. docs/framing.md lists the rules and what each defends against.
"""

from __future__ import annotations

import enum
import re
from typing import Final

from ._errors import (
    BadRequest,
    ContentTooLarge,
    HeaderFieldsTooLarge,
    HTTPError,
    HTTPVersionNotSupported,
    URITooLong,
)

__all__ = [
    "ChunkedFraming",
    "HeadLines",
    "check_raw_head",
    "check_request_line",
    "content_length",
    "has_token",
]

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


class HeadLines:
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
            HTTPError: as ``check_request_line``, or 400 for a malformed field line.
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
                check_request_line(method, target, version, self._max_target_length)
            elif _FIELD_LINE_RE.fullmatch(line) is None:
                if line[:1] in (b" ", b"\t"):
                    raise BadRequest("obsolete line folding in a header (RFC 9112 5.2)")
                raise BadRequest("malformed header field line (RFC 9112 5)")
            start = end + 1
            end = buf.find(b"\n", start)
        self._line_start = start
        self._searched = len(buf)


def check_request_line(
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


class ChunkedFraming:
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


def check_raw_head(buf: bytes | bytearray, max_header_size: int, has_length: bool) -> None:
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


def content_length(pairs: list[tuple[bytes, bytes]]) -> int:
    for name, value in pairs:
        if name == b"content-length":
            return int(value)
    raise AssertionError("no content-length")


def has_token(tokens: bytes, token: bytes) -> bool:
    return any(part.strip() == token for part in tokens.split(b","))
