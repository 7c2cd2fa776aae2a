"""An in-memory listener, to run a whole server (accept loop included) in memory."""

from __future__ import annotations

import trio

from ._streams import PipeStream, stream_pair

__all__ = ["MemoryListener"]


class MemoryListener(trio.abc.Listener[PipeStream]):
    """A ``trio.abc.Listener`` whose clients connect in memory.

    Serve it like a socket listener, then ``connect()`` clients to it::

        listener = MemoryListener()
        server = trioserve.Server(handler, config)
        await nursery.start(server.serve_listeners, [listener])
        client = await listener.connect()

    Once the listener is closed (the server shut down), ``connect()`` raises
    ``ConnectionRefusedError``, as a closed port would.

    Args:
        buffer_size: bytes each direction of each connection buffers (see
            :func:`stream_pair`).
    """

    def __init__(self, buffer_size: int = 65536) -> None:
        self._buffer_size = buffer_size
        self._send, self._receive = trio.open_memory_channel[PipeStream](float("inf"))
        self._closed = False
        self.accepted = 0

    async def connect(self) -> PipeStream:
        """Open a connection and return the client's end."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise ConnectionRefusedError("the listener is closed")
        client_end, server_end = stream_pair(self._buffer_size)
        self._send.send_nowait(server_end)
        return client_end

    async def accept(self) -> PipeStream:
        if self._closed:
            raise trio.ClosedResourceError("the listener is closed")
        try:
            stream = await self._receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("the listener is closed") from None
        self.accepted += 1
        return stream

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # Connections queued but never accepted are refused, as in a kernel backlog
            # that is dropped when its socket closes.
            self._send.close()
            while True:
                try:
                    stream = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                stream.reset()
        await trio.lowlevel.checkpoint()
