"""Helpers for the WebSocket tests: a real wsproto client handshake and raw frames."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import h11
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.extensions import PerMessageDeflate

from trioserve._ws_protocol import WebSocketProtocol, accept_response


def request_headers(
    *, subprotocols: Sequence[str] = (), deflate: bool = False
) -> tuple[WSConnection, bytes, list[tuple[bytes, bytes]]]:
    """A wsproto client, its upgrade request's bytes and the headers h11 parses from it."""
    client = WSConnection(ConnectionType.CLIENT)
    extensions = [PerMessageDeflate()] if deflate else []
    data = client.send(
        Request(
            host="example.com",
            target="/ws",
            subprotocols=list(subprotocols),
            extensions=extensions,
        )
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return client, data, list(event.headers)


def handshake(
    *,
    max_size: float = 1024 * 1024,
    deflate: bool = False,
    server_deflate: bool = True,
    subprotocols: Sequence[str] = (),
    subprotocol: str | None = None,
) -> tuple[WSConnection, WebSocketProtocol, bytes]:
    """A client and a server protocol that completed a real opening handshake."""
    client, _, headers = request_headers(subprotocols=subprotocols, deflate=deflate)
    response, protocol = accept_response(
        headers, subprotocol, deflate=server_deflate, max_size=max_size
    )
    client.receive_data(response)
    [accepted] = list(client.events())
    assert isinstance(accepted, AcceptConnection)
    return client, protocol, response


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv1: bool = False,
) -> bytes:
    """One frame as a client sends it (masked unless told otherwise)."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked, unfragmented, uncompressed server frame."""
    frames = []
    while data:
        opcode = data[0] & 0x0F
        length = data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        assert not data[1] & 0x80, "a server frame is never masked"
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()
