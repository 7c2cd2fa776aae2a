"""The wsproto wall: the opening handshake's checks and answer, frames in and out."""

from __future__ import annotations

import tracemalloc

import pytest
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from trioserve._ws_protocol import (
    CloseReceived,
    HandshakeProblem,
    Message,
    Pong,
    ProtocolFailure,
    WebSocketProtocol,
    accept_response,
    accept_token,
    check_close_code,
    handshake_problem,
    is_upgrade,
)
from trioserve._ws_protocol import Ping as PingEvent

from .ws_helpers import close_payload, frame, handshake, parse_server_frames, request_headers

VALID = [
    (b"host", b"example.com"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]


def replaced(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
    headers = [(n, v) for n, v in VALID if n != name]
    return headers if value is None else [*headers, (name, value)]


# --- Opening handshake ----------------------------------------------------------------


def test_accept_token_is_rfc_6455s_example() -> None:
    # RFC 6455 1.3.
    assert accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("method", "version", "headers", "status"),
    [
        ("GET", "1.1", VALID, None),
        ("GET", "1.1", replaced(b"upgrade", b"WebSocket"), None),
        ("GET", "1.1", replaced(b"connection", b"keep-alive, Upgrade"), None),
        ("POST", "1.1", VALID, 400),
        ("GET", "1.0", VALID, 400),
        ("GET", "1.1", replaced(b"upgrade", None), 400),
        ("GET", "1.1", replaced(b"upgrade", b"h2c"), 400),
        ("GET", "1.1", replaced(b"connection", None), 400),
        ("GET", "1.1", replaced(b"connection", b"keep-alive"), 400),
        ("GET", "1.1", replaced(b"sec-websocket-key", None), 400),
        ("GET", "1.1", replaced(b"sec-websocket-key", b"not base64 at all!!!!!!!"), 400),
        ("GET", "1.1", replaced(b"sec-websocket-key", b"AAAAAAAAAAAAAAAAAAAA"), 400),  # 15 bytes
        ("GET", "1.1", [*VALID, (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")], 400),
        ("GET", "1.1", replaced(b"sec-websocket-version", None), 400),
        ("GET", "1.1", replaced(b"sec-websocket-version", b"8"), 426),
        ("GET", "1.1", [*VALID, (b"sec-websocket-version", b"8")], 426),
    ],
)
def test_handshake_problems(
    method: str, version: str, headers: list[tuple[bytes, bytes]], status: int | None
) -> None:
    problem = handshake_problem(method, version, headers)
    if status is None:
        assert problem is None
        return
    assert problem is not None
    assert problem.status == status
    assert problem.reason
    if status == 426:
        # RFC 6455 4.4: the versions this server speaks, so that the client may retry.
        assert problem.headers == ((b"sec-websocket-version", b"13"),)


def test_handshake_problem_is_a_value() -> None:
    assert handshake_problem("PUT", "1.1", VALID) == HandshakeProblem(
        400, "a WebSocket handshake is a GET, not PUT"
    )


def test_is_upgrade() -> None:
    assert is_upgrade(VALID)
    assert is_upgrade([(b"upgrade", b"foo, WebSocket")])
    assert not is_upgrade([(b"upgrade", b"h2c")])
    assert not is_upgrade([(b"host", b"websocket")])


def test_a_real_clients_handshake_is_valid_and_accepted() -> None:
    _, _, headers = request_headers(subprotocols=["chat", "superchat"])
    assert handshake_problem("GET", "1.1", headers) is None
    response, protocol = accept_response(headers, "superchat", deflate=True, max_size=1024)
    head = response.decode()
    assert head.startswith("HTTP/1.1 101 Switching Protocols\r\n")
    assert head.endswith("\r\n\r\n")
    assert "sec-websocket-protocol: superchat\r\n" in head
    assert "sec-websocket-extensions" not in head  # not offered
    assert not protocol.deflate


def test_deflate_is_agreed_when_offered_and_on() -> None:
    client, protocol, response = handshake(deflate=True)
    assert protocol.deflate
    assert b"sec-websocket-extensions: permessage-deflate" in response
    # Compressed both ways.
    data = client.send(TextMessage(data="hello " * 100))
    assert len(data) < 100
    protocol.receive_data(data)
    assert list(protocol.events()) == [Message("hello " * 100)]
    client.receive_data(protocol.send_message("hi " * 100))
    [event] = list(client.events())
    assert isinstance(event, TextMessage)
    assert event.data == "hi " * 100


def test_deflate_is_not_agreed_when_off() -> None:
    _, protocol, response = handshake(deflate=True, server_deflate=False)
    assert not protocol.deflate
    assert b"sec-websocket-extensions" not in response


def test_a_bad_deflate_offer_is_declined() -> None:
    headers = [
        *VALID,
        (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits=x"),
    ]
    response, protocol = accept_response(headers, None, deflate=True, max_size=1024)
    assert b"sec-websocket-extensions" not in response
    assert not protocol.deflate


def test_accept_refuses_an_unoffered_subprotocol_and_bad_headers() -> None:
    with pytest.raises(ValueError, match="not offered"):
        accept_response(VALID, "chat", deflate=False, max_size=1024)
    with pytest.raises(ValueError, match="malformed"):
        accept_response(VALID, None, [(b"x-a", b"b\r\nx: y")], deflate=False, max_size=1024)
    with pytest.raises(ValueError, match="malformed"):
        accept_response(VALID, None, [(b"bad name", b"v")], deflate=False, max_size=1024)
    with pytest.raises(ValueError, match="sets"):
        accept_response(VALID, None, [(b"Sec-WebSocket-Accept", b"x")], deflate=False, max_size=1)
    response, _ = accept_response(VALID, None, [(b"X-Extra", b"1")], deflate=False, max_size=1)
    assert b"\r\nx-extra: 1\r\n" in response


# --- Frames -----------------------------------------------------------------------------


def feed(protocol: WebSocketProtocol, data: bytes, *, bytewise: bool) -> list[object]:
    if not bytewise:
        protocol.receive_data(data)
        return list(protocol.events())
    events: list[object] = []
    for i in range(len(data)):
        protocol.receive_data(data[i : i + 1])
        events.extend(protocol.events())
    return events


@pytest.mark.parametrize("bytewise", [False, True])
def test_text_and_binary_messages_and_fragments(bytewise: bool) -> None:
    client, protocol, _ = handshake()
    data = client.send(TextMessage(data="héllo"))
    data += client.send(BytesMessage(data=b"\x00\xff"))
    data += client.send(TextMessage(data="frag", message_finished=False))
    data += client.send(Ping(payload=b"in between"))  # control frames may interleave
    data += client.send(TextMessage(data="mént", message_finished=True))
    assert feed(protocol, data, bytewise=bytewise) == [
        Message("héllo"),
        Message(b"\x00\xff"),
        PingEvent(b"in between"),
        Message("fragmént"),
    ]


def test_messages_sent_reach_the_client() -> None:
    client, protocol, _ = handshake()
    client.receive_data(protocol.send_message("text") + protocol.send_message(b"bin"))
    client.receive_data(protocol.send_ping(b"p") + protocol.send_pong(b"q"))
    events = list(client.events())
    assert [type(e).__name__ for e in events] == ["TextMessage", "BytesMessage", "Ping", "Pong"]
    with pytest.raises(ValueError, match="125"):
        protocol.send_ping(b"x" * 126)


@pytest.mark.parametrize("bytewise", [False, True])
def test_a_message_of_max_size_passes_one_byte_more_is_1009(bytewise: bool) -> None:
    client, protocol, _ = handshake(max_size=100)
    assert feed(protocol, client.send(BytesMessage(data=b"x" * 100)), bytewise=bytewise) == [
        Message(b"x" * 100)
    ]
    # Fragments count together; text counts UTF-8 bytes (é is two).
    data = client.send(TextMessage(data="é" * 40, message_finished=False))
    data += client.send(TextMessage(data="abcdefghijklmnopqrstu", message_finished=True))
    assert feed(protocol, data, bytewise=bytewise) == [ProtocolFailure(1009, "message too big")]
    # Nothing more is received after a failure.
    protocol.receive_data(client.send(BytesMessage(data=b"late")))
    assert list(protocol.events()) == []


def test_a_huge_declared_frame_fails_at_max_size_without_buffering_it() -> None:
    _, protocol, _ = handshake(max_size=1000)
    head = frame(0x2, b"")[:1] + bytes([0x80 | 127]) + (2**40).to_bytes(8, "big") + b"\0" * 4
    protocol.receive_data(head + b"\0" * 600)
    assert list(protocol.events()) == []
    protocol.receive_data(b"\0" * 600)
    assert list(protocol.events()) == [ProtocolFailure(1009, "message too big")]


def test_a_deflate_bomb_is_refused_without_inflating_it() -> None:
    max_size = 1024 * 1024
    client, protocol, _ = handshake(deflate=True, max_size=max_size)
    bomb = client.send(BytesMessage(data=bytes(64 * 1024 * 1024)))  # 64 MiB of zeros
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        protocol.receive_data(bomb)
        events = list(protocol.events())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events == [ProtocolFailure(1009, "message too big")]
    assert peak < 4 * max_size


def test_compressed_messages_up_to_max_size_pass_fragmented_with_a_ping_between() -> None:
    client, protocol, _ = handshake(deflate=True, max_size=3000)
    data = client.send(BytesMessage(data=b"a" * 1000, message_finished=False))
    data += client.send(Ping(payload=b"!"))
    data += client.send(BytesMessage(data=b"b" * 2000, message_finished=True))
    data += client.send(TextMessage(data="c" * 3000))
    assert protocol.deflate
    assert feed(protocol, data, bytewise=False) == [
        PingEvent(b"!"),
        Message(b"a" * 1000 + b"b" * 2000),
        Message("c" * 3000),
    ]
    assert feed(protocol, client.send(TextMessage(data="d" * 3001)), bytewise=False) == [
        ProtocolFailure(1009, "message too big")
    ]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x1, b"hello", mask=False), 1002),  # RFC 6455 5.1: a client masks
        (frame(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8 in text
        (frame(0x1, b"ok", fin=False) + frame(0x1, b"again"), 1002),  # no continuation
        (frame(0x0, b"orphan"), 1002),  # a continuation of nothing
        (frame(0x3, b"x"), 1002),  # a reserved opcode
        (frame(0x9, b"x" * 126), 1002),  # a control frame over 125 bytes
        (frame(0x9, b"p", fin=False), 1002),  # a fragmented control frame
        (frame(0x1, b"x", rsv1=True), 1002),  # RSV1 without an extension
        (frame(0x8, b"\x03"), 1002),  # a close payload of one byte
        (frame(0x8, close_payload(999)), 1002),  # a close code out of range
        (frame(0x8, close_payload(1006)), 1002),  # a code that is never sent
        (frame(0x8, b"\x03\xe8\xff"), 1007),  # a close reason that is not UTF-8
    ],
)
def test_protocol_failures_carry_their_close_code(data: bytes, code: int) -> None:
    _, protocol, _ = handshake()
    protocol.receive_data(data)
    [failure] = list(protocol.events())
    assert isinstance(failure, ProtocolFailure)
    assert failure.code == code


def test_control_frames_and_the_close() -> None:
    client, protocol, _ = handshake()
    data = client.send(Ping(payload=b"a")) + frame(0xA, b"b")
    data += client.send(CloseConnection(code=1000, reason="bye"))
    protocol.receive_data(data + frame(0x1, b"after the close"))
    assert list(protocol.events()) == [PingEvent(b"a"), Pong(b"b"), CloseReceived(1000, "bye")]
    protocol.receive_data(frame(0x1, b"ignored"))
    assert list(protocol.events()) == []
    # Our echo; then nothing more may be sent.
    assert parse_server_frames(protocol.send_close(1000)) == [(0x8, close_payload(1000))]
    with pytest.raises(RuntimeError):
        protocol.send_message("too late")


def test_a_close_without_code_is_1005_and_echoed_without_code() -> None:
    _, protocol, _ = handshake()
    protocol.receive_data(frame(0x8, b""))
    assert list(protocol.events()) == [CloseReceived(1005, "")]
    assert parse_server_frames(protocol.send_close(1005)) == [(0x8, b"")]


def test_our_close_then_theirs() -> None:
    _, protocol, _ = handshake()
    assert parse_server_frames(protocol.send_close(4001, "custom")) == [
        (0x8, close_payload(4001, "custom"))
    ]
    with pytest.raises(RuntimeError):
        protocol.send_close(1000)
    protocol.receive_data(frame(0x1, b"still coming") + frame(0x8, close_payload(4001)))
    assert list(protocol.events()) == [Message("still coming"), CloseReceived(4001, "")]


def test_end_of_stream_ends_the_events() -> None:
    _, protocol, _ = handshake()
    protocol.receive_data(frame(0x1, b"par", fin=False))
    protocol.receive_data(None)
    assert list(protocol.events()) == []
    protocol.receive_data(frame(0x1, b"more"))
    assert list(protocol.events()) == []


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1014, 3000, 4999])
def test_close_codes_that_may_be_sent(code: int) -> None:
    check_close_code(code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000])
def test_close_codes_that_may_not_be_sent(code: int) -> None:
    with pytest.raises(ValueError, match=str(code)):
        check_close_code(code)
