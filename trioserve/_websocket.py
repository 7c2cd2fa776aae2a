"""WebSocket: messages over a stream that an accepted upgrade handed over.

Rules for this module:
1. Once the 101 is written, the connection hands its stream (and the bytes it read
   past the handshake) to a ``WebSocket``: from then on only this module reads or
   writes it, the reader task reading and every write under the write lock. The
   protocol is ``_ws_protocol``'s; nothing here imports wsproto.
2. Every wait has a deadline (Config says how long) or is the application's own:

   ===========================  ===============================  ====================
   wait                         deadline                         on expiry
   ===========================  ===============================  ====================
   a write                      write_timeout without progress   abort (1006)
   the pong to our ping         ws_ping_timeout after the ping   close 1011, abort
   the peer's close after ours  ws_close_timeout                 end (the caller
                                                                 closes the stream)
   the next frame               none: the keepalive finds a      (ws_ping_interval
                                dead peer                        math.inf: none)
   ===========================  ===============================  ====================

   A write that is cancelled (the application's own timeout, a task cancelled with
   its nursery) aborts the connection: part of a frame may be out.
   A ping timeout counts only while the reader reads: a pong queued behind a message
   the application has not taken is not the peer's fault.
3. Nothing queues without bound. The reader hands one complete message at a time to
   the application (a channel without buffer) and reads nothing more until it is
   taken: a slow consumer slows the peer through TCP. Frames are made under the write
   lock, in the order they are written (a compressed frame depends on the one before).
4. The WebSocket's state is one ``_State``; the first ending decided (a close
   received, ours sent, a failure, a broken stream) is its ``close_code``.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import AsyncIterator
from typing import Final

import trio

from ._config import Config
from ._exchange import RECEIVE_SIZE, WRITE_CHUNK
from ._ws_protocol import (
    CloseReceived,
    Message,
    Ping,
    Pong,
    WebSocketEvent,
    WebSocketProtocol,
    check_close_code,
)

__all__ = [
    "WebSocket",
    "WebSocketClosed",
    "aborted",
    "finish_websocket",
    "open_websocket",
    "serve_websocket",
]

#: Close codes after which ``async for message in ws`` ends instead of raising: a
#: normal closure, a peer going away, and a close frame without a code (websockets
#: treats the three alike).
_NORMAL: Final = frozenset((1000, 1001, 1005))
#: RFC 6455 7.1.5: the close code of a connection that ended without a close frame.
_ABNORMAL: Final = 1006


class _Failed:
    """Handed to the application in place of a message: the peer broke the protocol
    after the messages before it (``receive()`` raises ``WebSocketClosed``)."""


_FAILED: Final = _Failed()


class WebSocketClosed(Exception):
    """The WebSocket is closed: ``code`` and ``reason`` say how (RFC 6455 7.4).

    ``code`` is the peer's when it closed first (1005 for a close frame without one),
    ours when we did or when the peer broke the protocol (1002, 1007, 1009, 1011), and
    1006 when the connection ended without a close frame (lost, or aborted).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"WebSocket closed with {self.code}" + (f": {self.reason}" if self.reason else "")


class _State(enum.Enum):
    OPEN = "open"
    CLOSE_SENT = "our close frame is sent; the peer's is awaited"
    CLOSE_RECEIVED = "the peer's close frame is in; our echo is owed"
    CLOSED = "the closing handshake is over, or the connection failed"
    ABORTED = "ended without a closing handshake: reset the stream"


_OPEN: Final = _State.OPEN


class WebSocket:
    """One accepted WebSocket connection (server side).

    Messages are ``str`` (text) or ``bytes`` (binary). Use it from the handler that
    accepted it, in any number of tasks: sends are serialized, each message whole.

    Example::

        async for message in ws:        # ends when the client closes normally
            await ws.send(message)
    """

    __slots__ = (
        "_config",
        "_ended",
        "_ending",
        "_handed_over",
        "_lock",
        "_messages_in",
        "_messages_out",
        "_pong_received",
        "_pong_wanted",
        "_protocol",
        "_state",
        "_stream",
        "_tasks",
        "subprotocol",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: WebSocketProtocol,
        config: Config,
        *,
        subprotocol: str | None = None,
    ) -> None:
        self._stream = stream
        self._protocol = protocol
        self._config = config
        #: The subprotocol agreed in the handshake, or ``None``.
        self.subprotocol = subprotocol
        self._state = _OPEN
        self._ending: WebSocketClosed | None = None
        self._ended = trio.Event()  # set when the state is CLOSED or ABORTED
        self._lock = trio.Lock()
        send, receive = trio.open_memory_channel[str | bytes | _Failed](0)
        self._messages_in, self._messages_out = send, receive
        self._pong_wanted: bytes | None = None
        self._pong_received = trio.Event()
        self._handed_over = 0  # messages handed to the application so far
        self._tasks = trio.CancelScope()  # the reader and the keepalive

    @property
    def close_code(self) -> int | None:
        """How the connection closed (see :class:`WebSocketClosed`), ``None`` while open."""
        return None if self._ending is None else self._ending.code

    # --- The application's side ------------------------------------------------------

    async def send(self, message: str | bytes) -> None:
        """Send one whole message: ``str`` as text, ``bytes`` as binary.

        Cancelling a ``send()`` that has begun to write aborts the WebSocket (1006):
        a frame cut off in the middle cannot be taken back.

        Raises:
            WebSocketClosed: the WebSocket is closing or closed (also when this write
                broke it: the client stopped reading for ``write_timeout``, or left).
            TypeError: ``message`` is neither ``str`` nor bytes.
        """
        given: object = message  # checked at run time too: a handler may not be typed
        if not isinstance(given, (str, bytes)):
            raise TypeError(f"a WebSocket message is str or bytes, not {type(given).__name__}")
        async with self._lock:
            if self._state is not _OPEN:
                raise self._closed()
            await self._write(self._protocol.send_message(message))

    async def receive(self) -> str | bytes:
        """The next message, once it is complete.

        Raises:
            WebSocketClosed: the peer closed, the connection broke (1006), or we closed.
        """
        try:
            message = await self._messages_out.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed() from None
        if isinstance(message, _Failed):
            raise self._closed()
        return message

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        """The next message; the iteration ends on a normal close (1000, 1001, 1005)
        and raises ``WebSocketClosed`` on any other."""
        try:
            return await self.receive()
        except WebSocketClosed as closed:
            if closed.code in _NORMAL:
                raise StopAsyncIteration from None
            raise

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake and wait up to ``ws_close_timeout`` for the
        peer's close frame. Messages still arriving are dropped. Returns at once if
        the WebSocket is already closed; the stream is the caller's to close after.

        Raises:
            ValueError: ``code`` may not be sent (1000-1014 as registered, or
                3000-4999).
        """
        check_close_code(code)
        if self._state is _OPEN:
            self._decide(code, reason)  # before a pending receive() wakes to report it
        self._messages_out.close()  # a receive() from now on raises WebSocketClosed
        async with self._lock:
            if self._state is _OPEN:
                self._state = _State.CLOSE_SENT
                self._decide(code, reason)
                # A failure decided first (a bad frame waiting for the application to
                # take the messages before it) keeps its own code.
                ending = self._closed()
                with contextlib.suppress(WebSocketClosed):
                    await self._write(self._protocol.send_close(ending.code, ending.reason))
        with trio.move_on_after(self._config.ws_close_timeout):
            await self._ended.wait()
        # No close from the peer in time: the connection ends all the same.
        self._end(_State.CLOSED)

    async def wait_closed(self) -> None:
        """Return once the connection has closed (the closing handshake is over, or the
        connection failed or was lost): :attr:`close_code` then says how."""
        await self._ended.wait()

    async def shutdown(self, code: int = 1001, reason: str = "") -> None:
        """Close for a server shutdown (1001 "going away", 1012 for a restart): the
        application's pending :meth:`receive` raises ``WebSocketClosed``."""
        await self.close(code, reason)

    # --- The reader and the keepalive (serve_websocket) ------------------------------

    async def _read(self, received: bytes) -> None:
        protocol = self._protocol
        if received:
            protocol.receive_data(received)
        try:
            while True:
                for event in protocol.events():
                    if not await self._handle(event):
                        return
                data = await self._stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self._lost()
                    return
                protocol.receive_data(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._lost()
        except WebSocketClosed:
            return  # a write failed: _write has ended the connection

    async def _handle(self, event: WebSocketEvent) -> bool:
        """Act on one event; ``False`` when reading is over."""
        if isinstance(event, Message):
            if self._state is _OPEN:
                self._handed_over += 1
                # Backpressure: nothing more is read until the application takes this.
                with contextlib.suppress(trio.BrokenResourceError):
                    await self._messages_in.send(event.data)
            return True  # after our close, messages are dropped (RFC 6455 1.4)
        if isinstance(event, Ping):
            async with self._lock:
                if self._state is _OPEN:
                    await self._write(self._protocol.send_pong(event.payload))
            return True
        if isinstance(event, Pong):
            if event.payload == self._pong_wanted:
                self._pong_received.set()
            return True
        if isinstance(event, CloseReceived):
            self._decide(event.code, event.reason)
            if self._state is _OPEN:
                # RFC 6455 5.5.1: answer with a close, echoing the code.
                self._state = _State.CLOSE_RECEIVED
                self._messages_in.close()
                async with self._lock:
                    await self._write(self._protocol.send_close(event.code))
            self._end(_State.CLOSED)
            return False
        # A ProtocolFailure: fail the connection (RFC 6455 7.1.7), with its code. The
        # messages that came before the bad frame are answered first, in the peer's
        # order (Autobahn 3.2, 5.15): the failure waits until the application asks for
        # the next message (its receive() then raises), at most ws_close_timeout.
        self._decide(event.code, event.reason)
        if self._state is _OPEN and self._handed_over:
            with (
                trio.move_on_after(self._config.ws_close_timeout),
                contextlib.suppress(trio.BrokenResourceError),
            ):
                await self._messages_in.send(_FAILED)
        await self._fail(event.code, event.reason, then=_State.CLOSED)
        return False

    async def _keepalive(self) -> None:
        interval, timeout = self._config.ws_ping_interval, self._config.ws_ping_timeout
        if math.isinf(interval):
            return
        count = 0
        while True:
            await trio.sleep(interval)
            count += 1
            self._pong_wanted = count.to_bytes(4, "big")
            self._pong_received = trio.Event()
            async with self._lock:
                if self._state is not _OPEN:
                    return
                try:
                    await self._write(self._protocol.send_ping(self._pong_wanted))
                except WebSocketClosed:
                    return  # the write timed out or broke: _write ended the connection
            handed = self._handed_over
            with trio.move_on_after(timeout):
                await self._pong_received.wait()
                continue
            if self._handed_over != handed or self._messages_in.statistics().tasks_waiting_send:
                # Messages came, so the peer is alive, and its pong may wait behind one
                # the application has not taken yet: not the peer's fault.
                continue
            await self._fail(1011, "keepalive ping timeout", then=_State.ABORTED)
            return

    # --- Endings ---------------------------------------------------------------------

    async def _fail(self, code: int, reason: str, *, then: _State) -> None:
        """Send a close with ``code`` (if ours is not out yet) and end without waiting
        for the peer's."""
        self._decide(code, reason)
        self._messages_in.close()
        async with self._lock:
            if self._state is _OPEN:
                self._state = _State.CLOSE_SENT
                with contextlib.suppress(WebSocketClosed):
                    await self._write(self._protocol.send_close(code, reason))
        self._end(then)

    def _lost(self) -> None:
        self._decide(_ABNORMAL, "")
        self._end(_State.ABORTED)

    def _decide(self, code: int, reason: str) -> None:
        if self._ending is None:
            self._ending = WebSocketClosed(code, reason)

    def _end(self, state: _State) -> None:
        if self._ended.is_set():
            return
        self._decide(_ABNORMAL, "")
        self._state = state
        self._messages_in.close()
        self._ended.set()
        self._tasks.cancel()

    def _closed(self) -> WebSocketClosed:
        ending = self._ending or WebSocketClosed(_ABNORMAL)
        return WebSocketClosed(ending.code, ending.reason)

    async def _write(self, data: bytes) -> None:
        """Write under the write deadline; the caller holds the lock. A write that makes
        no progress for ``write_timeout``, or a broken stream, aborts the connection."""
        timeout = self._config.write_timeout
        view = memoryview(data)
        try:
            for offset in range(0, len(view), WRITE_CHUNK):
                with trio.move_on_after(timeout) as scope:
                    await self._stream.send_all(view[offset : offset + WRITE_CHUNK])
                if scope.cancelled_caught:
                    self._decide(_ABNORMAL, "the client stopped reading")
                    break
            else:
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._decide(_ABNORMAL, "")
        except trio.Cancelled:
            # Part of a frame may be out, and a frame cannot be taken back: nothing
            # more can be sent on this stream.
            self._decide(_ABNORMAL, "a write was cancelled")
            self._end(_State.ABORTED)
            raise
        self._end(_State.ABORTED)
        raise self._closed()


def aborted(ws: WebSocket) -> bool:
    """Whether the WebSocket ended without a closing handshake (its stream should be
    reset, not closed gracefully): a write timeout, a ping timeout, a lost peer."""
    return ws._state is _State.ABORTED


async def serve_websocket(ws: WebSocket, received: bytes = b"") -> None:
    """Run the WebSocket's reader and keepalive until it has ended; ``received`` are the
    bytes read past the handshake. Start it in a nursery that outlives the handler."""
    with ws._tasks:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws._read, received)
            nursery.start_soon(ws._keepalive)


async def finish_websocket(ws: WebSocket, *, failed: bool) -> None:
    """After the handler: close a WebSocket it left open, with 1011 if it ``failed``
    (raised), else 1000 (waiting up to ``ws_close_timeout``)."""
    if ws._state is _OPEN:
        await ws.close(1011 if failed else 1000)
    else:  # closing already (a shutdown, the peer): give it its time to finish
        with trio.move_on_after(ws._config.ws_close_timeout):
            await ws._ended.wait()
    ws._end(_State.CLOSED)


@contextlib.asynccontextmanager
async def open_websocket(
    stream: trio.abc.Stream,
    protocol: WebSocketProtocol,
    config: Config,
    *,
    subprotocol: str | None = None,
    received: bytes = b"",
) -> AsyncIterator[WebSocket]:
    """A WebSocket over ``stream``, served while the block runs; on exit it is closed
    (1000, or 1011 if the block raised) and its tasks ended. Exceptions from the block
    propagate as they are (not in an exception group). The stream stays open.
    """
    ws = WebSocket(stream, protocol, config, subprotocol=subprotocol)
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_websocket, ws, received)
        try:
            yield ws
        except Exception as exc:
            failure = exc
        await finish_websocket(ws, failed=failure is not None)
    if failure is not None:
        raise failure
