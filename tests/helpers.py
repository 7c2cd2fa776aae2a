"""Raw request bytes in, parsed responses out, fed three ways.

Requests are written as raw bytes (the interesting ones are malformed on purpose, so
no client library would send them); responses are read by
``trioserve.testing.ResponseReader`` (a real ``h11.Connection(h11.CLIENT)``), so a
response that h11 would not accept fails the test.

``open_feed(handler, feed)`` serves one in-memory connection and delivers what the
test sends in one of three ways (see ``FEEDS``), so each protocol case runs whole,
byte by byte, and pipelined behind another request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

import trioserve
from trioserve.testing import PipeStream, ResponseReader, TestResponse, open_connection

__all__ = ["FEEDS", "OneByteAtATime", "Reply", "open_feed"]

#: How a test's bytes reach the server: in one piece; one byte per read; or in one
#: piece behind a pipelined ``GET /prelude`` whose answer is checked and skipped.
FEEDS = ("whole", "bytewise", "pipelined")

PRELUDE = b"GET /prelude HTTP/1.1\r\nHost: prelude\r\n\r\n"


#: The tests' name for a parsed response: trioserve.testing's own.
Reply = TestResponse


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
        return await self.reader.receive_response(method)

    async def _skip_prelude(self) -> None:
        if self._prelude_unread:
            self._prelude_unread = False
            prelude = await self.reader.receive_response()
            assert (prelude.status, prelude.body) == (200, b"prelude")
            assert prelude.headers.get("connection") is None

    async def read_informational(self) -> int:
        """Wait for an interim (1xx) response to the test's request."""
        await self._skip_prelude()
        return await self.reader.receive_informational()

    async def read_eof(self) -> bytes:
        """What came after the last response, up to the close: ``b""`` when nothing."""
        return await self.reader.receive_rest()


@asynccontextmanager
async def open_feed(
    handler: trioserve.Handler,
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
    async with open_connection(server, wrap=wrap) as stream:
        yield Feed(stream, server, feed)
