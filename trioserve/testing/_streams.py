"""In-memory streams that behave like a TCP connection, for fault injection.

trio's ``memory_stream_pair()`` buffers without bound, so a client that never reads
never blocks the server. ``stream_pair()`` here gives each direction a bounded buffer
(like a socket's kernel buffers), so "the client does not read" stalls the server's
writes exactly as it would on a socket, and adds the two endings a socket has: a
clean close (the peer reads EOF) and a reset (the peer gets ``BrokenResourceError``).
"""

from __future__ import annotations

import operator

import trio

__all__ = ["FailAfter", "PipeStream", "stream_pair"]


class _Pipe:
    """One direction: a bounded byte buffer with a writer end and a reader end."""

    __slots__ = ("buffer", "closed", "eof", "limit", "lot", "reset")

    def __init__(self, limit: int) -> None:
        self.buffer = bytearray()
        self.limit = limit
        self.eof = False  # the writer sent EOF (send_eof or close)
        self.closed = False  # the writer's end is closed: nobody reads the other pipe
        self.reset = False  # the connection was reset
        self.lot = trio.lowlevel.ParkingLot()  # anyone waiting on this pipe


class PipeStream(trio.abc.HalfCloseableStream):
    """One end of :func:`stream_pair`: send on one pipe, receive from the other."""

    def __init__(self, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self._sending = False
        self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data)
            out = self._out
            while True:
                self._check_can_send()
                room = out.limit - len(out.buffer)
                if room > 0:
                    out.buffer += view[:room]
                    view = view[room:]
                    out.lot.unpark_all()
                if not view:
                    break
                await out.lot.park()  # wait for the reader to make room
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            out = self._out
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this end is closed")
                if len(out.buffer) < out.limit or out.reset or self._in.reset or self._in.closed:
                    return  # room, or a send would fail at once: either way, no blocking
                await out.lot.park()
        finally:
            self._sending = False

    def _check_can_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        if self._out.reset or self._in.reset:
            raise trio.BrokenResourceError("connection reset by peer")
        if self._out.eof:
            raise trio.ClosedResourceError("send_eof() was called")
        if self._in.closed:
            raise trio.BrokenResourceError("the peer closed the connection")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            # As trio's streams: 0 would return b"", which every caller reads as EOF.
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            incoming = self._in
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("this end is closed")
                if incoming.reset:
                    raise trio.BrokenResourceError("connection reset by peer")
                if incoming.buffer:
                    size = len(incoming.buffer) if max_bytes is None else max_bytes
                    data = bytes(incoming.buffer[:size])
                    del incoming.buffer[:size]
                    incoming.lot.unpark_all()
                    break
                if incoming.eof:
                    data = b""
                    break
                await incoming.lot.park()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end is closed")
        self._out.eof = True
        self._out.lot.unpark_all()

    def reset(self) -> None:
        """Abort the connection: the peer's next send or receive raises
        ``trio.BrokenResourceError``, as after a TCP reset."""
        self._out.reset = self._in.reset = True
        self._out.lot.unpark_all()
        self._in.lot.unpark_all()
        self._closed = True

    async def aclose(self) -> None:
        """Close this end: the peer reads EOF, and its later sends fail."""
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._out.closed = True
            self._out.lot.unpark_all()
            self._in.lot.unpark_all()
        await trio.lowlevel.checkpoint()


def stream_pair(buffer_size: int = 65536) -> tuple[PipeStream, PipeStream]:
    """Two connected in-memory streams, each direction buffering ``buffer_size`` bytes.

    A writer blocks once the other end has ``buffer_size`` unread bytes, as on a
    socket. ``aclose()`` on one end gives the other EOF (and fails its sends);
    ``reset()`` makes the other end's next call raise ``trio.BrokenResourceError``.

    Returns:
        ``(client_end, server_end)``.
    """
    if buffer_size < 1:
        raise ValueError("buffer_size must be at least 1")
    a_to_b = _Pipe(buffer_size)
    b_to_a = _Pipe(buffer_size)
    return PipeStream(a_to_b, b_to_a), PipeStream(b_to_a, a_to_b)


class FailAfter(trio.abc.HalfCloseableStream):
    """Wrap a stream so that it breaks after ``nbytes`` have passed through it.

    Once ``nbytes`` bytes have been sent and received in total, every further call
    raises ``trio.BrokenResourceError``, as if the network failed mid-exchange.
    Serve the wrapped server end to see how a handler copes::

        client, server_end = stream_pair()
        nursery.start_soon(server.serve_connection, FailAfter(server_end, 100))
    """

    def __init__(self, stream: trio.abc.HalfCloseableStream, nbytes: int) -> None:
        self.stream = stream
        self.remaining = nbytes

    def _take(self, count: int) -> int:
        if self.remaining <= 0:
            raise trio.BrokenResourceError("injected failure")
        allowed = min(count, self.remaining)
        self.remaining -= allowed
        return allowed

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        allowed = self._take(len(data)) if data else 0
        await self.stream.send_all(memoryview(data)[:allowed])
        if allowed < len(data):
            raise trio.BrokenResourceError("injected failure")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.remaining <= 0:
            raise trio.BrokenResourceError("injected failure")
        size = min(max_bytes if max_bytes is not None else 65536, self.remaining)
        data = bytes(await self.stream.receive_some(size))
        self.remaining -= len(data)  # what arrived, not what was asked for
        return data

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
