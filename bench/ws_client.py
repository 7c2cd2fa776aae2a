"""A WebSocket echo load generator: raw sockets, pre-masked frames, one selector.

Opens ``--connections`` WebSocket connections to ``ws://127.0.0.1:PORT/ws``; each
sends one message, waits for its whole echo, and sends the next, in a loop: for
``--warmup`` seconds (not counted), then for ``--seconds`` (measured). Each
connection then closes with 1000 and waits for the server's close frame.

Every echo is checked whole: the frame header (FIN, no RSV bits, not masked, the
message's opcode, fragments allowed), its length, and every payload byte against
what was sent. Anything else (a wrong byte, a close frame or EOF from the server
during the run, a refused handshake) is a protocol error: the client prints it to
stderr and exits with status 1. It offers no extension (so no compression) and no
subprotocol.

Frames are built once per run: the client must mask what it sends (RFC 6455 5.3),
and does it once, with one mask key, so sending a message costs one ``send``. It
prints one JSON line: messages/s, p50/p99/max round trip (from the first byte sent
to the last byte of the echo), and the CPU the client used during the measurement
(user + system time over wall time; near 1.0 would mean the client is the
bottleneck).

Usage: ``python bench/ws_client.py --port 8000 --size 16 --kind text --seconds 3``
"""

import argparse
import base64
import hashlib
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from wrk import LOAD_CPU

HOST = "127.0.0.1"
PATH = "/ws"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
NORMAL_CLOSE = struct.pack("!H", 1000)
RECEIVE_SIZE = 262144
HEAD_LIMIT = 65536
HANDSHAKE_TIMEOUT_SECONDS = 10.0
CLOSE_TIMEOUT_SECONDS = 5.0
WARMUP_SECONDS = 1.0
CLIENT_GRACE_SECONDS = 30.0
NS_PER_MS = 1e6
READ_WRITE = selectors.EVENT_READ | selectors.EVENT_WRITE


class ProtocolError(Exception):
    """The server broke the WebSocket protocol or the echo."""


@dataclass(frozen=True)
class WsResult:
    """One client run against one server: echo rate, round trips, client CPU."""

    size: int
    kind: str
    connections: int
    seconds: float
    messages: int
    messages_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    client_cpu: float
    stalled_connections: int
    unclean_closes: int


class WsClientError(RuntimeError):
    """The client failed: a protocol error, a refused handshake, or a crash."""


def run_ws_client(port: int, size: int, kind: str, connections: int, seconds: float) -> WsResult:
    """Run this client pinned to LOAD_CPU against ``port`` and return its report."""
    command = [
        "taskset", "-c", LOAD_CPU, sys.executable, __file__, "--port", str(port),
        "--size", str(size), "--kind", kind, "--connections", str(connections),
        "--seconds", str(seconds), "--warmup", str(WARMUP_SECONDS),
    ]  # fmt: skip
    timeout = WARMUP_SECONDS + seconds + CLIENT_GRACE_SECONDS
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise WsClientError(f"ws_client did not finish within {timeout} s") from error
    if completed.returncode != 0:
        output = (completed.stderr + completed.stdout).strip()
        raise WsClientError(f"ws_client exited {completed.returncode}: {output[-600:]}")
    return WsResult(**json.loads(completed.stdout.splitlines()[-1]))


# --- frames -------------------------------------------------------------------------


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte ``key`` (RFC 6455 5.3), as one big int."""
    length = len(payload)
    repeated = (key * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return masked.to_bytes(length, "big")


def client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final, masked frame."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + key + mask_bytes(payload, key)


def payload_for(size: int, kind: str) -> bytes:
    """``size`` bytes: printable ASCII for text (valid UTF-8), every byte value for binary."""
    if kind == "text":
        pattern = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    else:
        pattern = bytes(range(256))
    return (pattern * (size // len(pattern) + 1))[:size]


# --- one connection -----------------------------------------------------------------


def handshake(port: int) -> tuple[socket.socket, bytes]:
    """Open a connection and upgrade it; return it and any bytes read past the 101."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((HOST, port), timeout=HANDSHAKE_TIMEOUT_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(request)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk or len(received) > HEAD_LIMIT:
            raise ProtocolError(f"no complete handshake response: {received[:300]!r}")
        received += chunk
    head, rest = received.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        raise ProtocolError(f"handshake refused: {received[:300]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    if headers.get(b"sec-websocket-accept") != accept:
        raise ProtocolError(f"wrong Sec-WebSocket-Accept: {head!r}")
    if b"sec-websocket-extensions" in headers:
        raise ProtocolError(f"an extension nobody offered: {head!r}")
    sock.setblocking(False)
    return sock, rest


class Connection:
    """One WebSocket: sends the message, checks the echo, records the round trip."""

    def __init__(self, sock: socket.socket, buffered: bytes, client: "Client") -> None:
        self.sock = sock
        self.client = client
        self.buffer = bytearray(buffered)
        self.pending: memoryview | None = None
        self.sent_at = 0
        self.offset = -1  # bytes of the current echo checked; -1: no data frame yet
        self.completed = 0  # echoes completed in the measurement window
        self.closing = False
        self.closed = False

    def send_message(self) -> None:
        self.sent_at = time.perf_counter_ns()
        self.offset = -1
        self.write(self.client.frame)

    def write(self, data: bytes) -> None:
        if self.pending is not None:
            self.pending = memoryview(bytes(self.pending) + data)
            return
        sent = self.sock.send(data)
        if sent < len(data):
            self.pending = memoryview(data)[sent:]
            self.client.selector.modify(self.sock, READ_WRITE, self)

    def flush(self) -> None:
        assert self.pending is not None
        sent = self.sock.send(self.pending)
        self.pending = self.pending[sent:] if sent < len(self.pending) else None
        if self.pending is None:
            self.client.selector.modify(self.sock, selectors.EVENT_READ, self)

    def read(self) -> None:
        data = self.sock.recv(RECEIVE_SIZE)
        if not data:
            raise ProtocolError("the server closed the connection without a close frame")
        self.buffer += data
        while self.parse_frame():
            pass

    def parse_frame(self) -> bool:
        """Handle one complete frame at the front of the buffer; False if none is."""
        buffer = self.buffer
        if len(buffer) < 2:
            return False
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise ProtocolError(f"RSV bits set without an extension: {first:#04x}")
        if second & 0x80:
            raise ProtocolError("the server masked a frame")
        length, start = second & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                return False
            (length,), start = struct.unpack_from("!H", buffer, 2), 4
        elif length == 127:
            if len(buffer) < 10:
                return False
            (length,), start = struct.unpack_from("!Q", buffer, 2), 10
        end = start + length
        if len(buffer) < end:
            return False
        payload = bytes(buffer[start:end])
        del buffer[:end]
        self.handle_frame(bool(first & 0x80), first & 0x0F, payload)
        return True

    def handle_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == PING:
            self.write(client_frame(PONG, payload, self.client.key))
        elif opcode == PONG:
            pass
        elif opcode == CLOSE:
            if not self.closing:
                raise ProtocolError(f"the server closed the WebSocket: {payload!r}")
            self.closed = True
        elif opcode in (TEXT, BINARY, CONTINUATION):
            self.check_data(fin, opcode, payload)
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}")

    def check_data(self, fin: bool, opcode: int, payload: bytes) -> None:
        expected = self.client.payload
        if self.offset < 0:
            if opcode != self.client.opcode:
                raise ProtocolError(f"echo with opcode {opcode:#x}, sent {self.client.opcode:#x}")
            self.offset = 0
        elif opcode != CONTINUATION:
            raise ProtocolError(f"a new message (opcode {opcode:#x}) inside a fragmented one")
        end = self.offset + len(payload)
        if payload != expected[self.offset : end]:
            raise ProtocolError(f"wrong echo bytes between {self.offset} and {end}")
        self.offset = end
        if not fin:
            return
        if end != len(expected):
            raise ProtocolError(f"short echo: {end} bytes of {len(expected)}")
        self.client.echoed(self)


# --- the run ------------------------------------------------------------------------


class Client:
    """All connections on one selector; each always has one message in flight."""

    def __init__(self, port: int, size: int, kind: str, connections: int) -> None:
        self.key = os.urandom(4)
        self.payload = payload_for(size, kind)
        self.opcode = TEXT if kind == "text" else BINARY
        self.frame = client_frame(self.opcode, self.payload, self.key)
        self.close_frame = client_frame(CLOSE, NORMAL_CLOSE, self.key)
        self.selector = selectors.DefaultSelector()
        self.connections = [Connection(*handshake(port), self) for _ in range(connections)]
        self.measure_from = self.measure_until = 0
        self.round_trips_ns: list[int] = []
        self.stopping = False

    def echoed(self, connection: Connection) -> None:
        now = time.perf_counter_ns()
        if self.measure_from <= now < self.measure_until:
            self.round_trips_ns.append(now - connection.sent_at)
            connection.completed += 1
        if self.stopping:
            connection.closing = True
            connection.write(self.close_frame)
        else:
            connection.send_message()

    def run(self, warmup: float, seconds: float) -> dict[str, object]:
        for connection in self.connections:
            self.selector.register(connection.sock, selectors.EVENT_READ, connection)
            connection.send_message()
        start = time.perf_counter_ns()
        self.measure_from = start + int(warmup * 1e9)
        self.measure_until = self.measure_from + int(seconds * 1e9)
        self._loop(self.measure_from)
        cpu_before, wall_before = _cpu_seconds(), time.perf_counter()
        self._loop(self.measure_until)
        cpu = (_cpu_seconds() - cpu_before) / (time.perf_counter() - wall_before)
        self.stopping = True
        self._close()
        return self._report(seconds, cpu)

    def _loop(self, until_ns: int) -> None:
        while (left := until_ns - time.perf_counter_ns()) > 0:
            for key, events in self.selector.select(left / 1e9):
                connection: Connection = key.data
                if events & selectors.EVENT_WRITE:
                    connection.flush()
                if events & selectors.EVENT_READ:
                    connection.read()

    def _close(self) -> None:
        """Let each in-flight echo finish, send a close, wait for the server's."""
        deadline = time.perf_counter() + CLOSE_TIMEOUT_SECONDS
        while self.selector.get_map() and time.perf_counter() < deadline:
            for key, events in self.selector.select(deadline - time.perf_counter()):
                connection: Connection = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        connection.flush()
                    if events & selectors.EVENT_READ:
                        connection.read()
                except (ProtocolError, OSError):
                    if not connection.closing:
                        raise
                    self.selector.unregister(connection.sock)  # ended without its close
                    continue
                if connection.closed:
                    self.selector.unregister(connection.sock)
        for connection in self.connections:
            connection.sock.close()

    def _report(self, seconds: float, cpu: float) -> dict[str, object]:
        trips = sorted(self.round_trips_ns)

        def percentile_ms(share: float) -> float | None:
            if not trips:
                return None
            return trips[min(len(trips) - 1, int(share * len(trips)))] / NS_PER_MS

        return {
            "size": len(self.payload),
            "kind": "text" if self.opcode == TEXT else "binary",
            "connections": len(self.connections),
            "seconds": seconds,
            "messages": len(trips),
            "messages_per_second": len(trips) / seconds,
            "p50_ms": percentile_ms(0.50),
            "p99_ms": percentile_ms(0.99),
            "max_ms": trips[-1] / NS_PER_MS if trips else None,
            "client_cpu": round(cpu, 3),
            "stalled_connections": sum(1 for c in self.connections if not c.completed),
            "unclean_closes": sum(1 for c in self.connections if not c.closed),
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=16, help="message size in bytes")
    parser.add_argument("--kind", choices=("text", "binary"), default="text")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured")
    parser.add_argument("--warmup", type=float, default=WARMUP_SECONDS, help="not counted")
    args = parser.parse_args()
    try:
        client = Client(args.port, args.size, args.kind, args.connections)
        report = client.run(args.warmup, args.seconds)
    except (ProtocolError, OSError) as error:
        sys.exit(f"ws_client: {type(error).__name__}: {error}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
