"""Responses as a real h11 client reads them: all at once, or one at a time off a stream.

Rules for this module:
1. Every response a test sees is assembled here, by one h11 client state machine per
   connection (``_ResponseAssembler``): the in-memory client, ``parse_responses`` and
   ``ResponseReader`` share it, so a response h11 would refuse fails every test alike.
2. Errors mean the same everywhere: bytes that are not a valid response raise
   ``ValueError``; a connection that ends (EOF or reset) before a response is complete
   raises ``trio.BrokenResourceError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import h11
import trio

from .._headers import Headers

__all__ = ["ResponseReader", "TestResponse", "parse_responses", "read_response"]

_T = TypeVar("_T")


class TestResponse:
    """A response as an h11 client received it.

    Attributes:
        status: the status code (``int``).
        reason: the reason phrase (``str``).
        headers: :class:`trioserve.Headers`, as on a request.
        body: the whole body (``bytes``).
        http_version: ``"1.0"`` or ``"1.1"``.
        informational: the statuses of the interim (1xx) responses that came before
            this one, in order (a ``tuple``; ``()`` for none).
    """

    __test__ = False  # not a pytest test class

    __slots__ = ("body", "headers", "http_version", "informational", "reason", "status")

    def __init__(
        self,
        status: int,
        reason: str,
        headers: Headers,
        body: bytes,
        http_version: str,
        informational: tuple[int, ...] = (),
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.http_version = http_version
        self.informational = informational

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def __repr__(self) -> str:
        return f"<TestResponse {self.status} ({len(self.body)} bytes)>"


class ResponseReader:
    """Reads the responses a server sends on one connection, one at a time, as they come.

    For tests that talk raw bytes on an :func:`open_connection` stream and need each
    answer before sending more (keep-alive, pipelining, ``Expect: 100-continue``).
    :func:`parse_responses` does the same for every byte at once, once the server has
    closed. The reader reads only from ``stream``; the test sends on it as it likes.

    Example::

        async with open_connection(handler) as stream:
            reader = ResponseReader(stream)
            await stream.send_all(b"GET /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            first = await reader.receive_response()
            await stream.send_all(b"HEAD /b HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            second = await reader.receive_response("HEAD")
            close = b"GET /c HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
            await stream.send_all(close)
            third = await reader.receive_response()
            assert await reader.receive_rest() == b""  # the server closed after it

    Args:
        stream: the client end of a connection.
    """

    __slots__ = ("_assembler", "_conn", "_stream")

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT)
        self._assembler: _ResponseAssembler | None = None  # a response in progress

    async def receive_response(self, method: str = "GET") -> TestResponse:
        """The next complete response, with the interim (1xx) ones before it in its
        ``informational``.

        Args:
            method: the method of the request it answers (``"HEAD"`` responses carry
                no body).

        Raises:
            trio.BrokenResourceError: the connection ended (EOF or reset) before the
                response was complete, or the last response said the server closes
                the connection.
            ValueError: the bytes are not a valid HTTP/1.1 response.
        """
        response = await read_response(self._stream, self._conn, self._begin(method))
        self._assembler = None
        return response

    async def receive_informational(self, method: str = "POST") -> int:
        """Wait for the next interim (1xx) response, such as ``100 Continue``, and
        return its status. It is not listed in the final response's ``informational``.

        Raises:
            AssertionError: a final response came instead.
            trio.BrokenResourceError, ValueError: as for :meth:`receive_response`.
        """
        assembler = self._begin(method)
        conn = self._conn
        while (status := _take(assembler.take_informational, conn)) is None:
            conn.receive_data(await _receive_or_eof(self._stream))
        return status

    async def receive_rest(self) -> bytes:
        """Read until the server closes the connection (EOF or reset); return the bytes
        that came after the last complete response: ``b""`` when nothing did.

        Raises:
            ValueError: more than 64 MiB arrived (a runaway response).
        """
        rest = bytearray(self._conn.trailing_data[0])
        while data := await _receive_or_eof(self._stream):
            rest += data
            if len(rest) > 2**26:
                raise ValueError("more than 64 MiB after the last response")
        return bytes(rest)

    def _begin(self, method: str) -> _ResponseAssembler:
        if self._assembler is not None:
            return self._assembler
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        elif conn.our_state is not h11.IDLE:
            raise trio.BrokenResourceError(
                "no more responses can come on this connection: the last one closed it (or failed)"
            )
        # The h11 client must believe it sent the request to parse the answer (it
        # needs the method for HEAD); the bytes it makes are not sent anywhere.
        conn.send(h11.Request(method=method, target="/", headers=[(b"host", b"x")]))
        conn.send(h11.EndOfMessage())
        self._assembler = _ResponseAssembler()
        return self._assembler


async def read_response(
    stream: trio.abc.ReceiveStream, conn: h11.Connection, assembler: _ResponseAssembler
) -> TestResponse:
    """Feed ``conn`` from ``stream`` until ``assembler`` has a whole response (rule 2).

    Safe to cancel: the bytes read so far stay in ``conn`` and ``assembler``.
    """
    while (response := _take(assembler.take_events, conn)) is None:
        conn.receive_data(await _receive_or_eof(stream))
    return response


async def _receive_or_eof(stream: trio.abc.ReceiveStream) -> bytes:
    """The next bytes, or ``b""`` once the peer closed or reset the connection."""
    try:
        return bytes(await stream.receive_some(65536))
    except trio.BrokenResourceError:
        return b""


def _take(take: Callable[[h11.Connection], _T | None], conn: h11.Connection) -> _T | None:
    """Call an assembler step, translating h11's errors (rule 2)."""
    eof_seen = conn.trailing_data[1]
    try:
        return take(conn)
    except EOFError as exc:
        raise trio.BrokenResourceError(f"the server closed mid-response: {exc}") from exc
    except h11.RemoteProtocolError as exc:
        if eof_seen:  # h11 says "incomplete body" when the peer closed mid-response
            raise trio.BrokenResourceError(f"the server closed mid-response: {exc}") from exc
        raise ValueError(f"not a valid HTTP/1.1 response: {exc}") from exc


def parse_responses(data: bytes, *, method: str = "GET") -> list[TestResponse]:
    """Parse the raw bytes a server sent on one connection into responses.

    The bytes are checked with a real h11 client, as if each response answered a
    ``method`` request: every response must be complete and well framed, and nothing
    may follow the last one. Interim (1xx) responses are listed in the
    ``informational`` of the final response after them. Use it on what
    :func:`receive_all` returned from an :func:`open_connection` stream::

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


class _ResponseAssembler:
    """Collects one response from an ``h11.Connection(h11.CLIENT)``'s events."""

    __slots__ = ("_chunks", "_head", "_informational")

    def __init__(self) -> None:
        self._head: h11.Response | None = None
        self._chunks: list[bytes] = []
        self._informational: list[int] = []

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
            if isinstance(event, h11.InformationalResponse):
                self._informational.append(event.status_code)
            elif isinstance(event, h11.Response):
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
                    tuple(self._informational),
                )

    def take_informational(self, conn: h11.Connection) -> int | None:
        """Take the next event, which must be an interim response: its status, or
        ``None`` if h11 needs more data.

        Raises:
            AssertionError: the final response came first.
            h11.RemoteProtocolError, EOFError: as for :meth:`take_events`.
        """
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return None
        if isinstance(event, h11.InformationalResponse):
            return event.status_code
        if isinstance(event, h11.ConnectionClosed):
            raise EOFError("the connection closed before a response")
        if isinstance(event, h11.Response):
            self._head = event  # what receive_response would go on with
        raise AssertionError(f"expected an interim (1xx) response, got {event!r}")
