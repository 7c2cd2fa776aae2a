"""A small h11 client for the tests: raw request bytes in, parsed responses out.

Requests are written as raw bytes (the interesting ones are malformed on purpose, so
no client library would send them); responses are parsed by a real
``h11.Connection(h11.CLIENT)``, so a response that h11 would not accept fails the test.

``open_feed(handler, feed)`` serves one in-memory connection and delivers what the
test sends in one of three ways (see ``FEEDS``), so each protocol case runs whole,
byte by byte, and pipelined behind another request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import h11
import trio

import trioserve
from trioserve.testing import PipeStream, open_connection

__all__ = ["FEEDS", "Handler", "OneByteAtATime", "Reply", "ResponseReader", "open_feed"]

Handler = Callable[[trioserve.Request], Awaitable[trioserve.Response]]

#: How a test's bytes reach the server: in one piece; one byte per read; or in one
#: piece behind a pipelined ``GET /prelude`` whose answer is checked and skipped.
FEEDS = ("whole", "bytewise", "pipelined")

PRELUDE = b"GET /prelude HTTP/1.1\r\nHost: prelude\r\n\r\n"


class Reply:
    """One response as h11 parsed it, with the interim (1xx) statuses before it."""

    __slots__ = ("body", "headers", "http_version", "informational", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        http_version: bytes,
        informational: list[int],
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = trioserve.Headers(headers)
        self.body = body
        self.http_version = http_version
        self.informational = informational

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.headers!r} {self.body[:60]!r}>"


class ResponseReader:
    """Reads responses off the client end of a connection with an h11 client."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT)
        self._begun = False
        self._informational: list[int] = []

    async def read(self, method: str = "GET") -> Reply:
        """The next complete response; ``method`` is the request's (HEAD has no body).

        Raises:
            h11.RemoteProtocolError: the response is malformed or ends early (an
                aborted connection looks like this).
        """
        self._begin(method)
        head: h11.Response | None = None
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.InformationalResponse):
                self._informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                informational, self._informational = self._informational, []
                self._begun = False
                return Reply(
                    head.status_code,
                    head.reason,
                    list(head.headers),
                    bytes(body),
                    head.http_version,
                    informational,
                )
            else:
                raise AssertionError(f"unexpected {event!r} before a complete response")

    async def read_informational(self, method: str = "POST") -> int:
        """Wait for an interim (1xx) response and return its status."""
        self._begin(method)
        event = await self._next_event()
        assert isinstance(event, h11.InformationalResponse), event
        return event.status_code

    def _begin(self, method: str) -> None:
        if self._begun:
            return
        self._begun = True
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        # The h11 client must believe it sent the request to parse the answer (it
        # needs the method for HEAD); the bytes it produces are not sent anywhere.
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA]:
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self._stream.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            self._conn.receive_data(data)

    async def read_eof(self) -> bytes:
        """Read until the server closes; return what came after the last response.

        A test asserts ``await reader.read_eof() == b""``: nothing more was sent.
        """
        extra = bytearray(self._conn.trailing_data[0])
        while True:
            try:
                data = await self._stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            extra += data
        return bytes(extra)


class OneByteAtATime(trio.abc.HalfCloseableStream):
    """Wraps the server's end so that every read returns at most one byte."""

    def __init__(self, stream: PipeStream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.stream.receive_some(1)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class Feed:
    """The client end of one connection, delivering bytes in one of ``FEEDS`` ways."""

    def __init__(self, stream: PipeStream, server: trioserve.Server, feed: str) -> None:
        self.stream = stream
        self.server = server
        self.reader = ResponseReader(stream)
        self._prelude_pending = feed == "pipelined"
        self._prelude_unread = False

    async def send(self, data: bytes) -> None:
        """Send ``data`` (behind the prelude request on the first call, if pipelined)."""
        if self._prelude_pending:
            self._prelude_pending = False
            self._prelude_unread = True
            data = PRELUDE + data
        await self.stream.send_all(data)

    async def read(self, method: str = "GET") -> Reply:
        """The next response to the test's requests (the prelude's is checked first)."""
        await self._skip_prelude()
        return await self.reader.read(method)

    async def _skip_prelude(self) -> None:
        if self._prelude_unread:
            self._prelude_unread = False
            prelude = await self.reader.read()
            assert (prelude.status, prelude.body) == (200, b"prelude")
            assert prelude.headers.get("connection") is None

    async def read_informational(self) -> int:
        """Wait for an interim (1xx) response to the test's request."""
        await self._skip_prelude()
        return await self.reader.read_informational()

    async def read_eof(self) -> bytes:
        """See :meth:`ResponseReader.read_eof`."""
        return await self.reader.read_eof()


@asynccontextmanager
async def open_feed(
    handler: Handler,
    feed: str,
    config: trioserve.Config | None = None,
) -> AsyncIterator[Feed]:
    """Serve ``handler`` on one in-memory connection fed the ``feed`` way.

    The handler answers ``GET /prelude`` with ``200 prelude`` without being called
    (the pipelined feed's first request).
    """
    if feed not in FEEDS:
        raise ValueError(f"unknown feed {feed!r}")

    async def serve(request: trioserve.Request) -> trioserve.Response:
        if request.target == "/prelude":
            return trioserve.Response(200, body=b"prelude")
        return await handler(request)

    server = trioserve.Server(serve, config)
    wrap = OneByteAtATime if feed == "bytewise" else None
    async with open_connection(serve, server=server, wrap=wrap) as stream:
        yield Feed(stream, server, feed)
