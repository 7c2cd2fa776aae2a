"""One task per connection: the only code that reads or writes a client's stream.

Rules for this module:
1. Each phase of a connection runs under the deadline ``_phases`` names for it (its
   table is the whole story). The phases of the connection task share one cancel
   scope whose deadline is moved from phase to phase (a new scope per read or write
   costs three times as much); ``self._phase`` says, when the scope fires, which
   deadline it was. Body reads, which handlers may do from other tasks, get a scope
   of their own.
2. Nothing here is shielded from cancellation, so shutdown and deadlines act even
   while a send is stuck on a client that does not read.
3. The handler runs in this task (no task per request); the exchange with it (the
   handler call, the request body, the disconnect watcher, sending its response) is
   ``_exchange``'s, a WebSocket upgrade ``_upgrade``'s; this module keeps the loop,
   the head, and the writes.
4. Errors are sorted at this boundary: protocol refusals get their status and a
   close; a handler failure before the response gets a 500; anything after the
   response started aborts the connection, never a truncated response that looks
   complete. An abort closes with a TCP reset, so that even a close-delimited body
   (HTTP/1.0) cut short reaches the client as an error, not as a clean end; so does
   the shutdown cut-off of a response in progress. Once the end of a response is on
   the wire, a failure to close its body is logged and the connection goes on.
5. Only this module, ``_exchange`` and ``_closing`` touch the stream (``sendfile``
   through ``send``; on a plain socket reads and writes go through ``self.io``, see
   ``_socketio``), from the connection's own tasks (helpers run by ``_tasks``), never
   two in one direction.
   A ``100 Continue`` is owed to h11 synchronously (``owe_continue``) and written by
   the exchange's reader task or this task's next write, never under a handler's scope.
6. A whole response (head and body in one piece) that the socket buffer takes at
   once is written without a checkpoint (``SocketIO.send_now``): no write deadline to
   move, no trip through the scheduler. Nothing can fire meanwhile, since deadlines
   act only at checkpoints (and nothing reads ``cancel_called``, which fires a passed
   deadline); the write deadline is set only for what has to wait. The connection
   yields at its next read, or before a pipelined request already in hand.
"""

from __future__ import annotations

import logging
from typing import Final, NoReturn

import trio

from ._closing import close
from ._config import Config
from ._engines import Engine
from ._errors import ClientDisconnected, HTTPError
from ._exchange import RECEIVE_SIZE, WRITE_CHUNK, Abort, Exchange
from ._filebody import FileRange
from ._forwarded import TrustedPeers
from ._handler import Handler, watches_disconnect
from ._headers import Headers
from ._http11 import HEAD_INCOMPLETE, HTTP11Protocol, RequestHead
from ._logging import access_logger, error_logger, log_access, log_refusal
from ._opening import Ends, forward, open_tls, read_proxy
from ._phases import HANDLER, HEAD, IDLE, WRITE, Phase
from ._request import Request, TLSInfo
from ._response import Response
from ._socketio import SocketIO, io_for
from ._tasks import ConnectionTasks, Task
from ._tracker import ConnectionTracker
from ._upgrade import end_websocket, refuse_handshake, upgrade_not_taken

__all__ = ["HTTPConnection"]

_debug_enabled = error_logger.isEnabledFor
_INF: Final = float("inf")


class HTTPConnection:
    """Serves HTTP/1.1 on one stream until it closes. Build one per connection."""

    __slots__ = (
        "_continue_sending",
        "_current",
        "_deadline",
        "_ends",
        "_evicted",
        "_failed",
        "_handler",
        "_last",
        "_late",
        "_nursery",
        "_owed",
        "_phase",
        "_served",
        "_tasks",
        "_tls",
        "_tracker",
        "_trust",
        "_watch",
        "_write_failed",
        "client",
        "config",
        "counters",
        "io",
        "peer_eof",
        "proto",
        "response_open",
        "scope",
        "stream",
        "task",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        config: Config,
        tracker: ConnectionTracker,
        ends: Ends,
        trust: TrustedPeers,
        engine: Engine,
    ) -> None:
        # Shared with the exchange (``_exchange``), which reads the body and watches.
        self.stream = stream
        self.io = io_for(stream)  # reads and writes go through it (see _socketio)
        self.config = config
        self.counters = tracker.counters
        self.proto = HTTP11Protocol(config, engine)
        self.scope = trio.CancelScope()  # replaced by the one serve() enters
        self.task: trio.lowlevel.Task | None = None  # the connection task, once serving
        self.peer_eof = False  # the client sent EOF, or the connection broke
        self._handler = handler
        self._tracker = tracker
        # Open from here (max_connections counts it before its task starts): the
        # caller must run serve(), which counts it closed however it ends.
        tracker.connection_opened()
        self.client = ends.client
        self._ends = ends
        self._trust = trust
        self._tls: TLSInfo | None = None
        self._current: Exchange | None = None
        self._evicted = False
        self._served = 0  # requests whose head was received
        # A request came as the idle wait was cancelled: serve it in a fresh scope.
        self._late = self._last = False
        self._deadline = _INF  # the deadline of that wait
        self._phase = IDLE
        # Adapters whose applications learn of a vanished client their own way (ASGI's
        # http.disconnect) set ``watch_disconnect = False``: a watcher only when asked.
        self._watch = watches_disconnect(handler)
        self._nursery: trio.Nursery | None = None  # for helper tasks: see _tasks
        self._tasks: ConnectionTasks | None = None  # made when the first one starts
        self._failed = False  # a helper task failed: abort
        # A 100 Continue owed (rule 5), and the event of its write by the reader task.
        self._owed = b""
        self._continue_sending: trio.Event | None = None
        self._write_failed = False  # a write was cut short: nothing more may be sent
        self.response_open = False  # a response head is out and its end is not

    # --- The connection loop -----------------------------------------------------------

    async def serve(self, nursery: trio.Nursery | None = None) -> None:
        """Serve requests until the connection ends; always closes the stream.

        ``nursery`` runs the connection's helper tasks (see ``_tasks``); it must
        outlive this call. None: a nursery of its own (a kilobyte more while it lasts).
        Never raises for anything a client does; lets cancellation propagate.
        """
        if nursery is None:
            async with trio.open_nursery() as own:
                await self.serve(own)
            return
        tracker = self._tracker
        self._nursery = nursery
        self.task = trio.lowlevel.current_task()
        graceful = aborted = finished = False
        try:
            try:
                while True:
                    with trio.CancelScope() as self.scope:
                        graceful = await self._serve_requests()
                    if self.scope.cancelled_caught:
                        graceful = await self._scope_fired()
                    elif self._late:
                        continue  # a request came as the idle wait ended: serve it
                    break
            except Abort:
                aborted = True
            except Exception:
                # A bug of ours must cost one connection, never the server.
                aborted = True
                error_logger.exception("internal error serving %s", self.client)
            finally:
                if self._tasks is not None:
                    await self._tasks.stop()
            finished = True
            if aborted:
                self.counters.connections_aborted += 1
        finally:
            if not finished and tracker.shutting_down:
                # Cancelled at Config.shutdown_timeout (or by a forced shutdown).
                self.counters.shutdown_cutoffs += 1
            tracker.connection_closed(evicted=self._evicted)
            if self._current is not None:  # freed now, not by the garbage collector
                self._current.release()
                self._current = None
            self._tasks = None
            reset = aborted or self.response_open
            await close(self.stream, graceful=graceful, reset=reset, peer_eof=self.peer_eof)

    async def _scope_fired(self) -> bool:
        """The connection scope was cancelled: act on the phase it caught us in.

        Returns True if a response was sent (close gracefully); raises Abort to cut
        the connection off.
        """
        if self._failed:
            raise Abort
        phase = self._phase
        current = self._current
        if current is not None and current.gone:
            current.count_client_gone()
            raise Abort
        if phase is IDLE or phase is Phase.HANDSHAKE or phase is Phase.PROXY_HEADER:
            self._count_idle_timeout()  # or closed for a shutdown or an eviction
            return False
        if phase == HEAD:
            self.counters.count_refusal(408)
            with trio.CancelScope() as self.scope:  # a fresh scope for the answer
                await self._send_error(408)
            if self.scope.cancelled_caught:
                self._write_timed_out()
            if access_logger.isEnabledFor(logging.INFO):
                log_refusal(self._ends.label, 408)
            return True
        if phase == WRITE:
            self._write_timed_out()
        # Only the watcher (above) cancels a HANDLER phase: a bug of ours if here.
        raise AssertionError(f"connection scope fired in phase {phase}")

    async def _serve_requests(self) -> bool:
        """The request loop. Returns True if a response was sent before the close."""
        config = self.config
        proto = self.proto
        if self._late:  # in a fresh scope, with the bytes in hand: no idle wait
            self._late = False
            deadline = self.scope.deadline = self._deadline
        else:
            if isinstance(self.stream, trio.SSLStream) or (
                config.proxy_protocol and self._ends.trusted
            ):
                closing = await self._open()
                if closing is not None:
                    return closing
            deadline = trio.current_time() + config.header_timeout
        while True:
            try:
                head = await self._receive_head(deadline, first=self._served == 0)
            except HTTPError as exc:
                await self._send_error(exc.status_code)
                if access_logger.isEnabledFor(logging.INFO):
                    log_refusal(self._ends.label, exc.status_code)
                return True
            if head is None:
                return False
            self._served += 1
            last = self._served >= config.max_requests_per_connection or self._last
            kept = await self._exchange(head, last=last)
            head = None  # not held through the idle wait (a browser's is kilobytes)
            if not kept or not proto.start_next_cycle():
                return True
            deadline = trio.current_time() + config.keep_alive_timeout

    # --- Opening: the PROXY header and the TLS handshake ------------------------------

    async def _open(self) -> bool | None:
        """The PROXY header and TLS handshake, under deadlines counted from accept.
        None: go on; True: a plain-HTTP client was answered; False: close quietly."""
        scope = self.scope
        config = self.config
        ends = self._ends
        accepted = trio.current_time()
        self._tracker.enter_idle(scope, new=True)  # nothing asked yet: idle
        try:
            if config.proxy_protocol and ends.trusted:
                self._phase = Phase.PROXY_HEADER
                scope.deadline = accepted + config.header_timeout
                if not await read_proxy(self.stream, ends, config, self._trust):
                    self.counters.proxy_header_errors += 1
                    return False
                self.client = ends.client
            if isinstance(self.stream, trio.SSLStream):
                self._phase = Phase.HANDSHAKE
                scope.deadline = accepted + config.handshake_timeout
                opened = await open_tls(self.stream, ends, self.counters)
                if opened is True:  # answered in plain HTTP: linger on the socket itself
                    self.stream = self.stream.transport_stream
                    self.io = io_for(self.stream)
                if not isinstance(opened, TLSInfo):
                    return opened
                self._tls = opened
        finally:
            self._evicted = self._tracker.leave_idle(scope)
        if scope.cancel_called:
            await trio.lowlevel.checkpoint()  # too late all the same: in this phase
        return None

    # --- Receiving the head ------------------------------------------------------------

    async def _receive_head(self, idle_deadline: float, *, first: bool) -> RequestHead | None:
        """The next request head, or None when the connection should close quietly.

        ``idle_deadline`` bounds the wait for the first byte. Raises HTTPError for a
        head that is refused (its status is counted here).
        """
        proto = self.proto
        try:
            head = proto.next_request()
            if head is not HEAD_INCOMPLETE and not first:
                # Pipelined behind the last request: yield here, since its response
                # may have been written without a checkpoint (rule 6).
                self.scope.deadline = _INF
                await trio.lowlevel.cancel_shielded_checkpoint()
            elif head is HEAD_INCOMPLETE:
                if not proto.has_partial_request:
                    if not await self._receive_first_bytes(idle_deadline):
                        return None
                    head = proto.next_request()
                # The head deadline runs from accept for a first request (the idle
                # deadline already is accept + header_timeout), and from the first
                # byte for later ones. Progress never extends it (slowloris).
                if head is HEAD_INCOMPLETE:
                    self._phase = HEAD
                    if not first:
                        self.scope.deadline = trio.current_time() + self.config.header_timeout
                while head is HEAD_INCOMPLETE:
                    data = await self.io.receive_some(RECEIVE_SIZE)
                    if self.scope.cancel_called:
                        # The deadline passed as the bytes came: too late all the same.
                        # Deliver the cancellation now, in the HEAD phase (408).
                        await trio.lowlevel.checkpoint()
                    if not data:
                        return None  # closed mid-head: nobody to answer
                    proto.receive_data(data)
                    head = proto.next_request()
        except HTTPError as exc:
            self.counters.count_refusal(exc.status_code)
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        assert isinstance(head, RequestHead)
        return head

    async def _receive_first_bytes(self, deadline: float) -> bool:
        """Wait, idle, for the first bytes of a request. False: close quietly.

        The wait is registered with the tracker, which cancels the connection scope to
        close this connection (graceful shutdown, or room needed at ``max_connections``).
        A connection silent until ``header_timeout`` is closed quietly too (counted as a
        header timeout): nobody may be there to read a 408, and a port scanner or a
        browser's speculative preconnect deserves no answer.
        """
        tracker = self._tracker
        scope = self.scope
        self._phase = IDLE
        scope.deadline = deadline
        proto = self.proto
        tracker.enter_idle(scope, new=self._served == 0)
        try:
            # Still idle until a byte of a request line comes: empty lines before it
            # are dropped as they arrive (RFC 9112 2.2), and the deadline stays.
            while data := await self.io.receive_some(RECEIVE_SIZE):
                proto.receive_data(data)
                if proto.has_partial_request:
                    break
        finally:
            self._evicted = tracker.leave_idle(scope)
        if scope.cancel_called:
            if data:
                # Evicted, shut down or timed out as the bytes came: they came by then
                # (no FIN went out). Served in a fresh scope; see serve().
                self._late = True
                self._deadline = deadline
                if self._evicted:  # busy now, not room: the accept loop may take another
                    self._evicted = False
                    self._last = True
                    tracker.eviction_declined()
            elif not self._evicted:
                self._count_idle_timeout()
            return False
        return bool(data)

    def _count_idle_timeout(self) -> None:
        counters = self.counters
        if self._tracker.shutting_down or self._evicted:
            return
        if self._phase is Phase.HANDSHAKE:
            counters.handshake_timeouts += 1
        elif self._phase is Phase.PROXY_HEADER:
            counters.proxy_header_errors += 1
        elif self._served == 0:
            counters.header_timeouts += 1
        else:
            counters.keep_alive_timeouts += 1

    # --- One request/response exchange ---------------------------------------------------

    async def _exchange(self, head: RequestHead, *, last: bool) -> bool:
        """Run the handler and send its response. Returns whether to keep the
        connection for another request."""
        exchange = self._current = Exchange(self)
        request = exchange.request = Request(
            method=head.method.decode("ascii"),
            target=head.target.decode("latin-1"),
            headers=Headers.from_raw(head.headers),
            http_version=head.http_version,
            client=self.client,
            server=self._ends.server,
            scheme=self._ends.scheme,
            tls=self._tls,
            body=exchange,
            shutdown_event=self._tracker.shutdown_event,
        )
        if self._ends.forwarding:
            forward(request, head.headers, self._trust)
        try:
            return await self._respond(request, exchange, last=last)
        finally:
            exchange.end()  # the request's body can no longer be read
            if not exchange.gone:  # else _scope_fired looks at it
                self._current = None
                exchange.release()

    async def _respond(self, request: Request, exchange: Exchange, *, last: bool) -> bool:
        started = trio.current_time()
        self._phase = HANDLER
        if (websocket := request.is_websocket) and await refuse_handshake(self, request, started):
            return False
        try:
            response: object = await exchange.call(self._handler, request, watch=self._watch)
            if not isinstance(response, Response) and exchange.upgrade is None:
                raise TypeError(
                    f"handler {self._handler!r} returned {response!r}, not a trioserve.Response"
                )
        except Abort:
            raise
        except BaseException as raised:
            if exchange.upgrade is not None:  # a WebSocket handler failed: 1011
                return await end_websocket(self, request, exchange, raised, started)
            status = exchange.sort_failure(raised, response_started=False)
            if status is None:
                raise Abort from None
            await exchange.stop_watching()
            await self._send_error(status)
            self._log_access(request, status, 0, started)
            return False
        if exchange.upgrade is not None or not isinstance(response, Response):
            return await end_websocket(self, request, exchange, None, started)
        proto = self.proto
        # EOF behind complete pipelined requests is a half-close (RFC 9112 9.6): they
        # are answered first, and the last answer says Connection: close.
        close = (
            last
            or (websocket and upgrade_not_taken(self, request, response.status))
            or (self.peer_eof and not proto.has_pipelined_data)
            or self._tracker.shutting_down
            or proto.unread_body_forces_close(self.config.max_drain_size)
        )
        size = await exchange.send_response(response, close=close)
        await exchange.stop_watching()
        self.counters.requests_served += 1
        self.counters.count_response(response.status)
        self._log_access(request, response.status, size, started)
        if close or (self.peer_eof and not proto.has_pipelined_data):
            return False
        if not proto.body_complete:
            self.scope.deadline = _INF  # the drain has body deadlines of its own
            await exchange.close()  # a read still in flight for the handler ends first
            return await exchange.drain(self.config.max_drain_size)
        return True

    def peer_gone(self) -> None:
        """The client sent EOF or the connection broke (seen by a read of any task)."""
        self.peer_eof = True
        # EOF behind pipelined requests is a half-close: they are still answered.
        if self.proto.has_pipelined_data:
            return
        if self._current is not None:
            self._current.client_left()

    def start_soon(self, task: Task, scope: trio.CancelScope, done: trio.Event) -> None:
        """Start a task of the connection's (a reader, the watcher, a WebSocket's)."""
        if self._tasks is None:
            assert self._nursery is not None
            self._tasks = ConnectionTasks(self._nursery, self._task_failed)
        self._tasks.start_soon(task, scope, done)

    def _task_failed(self) -> None:
        # A helper's bug (logged by ConnectionTasks): it costs this connection.
        self._failed = True
        self.scope.cancel()

    # --- 100 Continue (rule 5) -----------------------------------------------------------

    def owe_continue(self) -> None:
        """Tell h11 that ``100 Continue`` is sent; the bytes wait in ``_owed`` (rule 5)."""
        self.counters.responses_1xx += 1
        self._owed += self.proto.informational_continue()

    async def flush_continue(self) -> None:
        """Write an owed ``100 Continue`` (the reader task, before it reads)."""
        data = self._owed
        if not data:
            return
        self._owed = b""
        sending = self._continue_sending = trio.Event()
        try:
            with trio.move_on_after(self.config.write_timeout) as scope:
                await self.io.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._write_cut_short()
            raise ClientDisconnected("connection lost before 100 Continue") from exc
        finally:
            self._continue_sending = None
            sending.set()
        if scope.cancelled_caught:
            self.counters.write_timeouts += 1
            self._write_cut_short()
            raise ClientDisconnected("client does not read its 100 Continue")

    def _write_cut_short(self) -> None:
        # h11 believes the bytes went out and the stream may hold part of them:
        # nothing more may be written. The exchange ends as for a client that left (a
        # running handler is cancelled), and the connection task's next write aborts.
        self.proto.send_failed()
        self._write_failed = True
        if self._current is not None:
            self._current.client_left()

    # --- Sending -------------------------------------------------------------------------

    async def send(self, data: bytes | FileRange, *, whole: bool = False) -> None:
        """Write under the write deadline (the connection scope, in the WRITE phase).

        Large data goes in WRITE_CHUNK pieces, a file range by ``sendfile``, each with a
        fresh deadline. A broken client aborts; a stuck one fires the scope (_scope_fired).
        ``whole``: ``data`` is a whole response, written without a checkpoint if the
        socket takes it at once (rule 6); a streamed body's pieces always yield, so
        a body that is ready at once cannot hold the loop.
        """
        scope = self.scope
        timeout = self.config.write_timeout
        phase = self._phase
        self._phase = WRITE
        try:
            if self._owed or self._continue_sending is not None or self._write_failed:
                scope.deadline = trio.current_time() + timeout
                await self._after_continue()
            if isinstance(data, FileRange):
                await data.send(self.stream, scope, timeout)
            elif len(data) <= WRITE_CHUNK:
                sent = 0
                io = self.io
                if whole and type(io) is SocketIO:
                    # Rule 6: what the socket buffer takes at once needs no deadline.
                    # (Not even a look at scope.cancel_called: trio would fire a
                    # deadline already passed, the head's, on a request in hand.)
                    sent = io.send_now(data)
                    if sent == len(data):
                        self._phase = phase
                        return
                scope.deadline = trio.current_time() + timeout
                await io.send_all(memoryview(data)[sent:] if sent else data)
            else:
                view = memoryview(data)
                for offset in range(0, len(view), WRITE_CHUNK):
                    scope.deadline = trio.current_time() + timeout
                    await self.io.send_all(view[offset : offset + WRITE_CHUNK])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.proto.send_failed()
            self.counters.client_disconnects += 1
            if _debug_enabled(logging.DEBUG):
                error_logger.debug("client %s went away while we wrote", self.client)
            raise Abort from None
        if scope.cancel_called:
            # The deadline passed as the last bytes went out (send_all does not look
            # after its last send): deliver it now, in the WRITE phase, not the next.
            await trio.lowlevel.checkpoint()
        self._phase = phase

    async def _after_continue(self) -> None:
        """An owed ``100 Continue`` goes out before anything else, whoever writes it."""
        while self._continue_sending is not None:
            await self._continue_sending.wait()  # the reader task is writing it
        if self._write_failed:
            raise Abort
        if owed := self._owed:
            self._owed = b""
            await self.io.send_all(owed)

    def _write_timed_out(self) -> NoReturn:
        self.proto.send_failed()
        self.counters.write_timeouts += 1
        if _debug_enabled(logging.DEBUG):
            error_logger.debug("client %s stopped reading; aborting", self.client)
        raise Abort

    async def _send_error(self, status: int) -> None:
        """Send a complete error response with ``Connection: close``, if still possible."""
        proto = self.proto
        if proto.can_send_error_response():
            self.counters.count_response(status)
            await self.send(proto.error_response(status))

    def _log_access(self, request: Request, status: int, size: int, started: float) -> None:
        if access_logger.isEnabledFor(logging.INFO):
            client = request.client
            # No client on a Unix socket: name the socket; a proxy said "unknown": "-".
            unknown = self._ends.label if self.client is None else "-"
            host = client[0] if client is not None else unknown
            log_access(host, request, status, size, trio.current_time() - started)
