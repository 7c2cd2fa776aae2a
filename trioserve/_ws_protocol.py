"""The WebSocket protocol engine: wsproto, behind a wall as h11 is behind ``_http11``.

Rules for this module:
1. It is the only module that imports wsproto, and it never awaits: bytes go in,
   trioserve's own event values come out; messages and control frames go in, bytes
   come out. Nothing of wsproto's (events, enums, exceptions) leaves it.
2. The opening handshake is HTTP and h11 has parsed it: here it is only checked
   (RFC 6455 4.2.1) and answered (4.2.2). wsproto's low-level ``Connection`` takes
   over at the first frame, never its ``H11Handshake`` (a second HTTP parser).
3. Every buffer is bounded by ``max_size``: a message is assembled here from its
   fragments and refused with 1009 as soon as its size passes the limit, and a
   compressed one is inflated at most one byte past the limit (a deflate bomb costs
   ``max_size``, never its decompressed size).
4. A peer's close frame and a protocol failure are told apart here (wsproto reports
   both as ``CloseConnection``): the first is ``CloseReceived``, the second
   ``ProtocolFailure`` with the close code to send (1002, 1007, 1009).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, TextMessage
from wsproto.events import Ping as WsprotoPing
from wsproto.events import Pong as WsprotoPong
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import LocalProtocolError

__all__ = [
    "CloseReceived",
    "HandshakeProblem",
    "Message",
    "Ping",
    "Pong",
    "ProtocolFailure",
    "WebSocketEvent",
    "WebSocketProtocol",
    "accept_headers",
    "accept_response",
    "accept_token",
    "check_close_code",
    "handshake_problem",
    "is_upgrade",
]

#: RFC 6455 1.3: appended to Sec-WebSocket-Key before hashing into Sec-WebSocket-Accept.
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: RFC 6455 4.1: the one version this server speaks.
_VERSION: Final = b"13"
#: RFC 9110 5.6.2 token, for header names in a 101 response.
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Header fields the 101 sets itself: a handler may not add a second one.
_OURS: Final = frozenset(
    (
        b"upgrade",
        b"connection",
        b"sec-websocket-accept",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
    )
)
#: Codes a close frame may carry (RFC 6455 7.4.1 and IANA's registry; 3000-4999 are
#: for libraries and applications). 1005, 1006 and 1015 are never sent.
_SENDABLE: Final = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)


# --- Events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message: ``str`` for a text one, ``bytes`` for a binary one."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer sent a ping; a pong with the same payload is owed (RFC 6455 5.5.2)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer sent a pong."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer sent a close frame (1005 when it had no code). If we had not sent one,
    our echo is owed: :meth:`WebSocketProtocol.send_close` with the same code."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolFailure:
    """The peer broke the protocol: send a close with ``code`` and end the connection
    (RFC 6455 7.1.7, "Fail the WebSocket Connection"). Nothing more is received."""

    code: int
    reason: str


WebSocketEvent = Message | Ping | Pong | CloseReceived | ProtocolFailure


# --- Opening handshake ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeProblem:
    """Why a request is not a valid opening handshake, and the HTTP answer to it:
    400, or 426 with ``Sec-WebSocket-Version: 13`` for a version we do not speak
    (RFC 6455 4.2.2 and 4.4)."""

    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def is_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks for a WebSocket upgrade (``Upgrade: websocket``), cheaply:
    names are lowercase, as h11 gives them."""
    for name, value in headers:
        if name == b"upgrade" and _has_token(value, b"websocket"):
            return True
    return False


def handshake_problem(
    method: str, http_version: str, headers: Sequence[tuple[bytes, bytes]]
) -> HandshakeProblem | None:
    """Check an upgrade request against RFC 6455 4.2.1, step by step; ``None`` if valid.

    Step 1: a GET in HTTP/1.1 or later (h11 has checked the Host field already).
    Step 2: ``Upgrade`` lists the token ``websocket`` and ``Connection`` the token
    ``upgrade``, both case-insensitive.
    Step 3: exactly one ``Sec-WebSocket-Key``, the base64 of 16 bytes.
    Step 4: ``Sec-WebSocket-Version`` is 13; another version gets 426 and the version
    we speak, so that the client may retry with it (4.4).
    """
    if method != "GET":
        return HandshakeProblem(400, f"a WebSocket handshake is a GET, not {method}")
    if http_version != "1.1":
        return HandshakeProblem(400, f"a WebSocket handshake needs HTTP/1.1, not {http_version}")
    fields = _fields(headers)
    if not any(_has_token(value, b"websocket") for value in fields.get(b"upgrade", ())):
        return HandshakeProblem(400, "the Upgrade header does not name websocket")
    if not any(_has_token(value, b"upgrade") for value in fields.get(b"connection", ())):
        return HandshakeProblem(400, "the Connection header does not name upgrade")
    keys = fields.get(b"sec-websocket-key", [])
    if len(keys) != 1:
        return HandshakeProblem(400, "there must be exactly one Sec-WebSocket-Key header")
    if not _valid_key(keys[0]):
        return HandshakeProblem(400, "Sec-WebSocket-Key is not the base64 of 16 bytes")
    versions = fields.get(b"sec-websocket-version", [])
    if not versions:
        return HandshakeProblem(400, "the Sec-WebSocket-Version header is missing")
    if versions != [_VERSION]:
        return HandshakeProblem(
            426,
            "unsupported Sec-WebSocket-Version: this server speaks 13",
            ((b"sec-websocket-version", _VERSION),),
        )
    return None


def accept_headers(
    headers: Sequence[tuple[bytes, bytes]],
    subprotocol: str | None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    deflate: bool,
    max_size: float,
) -> tuple[list[tuple[bytes, bytes]], WebSocketProtocol]:
    """The header fields of the 101 that accepts a valid handshake (RFC 6455 4.2.2), and
    the protocol object for the frames that follow.

    ``headers`` are the request's (checked by :func:`handshake_problem`). A
    ``subprotocol`` must be one the client offered; permessage-deflate (RFC 7692) is
    agreed when ``deflate`` is on and the client offered it.

    Raises:
        ValueError: the subprotocol was not offered, or an extra header is malformed or
            one that the handshake sets itself.
    """
    fields = _fields(headers)
    [key] = fields[b"sec-websocket-key"]
    response = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", accept_token(key)),
    ]
    if subprotocol is not None:
        if subprotocol not in offered_subprotocols(headers):
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        response.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
    extensions: list[Extension] = []
    if deflate:
        agreed = _agree_deflate(fields.get(b"sec-websocket-extensions", ()), max_size)
        if agreed is not None:
            extension, header = agreed
            extensions.append(extension)
            response.append((b"sec-websocket-extensions", header))
    for name, value in extra_headers:
        lowered = name.lower()
        if not _TOKEN.fullmatch(name) or any(c in value for c in b"\r\n\0"):
            raise ValueError(f"malformed response header {name!r}: {value!r}")
        if lowered in _OURS:
            raise ValueError(f"the WebSocket handshake sets {name.decode()!r} itself")
        response.append((lowered, value))
    return response, WebSocketProtocol(max_size=max_size, extensions=extensions)


def offered_subprotocols(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The subprotocols a handshake offers (``Sec-WebSocket-Protocol``), in its order."""
    return [
        token.strip().decode("latin-1")
        for name, value in headers
        if name == b"sec-websocket-protocol"
        for token in value.split(b",")
        if token.strip()
    ]


def accept_response(
    headers: Sequence[tuple[bytes, bytes]],
    subprotocol: str | None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    deflate: bool,
    max_size: float,
) -> tuple[bytes, WebSocketProtocol]:
    """:func:`accept_headers` serialized: the bytes of the whole 101 response."""
    fields, protocol = accept_headers(
        headers, subprotocol, extra_headers, deflate=deflate, max_size=max_size
    )
    lines = [b"HTTP/1.1 101 Switching Protocols"]
    lines.extend(name + b": " + value for name, value in fields)
    return b"\r\n".join(lines) + b"\r\n\r\n", protocol


def accept_token(key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def _agree_deflate(
    values: Sequence[bytes], max_size: float
) -> tuple[_BoundedDeflate, bytes] | None:
    """The first permessage-deflate offer we can take (RFC 7692 5: the server picks
    one of the client's offers, in its order, or none), configured, and the header."""
    for value in values:
        for offer in value.split(b","):
            text = offer.strip().decode("latin-1")
            if text.split(";", 1)[0].strip() != PerMessageDeflate.name:
                continue
            extension = _BoundedDeflate(max_size)
            try:
                params = extension.accept(text)
            except ValueError:  # a window size that is not a number
                continue
            if isinstance(params, str):
                name = PerMessageDeflate.name.encode()
                return extension, name + b"; " + params.encode() if params else name
    return None


def _fields(headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value.strip())
    return fields


def _has_token(value: bytes, token: bytes) -> bool:
    return any(part.strip().lower() == token for part in value.split(b","))


def _valid_key(key: bytes) -> bool:
    if len(key) != 24:  # 16 bytes are 24 base64 characters, "==" included
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


# --- Frames -----------------------------------------------------------------------------


class WebSocketProtocol:
    """One WebSocket's protocol state, server side, after the opening handshake.

    Receiving: :meth:`receive_data` feeds bytes (``None`` at the end of the stream);
    :meth:`events` returns what they completed. Sending: :meth:`send_message`,
    :meth:`send_ping`, :meth:`send_pong` and :meth:`send_close` return the bytes to
    write, which must be written in the order they were made (a compressed frame
    depends on the ones before it).
    """

    __slots__ = ("_conn", "_ended", "_max_size", "_parts", "_size", "deflate")

    def __init__(self, *, max_size: float, extensions: Sequence[Extension] = ()) -> None:
        self._conn = Connection(ConnectionType.SERVER, extensions=list(extensions))
        self._max_size = max_size
        self._parts: list[str | bytes] = []  # the fragments of the message in progress
        self._size = 0  # its size so far, in bytes (UTF-8 for text)
        self._ended = False  # a failure, a close frame or the end of the stream was seen
        #: Whether permessage-deflate was agreed.
        self.deflate = any(isinstance(ext, PerMessageDeflate) for ext in extensions)

    def receive_data(self, data: bytes | bytearray | None) -> None:
        """Feed bytes from the stream; ``None`` (or ``b""``) means it ended. Bytes after
        a close frame or a failure are ignored (RFC 6455 5.5.1: nothing follows a close)."""
        if self._ended:
            return
        if not data:
            self._ended = True
            # RFC 6455 7.1.5: a connection that ends without a close frame has the
            # close code 1006.
            self._parts.clear()
            return
        self._conn.receive_data(bytes(data) if isinstance(data, bytearray) else data)

    def events(self) -> Iterator[WebSocketEvent]:
        """What the bytes fed so far complete, in order, parsed lazily: a frame is
        parsed only when the event before it has been taken, so a close frame that
        follows a message not yet handled has not closed the protocol yet (a reply to
        that message can still be sent). After a ``CloseReceived`` or a
        ``ProtocolFailure`` there are no more events."""
        conn = self._conn
        for event in conn.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                data = event.data
                if data:
                    if isinstance(data, str):
                        size = len(data) if data.isascii() else len(data.encode())
                    else:
                        data = bytes(data)
                        size = len(data)
                    self._size += size
                    if self._size > self._max_size:
                        yield self._fail(1009, "message too big")
                        return
                    self._parts.append(data)
                if event.message_finished:
                    message = Message(_join(self._parts, text=isinstance(event, TextMessage)))
                    self._parts.clear()
                    self._size = 0
                    yield message
            elif isinstance(event, WsprotoPing):
                yield Ping(bytes(event.payload))
            elif isinstance(event, WsprotoPong):
                yield Pong(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                # wsproto reports a close frame and a parse failure alike; only a close
                # frame moves its state on (to REMOTE_CLOSING, or CLOSED after ours).
                if conn.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                    self._ended = True
                    yield CloseReceived(int(event.code), event.reason or "")
                    return
                reason = "message too big" if event.code == 1009 else event.reason or ""
                yield self._fail(int(event.code), reason)
                return

    def _fail(self, code: int, reason: str) -> ProtocolFailure:
        self._ended = True
        self._parts.clear()
        return ProtocolFailure(code, reason)

    def send_message(self, data: str | bytes) -> bytes:
        """A whole text (``str``) or binary (``bytes``) message, as one frame.

        Raises:
            RuntimeError: a close frame was sent or received: no more messages.
        """
        if isinstance(data, str):
            return self._send(TextMessage(data=data))
        return self._send(BytesMessage(data=data))

    def send_ping(self, payload: bytes = b"") -> bytes:
        """A ping frame (payload at most 125 bytes)."""
        return self._send(WsprotoPing(payload=_control(payload)))

    def send_pong(self, payload: bytes = b"") -> bytes:
        """A pong frame (payload at most 125 bytes)."""
        return self._send(WsprotoPong(payload=_control(payload)))

    def send_close(self, code: int, reason: str = "") -> bytes:
        """Our close frame: ``code`` 1005 sends one without a code (the echo of a close
        that had none); a reason is cut to fit 123 bytes of UTF-8.

        Raises:
            ValueError: a code that may not be sent.
            RuntimeError: our close frame was already sent.
        """
        if code == 1005:
            return self._send(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
        check_close_code(code)
        return self._send(CloseConnection(code=code, reason=reason or None))

    def _send(self, event: Event) -> bytes:
        try:
            return self._conn.send(event)
        except LocalProtocolError as exc:
            raise RuntimeError(f"cannot send now: {exc}") from exc


def check_close_code(code: int) -> None:
    """Raise ``ValueError`` unless ``code`` may be sent in a close frame: 1000-1003 and
    1007-1014 as registered (RFC 6455 7.4.1, IANA), or 3000-4999 (libraries and
    applications). 1005, 1006 and 1015 only describe a close; they are never sent."""
    if code not in _SENDABLE and not (isinstance(code, int) and 3000 <= code <= 4999):
        raise ValueError(f"{code!r} is not a close code that may be sent")


def _control(payload: bytes) -> bytes:
    if len(payload) > 125:
        raise ValueError("a control frame's payload is at most 125 bytes (RFC 6455 5.5)")
    return payload


def _join(parts: list[str | bytes], *, text: bool) -> str | bytes:
    if text:
        return "".join(part for part in parts if isinstance(part, str))
    return b"".join(part for part in parts if isinstance(part, bytes))


class _BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate, with two changes:

    1. Inflating stops one byte past the room left under ``max_size`` in the message
       (zlib's ``max_length``), so a deflate bomb costs ``max_size``, never its full
       size; past it the message fails with 1009.
    2. A control frame between the fragments of a compressed message leaves the
       message's compression alone (wsproto forgets it, and inflates nothing of the
       fragments that follow; RFC 7692 6.1 allows the interleaving).
    """

    def __init__(self, max_size: float) -> None:
        super().__init__()
        self._max_size = max_size
        self._inflated = 0  # bytes inflated so far in the message in progress

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._inbound_is_compressible = False
            return RsvBits(True, False, False)
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not fin or not self._inbound_is_compressible:
            return None  # a control frame, or a fragment before the last
        if not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        # RFC 7692 7.2.2: the sender dropped the 4 bytes of an empty stored block that
        # ends each message; they go back in before inflating the rest.
        data = self._inflate(b"\x00\x00\xff\xff")
        if isinstance(data, CloseReason):
            return data
        if self.client_no_context_takeover:
            self._decompressor = None
        self._inbound_compressed = None
        self._inflated = 0
        return data

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        decompressor = self._decompressor
        assert decompressor is not None
        room = self._max_size - self._inflated
        try:
            if math.isinf(room):
                out = decompressor.decompress(data)
            else:
                out = decompressor.decompress(data, int(room) + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._max_size or decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out
