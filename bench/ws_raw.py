"""The raw trio WebSocket echo: a limit, not a peer.

A trio socket loop that answers the opening handshake by hand and echoes each
frame it receives, unmasked, with no protocol library: no wsproto, no UTF-8
check of text, no fragment assembly, no close handshake beyond echoing the close
frame and hanging up. What remains is what every trio WebSocket server pays: the
socket loop, finding frame boundaries and unmasking the payload (as one big int,
the cheapest way in pure Python, and how wsproto does it). Its rate also shows
how fast the load generator (ws_client.py) can go.

Any request that is not an upgrade gets ``Hello, world!`` and is closed, so the
benchmark can see that the server is up.

Usage: ``python bench/ws_raw.py --port 8000``
"""

import argparse
import base64
import functools
import hashlib
import struct

import trio

HOST = "127.0.0.1"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECEIVE_SIZE = 262144
HEAD_LIMIT = 65536
CLOSE = 0x8
HELLO = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n"
    b"connection: close\r\n\r\nHello, world!"
)


def unmask(payload: bytes, key: bytes) -> bytes:
    length = len(payload)
    repeated = (key * (length // 4 + 1))[:length]
    plain = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return plain.to_bytes(length, "big")


def server_header(first: int, length: int) -> bytes:
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def accept_response(head: bytes) -> bytes | None:
    """The 101 for an upgrade request head; None if it is not one."""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    key = headers.get(b"sec-websocket-key")
    if headers.get(b"upgrade", b"").lower() != b"websocket" or key is None:
        return None
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


async def handle(stream: trio.SocketStream) -> None:
    try:
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer and len(buffer) < HEAD_LIMIT:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            buffer += data
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        response = accept_response(head)
        if response is None:
            await stream.send_all(HELLO)
            return
        await stream.send_all(response)
        await echo_frames(stream, bytearray(rest))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def echo_frames(stream: trio.SocketStream, buffer: bytearray) -> None:
    """Echo every complete masked frame, unmasked; return after a close frame."""
    while True:
        while (frame := _next_frame(buffer)) is not None:
            first, payload = frame
            await stream.send_all(server_header(first, len(payload)) + payload)
            if first & 0x0F == CLOSE:
                return
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return
        buffer += data


def _next_frame(buffer: bytearray) -> tuple[int, bytes] | None:
    """Take the first complete frame out of ``buffer``: its first byte and payload."""
    if len(buffer) < 2:
        return None
    length, start = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        (length,), start = struct.unpack_from("!H", buffer, 2), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        (length,), start = struct.unpack_from("!Q", buffer, 2), 10
    end = start + 4 + length
    if len(buffer) < end:
        return None
    first = buffer[0]
    payload = unmask(bytes(buffer[start + 4 : end]), bytes(buffer[start : start + 4]))
    del buffer[:end]
    return first, payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(functools.partial(trio.serve_tcp, handle, args.port, host=HOST))


if __name__ == "__main__":
    main()
