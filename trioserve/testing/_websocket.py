"""A WebSocket client for handlers served in memory (wsproto's client, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from .._config import Config
from .._handler import Handler
from .._server import Server
from .._websocket import WebSocketClosed
from ._client import _server_for
from ._streams import PipeStream, stream_pair

__all__ = ["WebSocketClient", "WebSocketRejected", "open_websocket"]

_RECEIVE = 65536


class WebSocketRejected(Exception):
    """The server answered the handshake with an HTTP response, not a ``101``."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        super().__init__(f"the server refused the WebSocket with HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body


class WebSocketClient:
    """The client end of a WebSocket (see :func:`open_websocket`).

    Faults, in virtual time as the HTTP ones: a peer that never answers pings
    (``answer_pings = False``), one that stalls in the middle of a frame
    (:meth:`send_stalled`), one that never reads (do not call :meth:`receive`: the
    in-memory buffers are bounded like a socket's, so the server's writes block), and
    one that vanishes (:meth:`reset`). ``stream`` is the raw in-memory stream.
    Pings are answered only while :meth:`receive` runs, as a real client's event loop
    does while it reads.
    """

    def __init__(self, stream: PipeStream, conn: WSConnection, subprotocol: str | None) -> None:
        self.stream = stream
        self.subprotocol = subprotocol
        self.answer_pings = True
        #: How the WebSocket closed (the server's code), once it has.
        self.close_code: int | None = None
        self.close_reason = ""
        self._conn = conn
        self._parts: list[str | bytes] = []
        self._closed = trio.Event()

    async def send(self, message: str | bytes) -> None:
        """Send one message: ``str`` as text, ``bytes`` as binary."""
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        await self.stream.send_all(self._conn.send(event))

    async def send_stalled(self, message: str | bytes, *, after: int, duration: float) -> None:
        """Send one message's frame but stall ``duration`` seconds after its first
        ``after`` bytes (a peer that stops in the middle of a frame); stops quietly if
        the server closes meanwhile."""
        event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        data = self._conn.send(event)
        try:
            await self.stream.send_all(data[:after])
            await trio.sleep(duration)
            await self.stream.send_all(data[after:])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def reset(self) -> None:
        """Vanish without a close frame: the server's next read or write fails, as
        after a TCP reset (its side of the WebSocket ends with 1006)."""
        self.stream.reset()

    async def receive(self) -> str | bytes:
        """The next message from the server.

        Raises:
            trioserve.WebSocketClosed: the server closed (its code and reason), or the
                connection ended without a close frame (1006).
        """
        while True:
            for event in self._conn.events():
                message = await self._handle(event)
                if message is not None:
                    return message
            if self.close_code is not None:
                raise WebSocketClosed(self.close_code, self.close_reason)
            try:
                data = await self.stream.receive_some(_RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.close_code = self.close_code or 1006
                raise WebSocketClosed(self.close_code, self.close_reason)
            self._conn.receive_data(data)

    async def _handle(self, event: object) -> str | bytes | None:
        if isinstance(event, Message):
            self._parts.append(event.data)
            if not event.message_finished:
                return None
            parts, self._parts = self._parts, []
            if isinstance(event, TextMessage):
                return "".join(str(part) for part in parts)
            return b"".join(part for part in parts if isinstance(part, bytes))
        if (
            isinstance(event, Ping)
            and self.answer_pings
            and self._conn.state is ConnectionState.OPEN
        ):
            await self._send_quietly(self._conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            self.close_code, self.close_reason = event.code, event.reason or ""
            if self._conn.state is ConnectionState.REMOTE_CLOSING:
                await self._send_quietly(self._conn.send(event.response()))
        return None

    async def _send_quietly(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def close(self, code: int = 1000, reason: str = "") -> int | None:
        """Send a close frame (if the WebSocket is open) and read until the server's;
        returns its close code (1006 if the connection ended without one)."""
        if self._conn.state is ConnectionState.OPEN:
            await self._send_quietly(self._conn.send(CloseConnection(code=code, reason=reason)))
        while True:
            try:
                await self.receive()
            except WebSocketClosed:
                return self.close_code


@asynccontextmanager
async def open_websocket(
    handler_or_server: Handler | Server,
    path: str = "/",
    *,
    subprotocols: Sequence[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    deflate: bool = False,
    config: Config | None = None,
    buffer_size: int = 65536,
) -> AsyncIterator[WebSocketClient]:
    """Open a WebSocket to a handler served in memory, through the real engine.

    Works in virtual time (``trio.testing.MockClock``). On exit a WebSocket still open
    is closed (1000) and the connection task is waited for.

    Example::

        async with trioserve.testing.open_websocket(handler, "/echo") as ws:
            await ws.send("hi")
            assert await ws.receive() == "hi"

    Raises:
        WebSocketRejected: the handler (or the handshake check) answered with HTTP.
    """
    server = _server_for(handler_or_server, config)
    client_end, server_end = stream_pair(buffer_size)
    conn = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host="testserver",
        target=path,
        subprotocols=list(subprotocols),
        extensions=[PerMessageDeflate()] if deflate else [],
        extra_headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
    )
    refused: WebSocketRejected | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, server_end)
        try:
            await client_end.send_all(conn.send(request))
            try:
                client = await _handshake(client_end, conn)
            except WebSocketRejected as exc:
                refused = exc  # raised below, outside the nursery: as itself
            else:
                yield client
                await client.close()
        finally:
            await client_end.aclose()
    if refused is not None:
        raise refused


async def _handshake(stream: PipeStream, conn: WSConnection) -> WebSocketClient:
    rejected: RejectConnection | None = None
    body = b""
    while True:
        data = await stream.receive_some(_RECEIVE)
        conn.receive_data(data or None)
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                return WebSocketClient(stream, conn, event.subprotocol)
            if isinstance(event, RejectConnection):
                rejected = event
                if not event.has_body:
                    raise WebSocketRejected(event.status_code, list(event.headers), b"")
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished and rejected is not None:
                    raise WebSocketRejected(rejected.status_code, list(rejected.headers), body)
        if not data:
            raise trio.BrokenResourceError("the server closed during the handshake")
