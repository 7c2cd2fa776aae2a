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
from .._headers import Headers
from .._server import Server
from ._streams import PipeStream, stream_pair

__all__ = ["Client", "TestResponse", "open_client", "open_connection", "parse_responses"]


class TestResponse:
    """A response as the in-memory client received it.

    Attributes:
        status: the status code (``int``).
        reason: the reason phrase (``str``).
        headers: :class:`trioserve.Headers`, as on a request.
        body: the whole body (``bytes``).
        http_version: ``"1.0"`` or ``"1.1"``.
    """

    __test__ = False  # not a pytest test class

    __slots__ = ("body", "headers", "http_version", "reason", "status")

    def __init__(
        self, status: int, reason: str, headers: Headers, body: bytes, http_version: str
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.http_version = http_version

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def __repr__(self) -> str:
        return f"<TestResponse {self.status} ({len(self.body)} bytes)>"


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
            trio.BrokenResourceError: the server closed the connection without a
                complete response.
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
        return await self._receive_response(stream, conn)

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

    async def _receive_response(self, stream: PipeStream, conn: h11.Connection) -> TestResponse:
        assembler = _ResponseAssembler()
        while True:
            try:
                response = assembler.take_events(conn)
            except (h11.RemoteProtocolError, EOFError) as exc:
                # The server closed mid-response (it aborted): one error for the
                # caller, whichever way the close showed.
                raise trio.BrokenResourceError(f"server closed mid-response: {exc!r}") from exc
            if response is not None:
                return response
            conn.receive_data(await stream.receive_some())

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None


@asynccontextmanager
async def open_client(handler: Handler, config: Config | None = None) -> AsyncIterator[Client]:
    """Serve ``handler`` in memory and yield a :class:`Client` to call it with.

    Example::

        async def test_hello():
            async with trioserve.testing.open_client(handler) as client:
                response = await client.get("/")
            assert response.status == 200
            assert response.body == b"Hello, world!"

    ``client.server`` is the :class:`trioserve.Server` behind it (for
    ``client.server.statistics()``). On exit the client's connection is closed and
    the server's connection tasks are waited for.
    """
    server = Server(handler, config)
    async with trio.open_nursery() as nursery:
        client = Client(server, nursery)
        try:
            yield client
        finally:
            await client.aclose()


@asynccontextmanager
async def open_connection(
    handler: Handler,
    config: Config | None = None,
    *,
    server: Server | None = None,
    buffer_size: int = 65536,
    wrap: Callable[[PipeStream], trio.abc.Stream] | None = None,
) -> AsyncIterator[PipeStream]:
    """Serve ``handler`` on one in-memory connection and yield the client end.

    Send any bytes with ``await stream.send_all(...)`` and read the raw answer with
    ``await stream.receive_some()``; it returns ``b""`` once the server has closed.

    Args:
        handler: the handler to serve.
        config: the server's config.
        server: serve with this :class:`trioserve.Server` instead of a new one (to
            read its statistics or shut it down).
        buffer_size: bytes each direction buffers, as a socket would: a client that
            stops reading blocks the server's writes once this much is unread.
        wrap: wraps the server's end before it is served, e.g.
            ``lambda s: FailAfter(s, 100)``.

    Example::

        async with trioserve.testing.open_connection(handler) as stream:
            await stream.send_all(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            answer = await trioserve.testing.receive_all(stream)

    On exit the client end is closed and the connection task is waited for.
    """
    if server is None:
        server = Server(handler, config)
    client_end, server_end = stream_pair(buffer_size)
    served: trio.abc.Stream = wrap(server_end) if wrap is not None else server_end
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, served)
        try:
            yield client_end
        finally:
            await client_end.aclose()


def parse_responses(data: bytes, *, method: str = "GET") -> list[TestResponse]:
    """Parse the raw bytes a server sent on one connection into responses.

    The bytes are checked with a real h11 client, as if each response answered a
    ``method`` request: every response must be complete and well framed, and nothing
    may follow the last one. Informational (1xx) responses are skipped. Use it on
    what :func:`receive_all` returned from an :func:`open_connection` stream::

        answer = await receive_all(stream)
        [response] = parse_responses(answer)
        assert response.status == 408
        assert response.headers["connection"] == "close"

    Args:
        data: every byte the server sent, up to its close.
        method: the request method each response answers (``"HEAD"`` responses
            carry no body).

    Returns:
        The final responses, in order (an empty list for ``b""``).

    Raises:
        ValueError: the bytes are not a sequence of complete, valid HTTP/1.1
            responses (truncated, malformed, or with bytes left over).
    """
    responses: list[TestResponse] = []
    if not data:
        return responses
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(data)
    conn.receive_data(b"")
    while True:
        conn.send(h11.Request(method=method, target="/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        try:
            response = _ResponseAssembler().take_events(conn)
        except EOFError:
            raise ValueError("the data ends in the middle of a response") from None
        except h11.RemoteProtocolError as exc:
            raise ValueError(f"not a valid HTTP/1.1 response: {exc}") from exc
        if response is None:  # pragma: no cover  # EOF was fed: h11 never needs more
            raise AssertionError("h11 asked for data after EOF")
        responses.append(response)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            if conn.trailing_data[0]:
                continue
            return responses
        # The server ends the connection after this response: nothing may follow.
        leftover = conn.trailing_data[0]
        if leftover:
            raise ValueError(f"{len(leftover)} bytes after a response that closes")
        return responses


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class _ResponseAssembler:
    """Collects one response from an ``h11.Connection(h11.CLIENT)``'s events."""

    __slots__ = ("_chunks", "_head")

    def __init__(self) -> None:
        self._head: h11.Response | None = None
        self._chunks: list[bytes] = []

    def take_events(self, conn: h11.Connection) -> TestResponse | None:
        """Take events until the response is complete (returned) or h11 needs more
        data (``None``: feed it and call again).

        Raises:
            h11.RemoteProtocolError: the bytes are not a valid response.
            EOFError: the connection closed in the middle of the response.
        """
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Response):
                self._head = event
            elif isinstance(event, h11.Data):
                self._chunks.append(bytes(event.data))
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the connection closed in the middle of a response")
            elif isinstance(event, h11.EndOfMessage):
                head = self._head
                assert head is not None
                return TestResponse(
                    head.status_code,
                    head.reason.decode("latin-1"),
                    Headers.from_raw(list(head.headers)),
                    b"".join(self._chunks),
                    head.http_version.decode("ascii"),
                )
