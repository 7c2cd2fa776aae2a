"""An in-memory client for handlers, and raw connections for fault injection.

No sockets: a server connection task serves one end of an in-memory stream pair and
the client (driven by a real h11 client state machine) talks on the other, so tests
run under ``trio.testing.MockClock`` in virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import h11
import trio

from .._config import Config
from .._handler import Handler
from .._server import Server
from ._responses import TestResponse, _ResponseAssembler, read_response
from ._streams import PipeStream, stream_pair

__all__ = ["Client", "open_client", "open_connection"]


HeaderPairs = Iterable[tuple[str | bytes, str | bytes]]


class Client:
    """Sends requests to a server over in-memory connections (see :func:`open_client`).

    One connection is kept alive across requests, as a browser would; a new one is
    opened when the server closes it.
    """

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self._nursery = nursery
        self._stream: PipeStream | None = None
        self._conn: h11.Connection | None = None
        self.connections_opened = 0

    async def get(self, path: str, *, headers: HeaderPairs = ()) -> TestResponse:
        """``GET path``."""
        return await self.request("GET", path, headers=headers)

    async def post(
        self, path: str, *, headers: HeaderPairs = (), body: bytes | str = b""
    ) -> TestResponse:
        """``POST path`` with ``body``."""
        return await self.request("POST", path, headers=headers, body=body)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: HeaderPairs = (),
        body: bytes | str = b"",
    ) -> TestResponse:
        """Send one request and return the whole response.

        ``Host`` and ``Content-Length`` are added unless given.

        Raises:
            trio.BrokenResourceError: the server closed (or reset) the connection
                without a complete response.
            ValueError: the server's answer is not a valid HTTP/1.1 response.
        """
        data = body.encode("utf-8") if isinstance(body, str) else body
        pairs = [(_b(name), _b(value)) for name, value in headers]
        names = {name.lower() for name, _ in pairs}
        if b"host" not in names:
            pairs.insert(0, (b"host", b"testserver"))
        if data and b"content-length" not in names and b"transfer-encoding" not in names:
            pairs.append((b"content-length", b"%d" % len(data)))
        stream, conn = await self._connection()
        request = h11.Request(method=method, target=path, headers=pairs)
        await stream.send_all(conn.send(request) or b"")
        if data:
            await stream.send_all(conn.send(h11.Data(data=data)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return await read_response(stream, conn, _ResponseAssembler())

    async def _connection(self) -> tuple[PipeStream, h11.Connection]:
        if self._stream is not None and self._conn is not None:
            if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
                self._conn.start_next_cycle()
                return self._stream, self._conn
            await self._stream.aclose()
        client_end, server_end = stream_pair()
        self._nursery.start_soon(self.server.serve_connection, server_end)
        self.connections_opened += 1
        self._stream = client_end
        self._conn = h11.Connection(h11.CLIENT)
        return self._stream, self._conn

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None


@asynccontextmanager
async def open_client(
    handler_or_server: Handler | Server, config: Config | None = None
) -> AsyncIterator[Client]:
    """Serve a handler in memory and yield a :class:`Client` to call it with.

    Args:
        handler_or_server: a handler, served by a new ``Server(handler, config)``; or a
            :class:`trioserve.Server`, served as it is (its handler and config).
        config: the new server's config (only with a handler).

    Example::

        async def test_hello():
            async with trioserve.testing.open_client(handler) as client:
                response = await client.get("/")
            assert response.status == 200
            assert response.body == b"Hello, world!"

    ``client.server`` is the :class:`trioserve.Server` behind it (for
    ``client.server.statistics()``). On exit the client's connection is closed and
    the server's connection tasks are waited for.

    Raises:
        TypeError: ``config`` was given with a ``Server`` (it has its own).
    """
    server = _server_for(handler_or_server, config)
    async with trio.open_nursery() as nursery:
        client = Client(server, nursery)
        try:
            yield client
        finally:
            await client.aclose()


@asynccontextmanager
async def open_connection(
    handler_or_server: Handler | Server,
    config: Config | None = None,
    *,
    server: Server | None = None,
    buffer_size: int = 65536,
    wrap: Callable[[PipeStream], trio.abc.Stream] | None = None,
) -> AsyncIterator[PipeStream]:
    """Serve one in-memory connection and yield its client end.

    Send any bytes with ``await stream.send_all(...)`` and read the raw answer with
    ``await stream.receive_some()``; it returns ``b""`` once the server has closed.

    Args:
        handler_or_server: a handler, served by a new ``Server(handler, config)``; or a
            :class:`trioserve.Server`, served as it is (its handler and config), to
            read its statistics, shut it down, or serve several connections with it.
        config: the new server's config (only with a handler).
        server: the older spelling, ``open_connection(handler, server=server)``: still
            served as ``open_connection(server)``; ``handler`` must be its handler.
        buffer_size: bytes each direction buffers, as a socket would: a client that
            stops reading blocks the server's writes once this much is unread.
        wrap: wraps the server's end before it is served, e.g.
            ``lambda s: FailAfter(s, 100)``.

    Example::

        async with trioserve.testing.open_connection(handler) as stream:
            await stream.send_all(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            answer = await trioserve.testing.receive_all(stream)

        server = trioserve.Server(handler, trioserve.Config(header_timeout=5))
        async with trioserve.testing.open_connection(server) as stream:
            ...
        assert server.statistics().header_timeouts == 1

    On exit the client end is closed and the connection task is waited for.

    Raises:
        TypeError: ``config`` was given with a ``Server`` (it has its own).
        ValueError: ``server=`` was given with a handler that is not its handler.
    """
    if server is not None:
        if handler_or_server is not server and handler_or_server is not server.handler:
            raise ValueError("open_connection(handler, server=server): not the server's handler")
        handler_or_server = server
    server = _server_for(handler_or_server, config)
    client_end, server_end = stream_pair(buffer_size)
    served: trio.abc.Stream = wrap(server_end) if wrap is not None else server_end
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, served)
        try:
            yield client_end
        finally:
            await client_end.aclose()


def _server_for(handler_or_server: Handler | Server, config: Config | None) -> Server:
    if isinstance(handler_or_server, Server):
        if config is not None:
            raise TypeError("config goes to the Server: Server(handler, config)")
        return handler_or_server
    return Server(handler_or_server, config)


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")
