"""One request/response exchange on a connection: the handler call, the request
body, and the watch for a client that vanishes meanwhile.

Rules for this module:
1. An ``Exchange`` lives from a request head to the end of its response; the
   connection makes one per request and ends it, and nothing of it is reused by the
   next request (a body read or a wait left over from it raises or returns).
2. The handler runs in the connection task (no task per request). A watcher task
   that notices a vanished client is started only if the handler suspends after the
   request body is complete (see ``_inline``): a handler that answers at once
   costs no task. A handler with ``watch_disconnect = False`` (the ASGI adapter) gets
   a watcher only when someone awaits ``Request.wait_disconnected()``.
3. This module, ``_connection`` and ``_closing`` are the only code that reads the
   stream, and only the connection's own tasks do: at most one read is in flight
   (``_read_done`` is its event). The connection task reads for itself when it is
   the one asking (a handler running inline, a streamed response that reads the
   request); any other task (an ASGI application, a handler's own child) gets its
   read done by a reader task in the connection's nursery, and waits for it. The
   watcher reads only once the body is complete, so never beside a body read.
4. Reading is safe to cancel: an asker that is cancelled has taken nothing, and what a
   read brings waits in h11's buffer for the next ask. (A cancelled ``receive_some``
   loses no byte on trio's sockets, TLS streams once the handshake is done, and
   memory streams.)
5. ``100 Continue`` is owed the moment a read needs the client's bytes, and written by
   connection code that no handler's cancel scope covers (the reader task, or the
   connection's next write): a cancelled asker can never leave h11 believing it was
   sent when it was not, or a half-written one on the wire.
6. When the exchange is over (the response is complete, or it failed), reads raise
   :class:`BodyUnavailable`, a read in flight is cancelled, and :meth:`close`
   returns once it has stopped, so the connection may drain.
"""

from __future__ import annotations

import logging
import types
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Final

import trio

from ._errors import (
    BodyUnavailable,
    ClientDisconnected,
    HTTPError,
    RequestTimeout,
    single_leaf,
    split_failure,
)
from ._filebody import FileBody, FileChanged, FileRange, FileSource, can_sendfile
from ._handler import Handler
from ._http11 import BODY_END, BODY_INCOMPLETE
from ._inline import run_inline
from ._logging import error_logger
from ._response import Response
from .static._files import respond_file

if TYPE_CHECKING:
    from ._connection import HTTPConnection
    from ._request import Request
    from ._upgrade import HeaderPairs, Upgrade
    from ._websocket import WebSocket

__all__ = ["BODY_RECEIVE_SIZE", "RECEIVE_SIZE", "WRITE_CHUNK", "Abort", "Exchange"]

#: Bytes asked of the stream per read (trio's own default for SocketStream).
RECEIVE_SIZE: Final = 65536
#: Large bodies are written in pieces of this size, each under its own write deadline,
#: so ``write_timeout`` measures lack of progress rather than total transfer time.
WRITE_CHUNK: Final = 256 * 1024
#: Bytes asked per read of a large request body: four times fewer reads (and h11
#: rounds) per megabyte, as asyncio's transports read (256 KiB).
BODY_RECEIVE_SIZE: Final = 256 * 1024

_INF: Final = float("inf")


class Abort(Exception):
    """The connection must be cut off at once; the cause was already counted and logged."""


class Exchange:
    """One request's exchange with its connection (see the module rules).

    ``request`` is set by the connection right after it builds the Request around
    this exchange (its body source).
    """

    __slots__ = (
        "_body_waited",
        "_connection",
        "_error",
        "_handler",
        "_in_handler",
        "_over",
        "_over_event",
        "_peeked",
        "_read_done",
        "_reader",
        "_released",
        "_watch_allowed",
        "_watch_wanted",
        "_watcher_done",
        "_watcher_scope",
        "gone",
        "request",
        "upgrade",
    )

    def __init__(self, connection: HTTPConnection) -> None:
        self._connection = connection
        self.request: Request | None = None
        #: The watcher saw the client leave while the handler ran, and cancelled it.
        self.gone = False
        self._in_handler = False
        self._handler: Handler | None = None
        self._body_waited = 0.0  # seconds spent waiting for body bytes (rate rule)
        self._over = False
        self._over_event: trio.Event | None = None  # made only if someone waits
        self._error: Exception | None = None  # the body failed: every read raises it
        self._peeked: bytes | None = None  # a piece taken from h11 ahead of its ask
        self._read_done: trio.Event | None = None  # set when the read in flight ends
        self._reader: trio.CancelScope | None = None  # the reader task's, while it runs
        self._released = False  # see release()
        self._watch_wanted = False  # start the watcher at the handler's next suspension
        self._watch_allowed = False  # from the handler's start until its response is out
        self._watcher_scope: trio.CancelScope | None = None
        self._watcher_done: trio.Event | None = None
        self.upgrade: Upgrade | None = None  # the WebSocket the handler accepted

    # --- The handler ---------------------------------------------------------------------

    async def call(self, handler: Handler, request: Request, *, watch: bool) -> object:
        """Run the handler in this task; cancelled if the client vanishes meanwhile.

        ``watch``: start the disconnect watcher whenever the handler waits with its
        body read (rule 2); otherwise only when someone asks.
        """
        self._handler = handler
        self._watch_wanted = watch
        self._watch_allowed = True
        self._in_handler = True
        try:
            awaitable = handler(request)
            if type(awaitable) is types.CoroutineType or isinstance(awaitable, Coroutine):
                result = await run_inline(awaitable, self._on_handler_suspend)
            else:
                self._on_handler_suspend()
                result = await awaitable
            if isinstance(result, Response) and type(result.body) is FileSource:
                return await respond_file(request, result)  # Response.file needs the request
            return result
        finally:
            self._in_handler = False
            self._watch_wanted = False

    def _on_handler_suspend(self) -> None:
        # Called each time the handler yields to trio. The idle or head deadline still
        # set on the scope cannot fire before the handler's first checkpoint, so it is
        # lifted only now: a handler that answers at once costs no deadline move.
        connection = self._connection
        if connection.scope.deadline != _INF:
            connection.scope.deadline = _INF
        # Start the watcher once the body is complete: before that, the body reads
        # themselves notice a vanished client.
        if self._watch_wanted and connection.proto.body_complete:
            self._watch_wanted = False
            self._start_watcher()

    def client_left(self) -> None:
        """The client is gone: a handler still running is cancelled, and it is over."""
        if self._in_handler:
            self.gone = True
            self._connection.scope.cancel()
        self.end()

    def sort_failure(self, raised: BaseException, *, response_started: bool) -> int | None:
        """Sort what the handler (or its streamed body) raised: count and log it, and
        return the status to answer with, or None when the connection must be cut
        off (the response has started, or the client is gone). Anything that is not
        an ``Exception`` (a cancellation, KeyboardInterrupt) propagates, after the
        application's own errors beside it in a group are logged: they never leave
        the exchange, whether a cancellation came with them or not.
        """
        failure, rest = split_failure(raised)
        if rest is not None:
            if failure is not None:
                # The handler reacting to its cancellation (the client left, or the
                # server cuts it off) and failing at it: counted, and logged at DEBUG,
                # as the ASGI adapter logs an application's errors after an abort.
                self._connection.counters.handler_errors += 1
                error_logger.debug(
                    "handler %r raised while it was cancelled, serving %r",
                    self._handler,
                    self.request,
                    exc_info=failure,
                )
            try:
                raise rest from None
            finally:
                del raised, rest  # the traceback holds this frame: no cycle through it
        assert failure is not None  # split_failure returns one of the two, at least
        exc = single_leaf(failure)
        if isinstance(exc, ClientDisconnected):
            # The client went away (a streamed body may have read the request body).
            self.count_client_gone()
            return None
        if isinstance(exc, HTTPError):
            # Refused while reading the body (408, 413: counted where detected), or
            # the handler's own answer.
            if not response_started:
                return exc.status_code
            if error_logger.isEnabledFor(logging.DEBUG):
                error_logger.debug("%r refused mid-response (%s); aborting", self.request, exc)
            return None
        if isinstance(exc, FileChanged):  # rewritten in place as it went: not a bug
            error_logger.warning("%s", exc)
            return None
        self._connection.counters.handler_errors += 1
        if not response_started:
            error_logger.error(
                "handler %r failed serving %r: %s", self._handler, self.request, exc, exc_info=exc
            )
            return 500
        # A ResponseFramingError (a body not of its Content-Length), or the body's own.
        error_logger.error(
            "response body of %r failed after the response started; aborting the connection",
            self.request,
            exc_info=exc,
        )
        return None

    def count_client_gone(self) -> None:
        """The client went away during this exchange: a normal event, one DEBUG line."""
        self._connection.counters.client_disconnects += 1
        if error_logger.isEnabledFor(logging.DEBUG):
            error_logger.debug(
                "client %s went away during %r", self._connection.client, self.request
            )

    # --- Watching for a vanished client ---------------------------------------------------

    def _start_watcher(self) -> None:
        # Only while the handler runs or its response is sent, and the body is in
        # (until then the body reads notice a vanished client).
        connection = self._connection
        if (
            self._watcher_scope is None
            and self._watch_allowed
            and self._read_done is None
            and connection.proto.body_complete
            and not connection.peer_eof
        ):
            scope = self._watcher_scope = trio.CancelScope()
            done = self._watcher_done = trio.Event()
            connection.start_soon(self._watch, scope, done)

    async def _watch(self, scope: trio.CancelScope, done: trio.Event) -> None:
        connection = self._connection
        proto = connection.proto
        receive_some = connection.io.receive_some
        limit = connection.config.max_header_size
        buffered = 0
        try:
            with scope:
                while buffered < limit:
                    data = await receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    # Pipelined requests: kept for after this response.
                    proto.receive_data(data)
                    buffered += len(data)
                else:
                    await trio.sleep_forever()  # enough buffered; the rest can wait
                connection.peer_gone()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            connection.peer_gone()
        finally:
            done.set()

    async def stop_watching(self) -> None:
        """The response is out (or failed): stop the watcher, and wait until it has."""
        self._watch_allowed = False
        scope, done = self._watcher_scope, self._watcher_done
        if scope is not None and done is not None:
            self._watcher_scope = self._watcher_done = None
            scope.cancel()
            await done.wait()

    def is_disconnected(self) -> bool:
        """Whether the client is gone or the exchange over; asking starts the watcher
        (RequestSource)."""
        if self._over:
            return True
        self._start_watcher()
        return False

    async def wait_disconnected(self) -> None:
        """Return once the client is gone or the exchange is over (RequestSource)."""
        if self._over:
            await trio.lowlevel.checkpoint()
            return
        self._start_watcher()
        if self._over_event is None:
            self._over_event = trio.Event()
        await self._over_event.wait()

    async def accept_websocket(self, subprotocol: str | None, headers: HeaderPairs) -> WebSocket:
        """Take a WebSocket upgrade (RequestSource; see ``_upgrade``)."""
        from ._upgrade import accept  # not at the top: _websocket imports this module

        return await accept(self._connection, self, subprotocol, headers)

    # --- The request body ------------------------------------------------------------------

    async def receive_body_chunk(self) -> bytes:
        """The next piece of the request body; ``b""`` at its end (RequestSource).

        Cancellation-safe (rule 4). Raises the body's ``HTTPError`` (408, 413, 400) or
        ``ClientDisconnected``, again on every later call; ``BodyUnavailable`` once over.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._over and self._error is None:
                raise BodyUnavailable
            chunk = self._next_chunk()
            if chunk is not None:
                return chunk
            await self._read()

    def _next_chunk(self) -> bytes | None:
        """A piece of body already received, ``b""`` at the end, None if a read is needed."""
        if self._error is not None:
            raise self._error
        chunk = self._peeked
        if chunk is not None:
            self._peeked = None
            return chunk
        proto = self._connection.proto
        try:
            event = proto.next_body_chunk()
        except HTTPError as exc:
            raise self._refused(exc) from None
        if event is BODY_INCOMPLETE:
            return None
        if event is BODY_END:
            return b""
        # Look one step ahead, with no I/O: a body whose last bytes are in is then
        # known complete at once (the disconnect watcher may start), and a refusal
        # behind this piece is kept for the next read rather than losing the piece.
        try:
            ahead = proto.next_body_chunk()
        except HTTPError as exc:
            self._refused(exc)
        else:
            if type(ahead) is bytes:
                self._peeked = ahead
        return event

    def _refused(self, exc: HTTPError) -> HTTPError:
        self._connection.counters.count_refusal(exc.status_code)
        self._error = exc
        return exc

    async def _read(self) -> None:
        """Bring more body bytes into h11's buffer, or a failure into ``_error``."""
        connection = self._connection
        done = self._read_done
        if done is None:
            waiting_for_continue = connection.proto.they_are_waiting_for_100_continue
            if trio.lowlevel.current_task() is connection.task and not waiting_for_continue:
                await self._read_inline()
                return
            if waiting_for_continue:
                connection.owe_continue()
            done = self._read_done = trio.Event()
            reader = self._reader = trio.CancelScope()
            connection.start_soon(self._read_for_others, reader, done)
        await done.wait()  # the read goes on if this task is cancelled (rule 4)

    async def _read_inline(self) -> None:
        """Read in the connection task (no read may be in flight)."""
        done = self._read_done = trio.Event()
        try:
            await self._receive_body_bytes()
        except (HTTPError, ClientDisconnected) as exc:
            self._error = exc
        finally:
            self._read_done = None
            done.set()

    async def _read_for_others(self, reader: trio.CancelScope, done: trio.Event) -> None:
        """The reader task: one read, for whichever tasks wait on ``done``."""
        try:
            with reader:
                await self._connection.flush_continue()
                await self._receive_body_bytes()
        except Exception as exc:  # HTTPError, ClientDisconnected, or a bug of ours:
            if not self._released:  # else nobody may read any more (see release)
                self._error = exc  # raised to the asker, never into the connection nursery
        finally:
            self._reader = None
            self._read_done = None
            done.set()

    async def _receive_body_bytes(self) -> None:
        """Read more body under the body deadlines (Config.body_timeout and rate).

        Rate rule: after ``body_rate_grace`` seconds spent waiting for this body, the
        body must have averaged ``body_min_rate`` bytes per second of waiting. Time
        the handler spends between reads does not count against the client.
        """
        connection = self._connection
        config = connection.config
        proto = connection.proto
        now = trio.current_time()
        allowed = config.body_timeout
        if config.body_min_rate > 0:
            earned = max(config.body_rate_grace, proto.body_received / config.body_min_rate)
            allowed = min(allowed, earned - self._body_waited)
        try:
            with trio.CancelScope(deadline=now + max(allowed, 0.0)) as scope:
                data = await connection.io.receive_some(BODY_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            connection.peer_gone()
            raise ClientDisconnected("connection lost mid-body") from exc
        finally:
            self._body_waited += trio.current_time() - now
        if scope.cancelled_caught:
            connection.counters.body_timeouts += 1
            raise RequestTimeout("request body too slow")
        if not data:
            connection.peer_gone()
            raise ClientDisconnected("client closed the connection mid-body")
        proto.receive_data(data)

    async def drain(self, budget: float) -> bool:
        """Read and discard the rest of the body, at most ``budget`` bytes (after
        :meth:`close`, in the connection task). True if it all came."""
        try:
            while True:
                chunk = self._next_chunk()
                if chunk is None:
                    await self._read_inline()
                elif not chunk:
                    return True
                else:
                    budget -= len(chunk)
                    if budget < 0:
                        return False
        except (HTTPError, ClientDisconnected):
            return False

    # --- The response ------------------------------------------------------------------------

    async def send_response(self, response: Response, *, close: bool) -> int:
        """Send a whole response; returns the body bytes sent (for the access log)."""
        connection = self._connection
        proto = connection.proto
        send = connection.send
        body = response.body
        if isinstance(body, bytes):
            head, body_allowed = proto.start_response(
                response.status, response.headers, len(body), close=close
            )
            if not body_allowed or not body:
                await send(head + proto.end_response(), whole=True)
                return 0
            if len(body) <= WRITE_CHUNK:
                whole = head + b"".join(proto.send_data(body)) + proto.end_response()
                await send(whole, whole=True)
            else:
                await send(head)
                for piece in proto.send_data(body):
                    await send(piece)
                await send(proto.end_response())
            return len(body)
        return await self._send_streamed(response, body, close=close)

    async def _send_streamed(
        self, response: Response, body: AsyncIterable[bytes], *, close: bool
    ) -> int:
        """Send a head and a streamed body; the body is closed whatever happens.

        A failure to close the body is the application's (a pooled resource not given
        back): it is logged, and never replaces the outcome: after a complete response
        the connection goes on with the next request, after a failure it is cut off.
        """
        try:
            sent = await self._stream_body(response, body, close=close)
        except Abort:
            await self._close_body(body, "after the connection was cut off")
            raise
        except BaseException as raised:
            await self._close_body(body, "after the response failed")
            self.sort_failure(raised, response_started=True)
            raise Abort from None
        await self._close_body(body, "after the response was complete")
        return sent

    async def _stream_body(
        self, response: Response, body: AsyncIterable[bytes], *, close: bool
    ) -> int:
        connection = self._connection
        proto = connection.proto
        send = connection.send
        head, body_allowed = proto.start_response(
            response.status, response.headers, None, close=close
        )
        connection.response_open = True
        await send(head)
        if not body_allowed:  # HEAD, 204, 304: the body is never iterated
            await send(proto.end_response())
            connection.response_open = False
            return 0
        # The body may take its time to produce each chunk: no write deadline while it
        # does (the handler's work is not the client's slowness).
        scope = connection.scope
        scope.deadline = _INF
        sent = 0
        chunks: AsyncIterable[bytes | FileRange] = body
        if type(body) is FileBody and can_sendfile(connection.stream):
            chunks = body.pieces()
        async for chunk in chunks:
            if not isinstance(chunk, (bytes, FileRange)):
                raise TypeError(f"a streamed body must yield bytes, not {type(chunk).__name__}")
            if chunk:
                sent += len(chunk)
                for piece in proto.send_data(chunk):
                    await send(piece)
                scope.deadline = _INF
        await send(proto.end_response())
        connection.response_open = False
        return sent

    async def _close_body(self, body: AsyncIterable[bytes], when: str) -> None:
        # Closing the body is the handler's work (a WSGI thread to join, a pooled
        # resource to give back): no write deadline over it. A write timeout that
        # already fired stays fired (cancel_called is sticky).
        self._connection.scope.deadline = _INF
        try:
            aclose: Callable[[], Awaitable[object]] | None = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        except BaseException as raised:
            failure, rest = split_failure(raised)
            if failure is not None:
                self._connection.counters.handler_errors += 1
                error_logger.error(
                    "closing the response body of %r failed %s",
                    self.request,
                    when,
                    exc_info=failure,
                )
            if rest is not None:
                raise rest from None

    # --- The end -----------------------------------------------------------------------------

    def end(self) -> None:
        """The exchange is over for the handler: no more body, a read in flight is
        cancelled, and ``wait_disconnected`` returns."""
        self._over = True
        if self._reader is not None:
            self._reader.cancel()
        if self._over_event is not None:
            self._over_event.set()

    def release(self) -> None:
        """The connection is done with this exchange: drop what ties it in cycles (its
        request, which holds it as its body; its body's failure, whose traceback holds
        the frames that hold it), so that it is freed now, not by the garbage collector.
        A read after this raises ``BodyUnavailable``, whatever the body's failure was."""
        self.request = None
        self._released = True
        self._error = None

    async def close(self) -> None:
        """:meth:`end`, then wait until no read is in flight."""
        self.end()
        done = self._read_done
        if done is not None:
            await done.wait()
