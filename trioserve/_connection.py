"""One task per connection: the only code that reads or writes a client's stream.

Rules for this module:
1. Each phase of a connection runs under a deadline that governs exactly that phase
   (Config says how long):

   ====================  ==========================================  ===============
   phase                 deadline                                    on expiry
   ====================  ==========================================  ===============
   idle, first request   accept + header_timeout                     close quietly
   idle, kept alive      end of last response + keep_alive_timeout   close quietly
   request head          first byte (accept, for the first request)  408, close
                         + header_timeout, never reset by progress
   request body          body_timeout without a byte, or the         408 (raised
                         minimum average rate after the grace        into the
                                                                     handler), close
   writing               write_timeout without progress              abort
   ====================  ==========================================  ===============

   The handler itself has no deadline: it is the application's business.
   A connection whose idle wait brought only empty lines (a stray CRLF, which RFC
   9112 2.2 says to ignore) is still idle: same deadline, and still closed at once
   on shutdown.
   The phases of the connection task share one cancel scope whose deadline is moved
   from phase to phase (a new scope per read or write costs three times as much);
   ``self._phase`` says, when the scope fires, which deadline it was. Body reads,
   which handlers may do from other tasks, get a scope of their own.
2. Nothing here is shielded from cancellation, so shutdown and deadlines act even
   while a send is stuck on a client that does not read.
3. The handler runs in this task (no task per request). A watcher task that notices
   a vanished client is started only if the handler suspends after the request body
   is complete (see ``_run_inline``): a handler that answers at once costs no task.
   A handler with ``watch_disconnect = False`` (the ASGI adapter) gets a watcher only
   when someone awaits ``Request.wait_disconnected()``.
4. Errors are sorted at this boundary: protocol refusals get their status and a
   close; a handler failure before the response gets a 500; anything after the
   response started aborts the connection, never a truncated response that looks
   complete. An abort closes with a TCP reset, so that even a close-delimited body
   (HTTP/1.0) cut short reaches the client as an error, not as a clean end; so does
   the shutdown cut-off of a response in progress. Once the end of a response is on
   the wire, a failure to close its body is logged and the connection goes on.
5. Only this connection's own tasks touch the stream, and never two at once in
   the same direction. Handlers and applications may read the body from tasks of
   their own: such a read is done for them by a reader task in this connection's
   nursery (see ``_Exchange``); a ``100 Continue`` is owed to h11 synchronously and
   written by the reader task or by this task's next write, whichever comes first,
   never under a handler's cancel scope.
"""

from __future__ import annotations

import logging
import socket
import struct
import types
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Generator
from typing import Final, NoReturn, TypeVar

import h11  # only for LocalProtocolError raised by body framing on our side
import trio

from ._config import Config
from ._errors import (
    BodyUnavailable,
    ClientDisconnected,
    HTTPError,
    RequestTimeout,
    single_leaf,
)
from ._handler import Handler, watches_disconnect
from ._headers import Headers
from ._http11 import END, NEED_DATA, HTTP11Protocol, RequestHead
from ._logging import access_logger, error_logger, log_access, log_refusal
from ._request import Request
from ._response import Response
from ._tracker import ConnectionTracker

__all__ = ["HTTPConnection"]

T = TypeVar("T")

#: Bytes asked of the stream per read (trio's own default for SocketStream).
RECEIVE_SIZE: Final = 65536
#: Bytes asked per read of a large request body: four times fewer reads (and h11
#: rounds) per megabyte, as asyncio's transports read (256 KiB).
BODY_RECEIVE_SIZE: Final = 256 * 1024
#: Large bodies are written in pieces of this size, each under its own write deadline,
#: so ``write_timeout`` measures lack of progress rather than total transfer time.
WRITE_CHUNK: Final = 256 * 1024
#: Before closing a connection after a response, we stop writing and read (and throw
#: away) what the client still sends, for at most this long and this much, so the
#: kernel does not answer unread data with a reset that destroys the response in
#: flight (RFC 9112 9.6 "lingering close").
LINGER_SECONDS: Final = 1.0
LINGER_BYTES: Final = 256 * 1024

_debug_enabled = error_logger.isEnabledFor
_INF: Final = float("inf")

# What the connection task is doing, so that when its scope fires we know why.
_IDLE: Final = 0  # waiting for a request's first bytes (tracker may cancel: close)
_HEAD: Final = 1  # receiving the rest of a request head (deadline: 408)
_HANDLER: Final = 2  # running the handler or a streamed body (no deadline)
_WRITE: Final = 3  # writing (deadline: abort)


class _Abort(Exception):
    """The connection must be cut off at once; the cause was already counted and logged."""


class HTTPConnection:
    """Serves HTTP/1.1 on one stream until it closes. Build one per connection."""

    __slots__ = (
        "_auto_watch",
        "_body_waited",
        "_client",
        "_config",
        "_continue_sending",
        "_counters",
        "_current",
        "_current_request",
        "_evicted",
        "_first",
        "_gone",
        "_handler",
        "_in_handler",
        "_nursery",
        "_owed",
        "_peer_eof",
        "_phase",
        "_proto",
        "_response_open",
        "_scheme",
        "_scope",
        "_server",
        "_stream",
        "_task",
        "_tracker",
        "_watch_allowed",
        "_watcher_done",
        "_watcher_scope",
        "_watcher_wanted",
        "_write_failed",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        config: Config,
        tracker: ConnectionTracker,
        *,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
        scheme: str = "http",
    ) -> None:
        self._stream = stream
        self._handler = handler
        self._config = config
        self._tracker = tracker
        self._counters = tracker.counters
        self._client = client
        self._server = server
        self._scheme = scheme
        self._proto = HTTP11Protocol(config)
        self._current: _Exchange | None = None
        self._peer_eof = False
        self._evicted = False
        self._body_waited = 0.0
        self._scope = trio.CancelScope()  # replaced by the one serve() enters
        self._phase = _IDLE
        self._in_handler = False
        self._gone = False  # the watcher cancelled the handler: the client is gone
        self._first = True
        self._current_request: Request | None = None
        self._watcher_wanted = False
        self._watch_allowed = False  # from the handler's start until its response is out
        # Adapters whose applications learn of a vanished client their own way (ASGI's
        # http.disconnect) set ``watch_disconnect = False`` on the handler: the watcher
        # is then started only when someone calls Request.wait_disconnected().
        self._auto_watch = watches_disconnect(handler)
        self._watcher_scope: trio.CancelScope | None = None
        self._watcher_done: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._task: trio.lowlevel.Task | None = None  # the connection task, once serving
        # A 100 Continue h11 was told about and nobody has written yet (rule 5), and
        # the event of its write while the reader task does it.
        self._owed = b""
        self._continue_sending: trio.Event | None = None
        self._write_failed = False  # a write was cut short: nothing more may be sent
        self._response_open = False  # a response head is out and its end is not

    # --- The connection loop -----------------------------------------------------------

    async def serve(self) -> None:
        """Serve requests until the connection ends; always closes the stream.

        Never raises for anything a client does; lets cancellation propagate.
        """
        tracker = self._tracker
        tracker.connection_opened()
        self._task = trio.lowlevel.current_task()
        graceful = aborted = finished = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    with trio.CancelScope() as self._scope:
                        graceful = await self._serve_requests()
                    if self._scope.cancelled_caught:
                        graceful = await self._scope_fired()
                except _Abort:
                    aborted = True
                except Exception:
                    # A bug of ours must cost one connection, never the server.
                    aborted = True
                    error_logger.exception("internal error serving %s", self._client)
                finally:
                    nursery.cancel_scope.cancel()
            finished = True
            if aborted:
                self._counters.connections_aborted += 1
        finally:
            if not finished and tracker.shutting_down:
                # Cancelled at Config.shutdown_timeout (or by a forced shutdown).
                self._counters.shutdown_cutoffs += 1
            tracker.connection_closed(evicted=self._evicted)
            if graceful:
                await self._close_gracefully()
            else:
                if aborted or self._response_open:
                    _reset(self._stream)
                await trio.aclose_forcefully(self._stream)

    async def _scope_fired(self) -> bool:
        """The connection scope was cancelled: act on the phase it caught us in.

        Returns True if a response was sent (close gracefully); raises _Abort to cut
        the connection off.
        """
        phase = self._phase
        if self._gone:
            self._client_gone(self._current_request)
            raise _Abort
        if phase == _IDLE:
            # Idle too long (shutdown and eviction are seen before this can happen).
            self._count_idle_timeout()
            return False
        if phase == _HEAD:
            self._counters.count_refusal(408)
            with trio.CancelScope() as self._scope:  # a fresh scope for the answer
                await self._send_error(408)
            if self._scope.cancelled_caught:
                self._write_timed_out()
            if access_logger.isEnabledFor(logging.INFO):
                log_refusal(self._client, 408)
            return True
        if phase == _WRITE:
            self._write_timed_out()
        # A _HANDLER phase has no deadline and only the watcher (handled above) cancels
        # it: reaching here is a bug of ours, which serve() logs and survives.
        raise AssertionError(f"connection scope fired in phase {phase}")

    async def _serve_requests(self) -> bool:
        """The request loop. Returns True if a response was sent before the close."""
        config = self._config
        proto = self._proto
        deadline = trio.current_time() + config.header_timeout
        served = 0
        while True:
            try:
                head = await self._receive_head(deadline, first=served == 0)
            except HTTPError as exc:
                await self._send_error(exc.status_code)
                if access_logger.isEnabledFor(logging.INFO):
                    log_refusal(self._client, exc.status_code)
                return True
            if head is None:
                return False
            served += 1
            last = served >= config.max_requests_per_connection
            if not await self._exchange(head, last=last):
                return True
            if not proto.start_next_cycle():
                return True
            deadline = trio.current_time() + config.keep_alive_timeout

    # --- Receiving the head ------------------------------------------------------------

    async def _receive_head(self, idle_deadline: float, *, first: bool) -> RequestHead | None:
        """The next request head, or None when the connection should close quietly.

        ``idle_deadline`` bounds the wait for the first byte. Raises HTTPError for a
        head that is refused (its status is counted here).
        """
        proto = self._proto
        try:
            head = proto.next_request()
            if head is NEED_DATA:
                if not proto.has_partial_request:
                    if not await self._receive_first_bytes(idle_deadline, first=first):
                        return None
                    head = proto.next_request()
                # The head deadline runs from accept for a first request (the idle
                # deadline already is accept + header_timeout), and from the first
                # byte for later ones. Progress never extends it (slowloris).
                if head is NEED_DATA:
                    self._phase = _HEAD
                    if not first:
                        self._scope.deadline = trio.current_time() + self._config.header_timeout
                while head is NEED_DATA:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                    if self._scope.cancel_called:
                        # The deadline passed as the bytes came: too late all the same.
                        # Deliver the cancellation now, in the _HEAD phase (408).
                        await trio.lowlevel.checkpoint()
                    if not data:
                        return None  # closed mid-head: nobody to answer
                    proto.receive_data(data)
                    head = proto.next_request()
        except HTTPError as exc:
            self._counters.count_refusal(exc.status_code)
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        assert isinstance(head, RequestHead)
        return head

    async def _receive_first_bytes(self, deadline: float, *, first: bool) -> bool:
        """Wait, idle, for the first bytes of a request. False: close quietly.

        The wait is registered with the tracker, which cancels the connection scope to
        close this connection (graceful shutdown, or room needed at
        ``max_connections``). A connection that never sent a byte by
        ``header_timeout`` is closed quietly too (counted as a header timeout): nobody
        may be there to read a 408, and a port scanner or a browser's speculative
        preconnect deserves no answer.
        """
        tracker = self._tracker
        scope = self._scope
        self._phase = _IDLE
        self._first = first
        scope.deadline = deadline
        proto = self._proto
        tracker.enter_idle(scope)
        try:
            # Still idle until a byte of a request line comes: empty lines before it
            # are dropped as they arrive (RFC 9112 2.2), and the deadline stays.
            while data := await self._stream.receive_some(RECEIVE_SIZE):
                proto.receive_data(data)
                if proto.has_partial_request:
                    break
        finally:
            self._evicted = tracker.leave_idle(scope)
        if scope.cancel_called:
            # Evicted, shut down, or timed out just as bytes came: the close won the
            # race, and the bytes are dropped as if it had come first.
            if not self._evicted:
                self._count_idle_timeout()
            return False
        return bool(data)

    def _count_idle_timeout(self) -> None:
        if self._tracker.shutting_down or self._evicted:
            return
        if self._first:
            self._counters.header_timeouts += 1
        else:
            self._counters.keep_alive_timeouts += 1

    # --- One request/response exchange ---------------------------------------------------

    async def _exchange(self, head: RequestHead, *, last: bool) -> bool:
        """Run the handler and send its response. Returns whether to keep the
        connection for another request."""
        self._body_waited = 0.0
        exchange = self._current = _Exchange(self)
        request = Request(
            method=head.method.decode("ascii"),
            target=head.target.decode("latin-1"),
            headers=Headers.from_raw(head.headers),
            http_version=head.http_version,
            client=self._client,
            server=self._server,
            scheme=self._scheme,
            body=exchange,
            shutdown_event=self._tracker.shutdown_event,
        )
        self._current_request = request
        try:
            return await self._respond(request, exchange, last=last)
        finally:
            self._current = None
            exchange.end()  # the request's body can no longer be read

    async def _respond(self, request: Request, exchange: _Exchange, *, last: bool) -> bool:
        started = trio.current_time()
        try:
            response: object = await self._call_handler(request)
        except _Abort:
            raise
        except BaseException as raised:
            exc = single_leaf(raised)
            if isinstance(exc, HTTPError):
                await self._send_error(exc.status_code)
                self._log_access(request, exc.status_code, 0, started)
                return False
            if isinstance(exc, ClientDisconnected):
                self._client_gone(request)
                raise _Abort from None
            if not isinstance(exc, Exception):
                raise
            self._counters.handler_errors += 1
            error_logger.error(
                "handler %r raised while serving %r", self._handler, request, exc_info=exc
            )
            await self._send_error(500)
            self._log_access(request, 500, 0, started)
            return False
        if not isinstance(response, Response):
            self._counters.handler_errors += 1
            error_logger.error(
                "handler %r returned %r, not a trioserve.Response", self._handler, response
            )
            await self._send_error(500)
            self._log_access(request, 500, 0, started)
            return False

        proto = self._proto
        # EOF behind complete pipelined requests is a half-close (RFC 9112 9.6): they
        # are answered first, and the last answer says Connection: close.
        close = (
            last
            or (self._peer_eof and not proto.has_pipelined_data)
            or self._tracker.shutting_down
            or proto.unread_body_forces_close(self._config.max_drain_size)
        )
        size = await self._send_response(request, response, close=close)
        await self._stop_watcher()
        self._counters.requests_served += 1
        self._counters.count_response(response.status)
        self._log_access(request, response.status, size, started)
        if close or (self._peer_eof and not proto.has_pipelined_data):
            return False
        if not proto.body_complete:
            self._scope.deadline = _INF  # the drain has body deadlines of its own
            await exchange.close()  # a read still in flight for the handler ends first
            return await exchange.drain(self._config.max_drain_size)
        return True

    async def _call_handler(self, request: Request) -> object:
        """Run the handler in this task; cancelled if the client vanishes meanwhile."""
        self._phase = _HANDLER
        self._watcher_wanted = self._auto_watch
        self._watch_allowed = True
        self._in_handler = True
        try:
            awaitable = self._handler(request)
            if type(awaitable) is types.CoroutineType or isinstance(awaitable, Coroutine):
                return await _run_inline(awaitable, self._on_handler_suspend)
            self._on_handler_suspend()
            return await awaitable
        finally:
            self._in_handler = False
            self._watcher_wanted = False

    def _client_gone(self, request: Request | None) -> None:
        self._counters.client_disconnects += 1
        if _debug_enabled(logging.DEBUG):
            error_logger.debug("client %s went away during %r", self._client, request)

    # --- Watching for a vanished client while the handler runs -------------------------

    def _on_handler_suspend(self) -> None:
        # Called each time the handler yields to trio. The idle or head deadline still
        # set on the scope cannot fire before the handler's first checkpoint, so it is
        # lifted only now: a handler that answers at once costs no deadline move.
        if self._scope.deadline != _INF:
            self._scope.deadline = _INF
        # Start the watcher once the body is complete: before that, the body reads
        # themselves notice a vanished client.
        if self._watcher_wanted and self._proto.body_complete:
            self._watcher_wanted = False
            self._start_watcher()

    def watch_exchange(self, exchange: _Exchange) -> None:
        """Someone waits for ``exchange``'s client to go away: watch for it."""
        if exchange is self._current:
            self._start_watcher()

    def _start_watcher(self) -> None:
        # Only while the exchange runs and the body is in (until then the body reads
        # notice a vanished client, and only one task may read the stream at a time).
        if (
            self._watcher_scope is None
            and self._watch_allowed
            and self._proto.body_complete
            and not self._peer_eof
            and (self._current is None or not self._current.reading)
        ):
            assert self._nursery is not None
            self._watcher_scope = trio.CancelScope()
            self._watcher_done = trio.Event()
            self._nursery.start_soon(self._watch, self._watcher_scope, self._watcher_done)

    async def _watch(self, scope: trio.CancelScope, done: trio.Event) -> None:
        proto = self._proto
        limit = self._config.max_header_size
        buffered = 0
        try:
            with scope:
                while buffered < limit:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    # Pipelined requests: kept for after this response.
                    proto.receive_data(data)
                    buffered += len(data)
                else:
                    await trio.sleep_forever()  # enough buffered; the rest can wait
                self._peer_gone()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._peer_gone()
        finally:
            done.set()

    def _peer_gone(self) -> None:
        self._peer_eof = True
        # EOF behind pipelined requests is a half-close: they are still answered.
        if self._proto.has_pipelined_data:
            return
        if self._in_handler:
            self._gone = True
            self._scope.cancel()
        if self._current is not None:
            self._current.end()

    async def _stop_watcher(self) -> None:
        self._watch_allowed = False
        scope, done = self._watcher_scope, self._watcher_done
        if scope is not None and done is not None:
            self._watcher_scope = self._watcher_done = None
            scope.cancel()
            await done.wait()

    # --- The request body --------------------------------------------------------------

    async def _receive_body_bytes(self) -> None:
        """Read more body under the body deadlines (Config.body_timeout and rate).

        Rate rule: after ``body_rate_grace`` seconds spent waiting for this body, the
        body must have averaged ``body_min_rate`` bytes per second of waiting. Time
        the handler spends between reads does not count against the client.
        """
        config = self._config
        now = trio.current_time()
        allowed = config.body_timeout
        if config.body_min_rate > 0:
            earned = max(config.body_rate_grace, self._proto.body_received / config.body_min_rate)
            allowed = min(allowed, earned - self._body_waited)
        try:
            with trio.CancelScope(deadline=now + max(allowed, 0.0)) as scope:
                data = await self._stream.receive_some(BODY_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._peer_gone()
            raise ClientDisconnected("connection lost mid-body") from exc
        finally:
            self._body_waited += trio.current_time() - now
        if scope.cancelled_caught:
            self._counters.body_timeouts += 1
            raise RequestTimeout("request body too slow")
        if not data:
            self._peer_gone()
            raise ClientDisconnected("client closed the connection mid-body")
        self._proto.receive_data(data)

    def _owe_continue(self) -> None:
        """Tell h11 that ``100 Continue`` is sent; the bytes wait in ``_owed`` (rule 5)."""
        self._counters.responses_1xx += 1
        self._owed += self._proto.informational_continue()

    async def _flush_continue(self) -> None:
        """Write an owed ``100 Continue`` (the reader task, before it reads)."""
        data = self._owed
        if not data:
            return
        self._owed = b""
        sending = self._continue_sending = trio.Event()
        try:
            with trio.move_on_after(self._config.write_timeout) as scope:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._write_cut_short()
            self._peer_gone()
            raise ClientDisconnected("connection lost before 100 Continue") from exc
        finally:
            self._continue_sending = None
            sending.set()
        if scope.cancelled_caught:
            self._write_cut_short()
            self._counters.write_timeouts += 1
            raise ClientDisconnected("client does not read its 100 Continue")

    def _write_cut_short(self) -> None:
        # h11 believes the bytes went out and the stream may hold part of them:
        # nothing more may be written on this connection.
        self._proto.send_failed()
        self._write_failed = True

    # --- Sending -------------------------------------------------------------------------

    async def _send_response(self, request: Request, response: Response, *, close: bool) -> int:
        """Send a whole response; returns the body bytes sent (for the access log)."""
        proto = self._proto
        body = response.body
        if isinstance(body, bytes):
            head, body_allowed = proto.start_response(
                response.status, response.headers, len(body), close=close
            )
            if not body_allowed or not body:
                await self._send(head + proto.end_response())
                return 0
            if len(body) <= WRITE_CHUNK:
                await self._send(head + b"".join(proto.send_data(body)) + proto.end_response())
            else:
                await self._send(head)
                for piece in proto.send_data(body):
                    await self._send(piece)
                await self._send(proto.end_response())
            return len(body)
        return await self._send_streamed(request, response.status, response.headers, body, close)

    async def _send_streamed(
        self,
        request: Request,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes],
        close: bool,
    ) -> int:
        """Send a head and a streamed body; the body is closed whatever happens.

        Once the end of the response is on the wire, a failure to close the body is
        the application's (a pooled resource not given back): it is logged, and the
        connection goes on with the next request.
        """
        try:
            try:
                sent = await self._stream_body(status, headers, body, close)
            except BaseException:
                # Closing the body is the handler's work (a WSGI thread to join, a
                # pooled resource to give back): no write deadline over it. A write
                # timeout that already fired stays fired (cancel_called is sticky).
                self._scope.deadline = _INF
                await _aclose_iterable(body)
                raise
        except _Abort:
            raise
        except h11.LocalProtocolError as exc:
            # The body ran long or ended short of its declared Content-Length.
            self._handler_failed_mid_response(request, exc)
            raise _Abort from None
        except ClientDisconnected:
            # The body streamed the request body and the client went away.
            self._client_gone(request)
            raise _Abort from None
        except HTTPError as exc:
            # Refused while streaming (a request body too slow or too large, already
            # counted where it was detected): too late for its status, so cut off.
            if _debug_enabled(logging.DEBUG):
                error_logger.debug("%r refused mid-response (%s); aborting", request, exc)
            raise _Abort from None
        except Exception as exc:
            self._handler_failed_mid_response(request, exc)
            raise _Abort from None
        self._scope.deadline = _INF
        try:
            await _aclose_iterable(body)
        except Exception as exc:
            self._counters.handler_errors += 1
            error_logger.error(
                "closing the response body of %r failed after the response was complete",
                request,
                exc_info=exc,
            )
        return sent

    async def _stream_body(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes],
        close: bool,
    ) -> int:
        proto = self._proto
        head, body_allowed = proto.start_response(status, headers, None, close=close)
        self._response_open = True
        await self._send(head)
        if not body_allowed:  # HEAD, 204, 304: the body is never iterated
            await self._send(proto.end_response())
            self._response_open = False
            return 0
        # The body may take its time to produce each chunk: no write deadline while it
        # does (the handler's work is not the client's slowness).
        scope = self._scope
        scope.deadline = _INF
        sent = 0
        async for chunk in body:
            if not isinstance(chunk, bytes):
                raise TypeError(f"a streamed body must yield bytes, not {type(chunk).__name__}")
            if chunk:
                sent += len(chunk)
                for piece in proto.send_data(chunk):
                    await self._send(piece)
                scope.deadline = _INF
        await self._send(proto.end_response())
        self._response_open = False
        return sent

    def _handler_failed_mid_response(self, request: Request, exc: Exception) -> None:
        self._counters.handler_errors += 1
        error_logger.error(
            "response body of %r failed after the response started; aborting the connection",
            request,
            exc_info=exc,
        )

    async def _send(self, data: bytes) -> None:
        """Write under the write deadline (the connection scope, in the _WRITE phase).

        Large data goes in WRITE_CHUNK pieces, each with a fresh deadline. A broken
        client aborts here; a stuck one makes the scope fire (see _scope_fired).
        """
        scope = self._scope
        timeout = self._config.write_timeout
        phase = self._phase
        self._phase = _WRITE
        try:
            if self._owed or self._continue_sending is not None:
                scope.deadline = trio.current_time() + timeout
                data = await self._after_continue(data)
            if len(data) <= WRITE_CHUNK:
                scope.deadline = trio.current_time() + timeout
                await self._stream.send_all(data)
            else:
                view = memoryview(data)
                for offset in range(0, len(view), WRITE_CHUNK):
                    scope.deadline = trio.current_time() + timeout
                    await self._stream.send_all(view[offset : offset + WRITE_CHUNK])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._proto.send_failed()
            self._counters.client_disconnects += 1
            if _debug_enabled(logging.DEBUG):
                error_logger.debug("client %s went away while we wrote", self._client)
            raise _Abort from None
        if scope.cancel_called:
            # The deadline passed as the last bytes went out (send_all does not look
            # for cancellation after its last send). Deliver it now, in the _WRITE
            # phase, rather than in whatever phase comes next (a next handler!).
            await trio.lowlevel.checkpoint()
        self._phase = phase

    async def _after_continue(self, data: bytes) -> bytes:
        """An owed ``100 Continue`` goes out before ``data``, whoever writes it."""
        while self._continue_sending is not None:
            await self._continue_sending.wait()  # the reader task is writing it
        if self._write_failed:
            raise _Abort
        owed, self._owed = self._owed, b""
        return owed + data

    def _write_timed_out(self) -> NoReturn:
        self._proto.send_failed()
        self._counters.write_timeouts += 1
        if _debug_enabled(logging.DEBUG):
            error_logger.debug("client %s stopped reading; aborting", self._client)
        raise _Abort

    async def _send_error(self, status: int) -> None:
        """Send a complete error response with ``Connection: close``, if still possible."""
        await self._stop_watcher()
        proto = self._proto
        if proto.can_send_error_response():
            self._counters.count_response(status)
            await self._send(proto.error_response(status))

    async def _close_gracefully(self) -> None:
        """Half-close, read what the client still sends for a moment, then close."""
        stream = self._stream
        try:
            with trio.move_on_after(LINGER_SECONDS):
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                received = 0
                while received < LINGER_BYTES and not self._peer_eof:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    received += len(data)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.BusyResourceError,
        ):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    def _log_access(self, request: Request, status: int, size: int, started: float) -> None:
        if access_logger.isEnabledFor(logging.INFO):
            headers = request.headers
            log_access(
                request.client,
                request.method,
                request.target,
                request.http_version,
                status,
                size,
                headers.get("referer"),
                headers.get("user-agent"),
                trio.current_time() - started,
            )


class _Exchange:
    """One request's view of its connection: its body, and whether it is over.

    Rules (the connection's rule 5, in detail):
    1. At most one read of the stream is in flight (``_read_done`` is its event).
       The connection task reads for itself when it is the one asking (a handler
       running inline, a streamed response that reads the request); any other task
       (an ASGI application, a handler's own child) gets its read done by a reader
       task in the connection's nursery, and waits for it.
    2. Reading is safe to cancel: an asker that is cancelled has taken nothing, and
       what a read brings waits in h11's buffer for the next ask. (A cancelled
       ``receive_some`` loses no byte on trio's sockets, TLS streams once the
       handshake is done, and memory streams.)
    3. ``100 Continue`` is owed the moment a read needs the client's bytes, and
       written by connection code that no handler's cancel scope covers (the reader
       task, or the connection's next write): a cancelled asker can never leave h11
       believing it was sent when it was not, or a half-written one on the wire.
    4. When the exchange is over (the response is complete, or it failed), reads
       raise :class:`BodyUnavailable`, a read in flight is cancelled, and
       :meth:`close` returns once it has stopped, so the connection may drain.

    The body can be read only while the exchange runs; ``wait_disconnected`` returns
    once the client is gone or the response has been sent (or the exchange failed).
    """

    __slots__ = (
        "_connection",
        "_error",
        "_over",
        "_over_event",
        "_peeked",
        "_read_done",
        "_reader",
    )

    def __init__(self, connection: HTTPConnection) -> None:
        self._connection = connection
        self._over = False
        self._over_event: trio.Event | None = None  # made only if someone waits
        self._error: Exception | None = None  # the body failed: every read raises it
        self._peeked: bytes | None = None  # a piece taken from h11 ahead of its ask
        self._read_done: trio.Event | None = None  # set when the read in flight ends
        self._reader: trio.CancelScope | None = None  # the reader task's, while it runs

    @property
    def reading(self) -> bool:
        """Whether a read of the stream is in flight for this exchange."""
        return self._read_done is not None

    async def receive_body_chunk(self) -> bytes:
        """The next piece of the request body; ``b""`` at its end (see the rules)."""
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
        proto = self._connection._proto
        try:
            event = proto.next_body_chunk()
        except HTTPError as exc:
            raise self._refused(exc) from None
        if not isinstance(event, bytes):
            return b"" if event is END else None
        # Look one step ahead, with no I/O: a body whose last bytes are in is then
        # known complete at once (the disconnect watcher may start), and a refusal
        # behind this piece is kept for the next read rather than losing the piece.
        try:
            ahead = proto.next_body_chunk()
        except HTTPError as exc:
            self._refused(exc)
        else:
            if isinstance(ahead, bytes):
                self._peeked = ahead
        return event

    def _refused(self, exc: HTTPError) -> HTTPError:
        self._connection._counters.count_refusal(exc.status_code)
        self._error = exc
        return exc

    async def _read(self) -> None:
        """Bring more body bytes into h11's buffer, or a failure into ``_error``."""
        connection = self._connection
        done = self._read_done
        if done is None:
            waiting_for_continue = connection._proto.they_are_waiting_for_100_continue
            if trio.lowlevel.current_task() is connection._task and not waiting_for_continue:
                await self.read_inline()
                return
            if waiting_for_continue:
                connection._owe_continue()
            done = self._read_done = trio.Event()
            reader = self._reader = trio.CancelScope()
            assert connection._nursery is not None
            connection._nursery.start_soon(self._read_for_others, reader, done)
        await done.wait()  # the read goes on if this task is cancelled (rule 2)

    async def read_inline(self) -> None:
        """Read in the connection task (no read may be in flight)."""
        done = self._read_done = trio.Event()
        try:
            await self._connection._receive_body_bytes()
        except (HTTPError, ClientDisconnected) as exc:
            self._error = exc
        finally:
            self._read_done = None
            done.set()

    async def _read_for_others(self, reader: trio.CancelScope, done: trio.Event) -> None:
        """The reader task: one read, for whichever tasks wait on ``done``."""
        connection = self._connection
        try:
            with reader:
                await connection._flush_continue()
                await connection._receive_body_bytes()
        except Exception as exc:  # HTTPError, ClientDisconnected, or a bug of ours:
            self._error = exc  # raised to the asker, never into the connection nursery
        finally:
            self._reader = None
            self._read_done = None
            done.set()

    async def drain(self, budget: float) -> bool:
        """Read and discard the rest of the body, at most ``budget`` bytes (after
        :meth:`close`, in the connection task). True if it all came."""
        try:
            while True:
                chunk = self._next_chunk()
                if chunk is None:
                    await self.read_inline()
                elif not chunk:
                    return True
                else:
                    budget -= len(chunk)
                    if budget < 0:
                        return False
        except (HTTPError, ClientDisconnected):
            return False

    async def wait_disconnected(self) -> None:
        if self._over:
            await trio.lowlevel.checkpoint()
            return
        self._connection.watch_exchange(self)
        if self._over_event is None:
            self._over_event = trio.Event()
        await self._over_event.wait()

    def end(self) -> None:
        """The exchange is over for the handler: no more body, a read in flight is
        cancelled, and ``wait_disconnected`` returns."""
        self._over = True
        if self._reader is not None:
            self._reader.cancel()
        if self._over_event is not None:
            self._over_event.set()

    async def close(self) -> None:
        """:meth:`end`, then wait until no read is in flight."""
        self.end()
        done = self._read_done
        if done is not None:
            await done.wait()


@types.coroutine
def _run_inline(
    coro: Coroutine[object, object, T], on_suspend: Callable[[], None]
) -> Generator[object, object, T]:
    """Await ``coro``, calling ``on_suspend()`` each time it yields to trio.

    This is exactly ``await coro`` (every value and exception passes through
    unchanged, so cancellation and trio's checkpoints work as usual), plus a hook
    that lets the connection start its disconnect watcher only for handlers that
    actually wait: a handler that returns without suspending costs no extra task.
    """
    to_send: object = None
    to_throw: BaseException | None = None
    while True:
        try:
            if to_throw is None:
                yielded = coro.send(to_send)
            else:
                yielded, to_throw = coro.throw(to_throw), None
        except StopIteration as stop:
            result: T = stop.value
            return result
        on_suspend()
        try:
            to_send = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            to_throw = exc


def _reset(stream: trio.abc.Stream) -> None:
    """Make the coming close a TCP reset: the client sees an error, never the clean
    end that a close-delimited body (HTTP/1.0) cannot tell from a complete one."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed by the peer: nothing left to reset


async def _aclose_iterable(body: AsyncIterable[bytes]) -> None:
    aclose: Callable[[], Awaitable[object]] | None = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
