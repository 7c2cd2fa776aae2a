"""One ASGI ``http`` exchange: the application's receive/send against a Request.

Rules for this module:
1. The application runs in a task of the adapter's host, not in the connection task
   (a worker that ``_workers`` reuses from call to call); the handler (in the
   connection task) only waits for the response head. So an application can go on
   after its response (Starlette background tasks) and can stream while the engine
   writes, with no coroutine moved between tasks.
2. The response is handed over with the first body message (ASGI lets a server hold
   ``http.response.start`` until then), so an application that fails before its
   first body, or before the handler has returned the response, gets a clean 500.
3. Every way an exchange can go wrong ends in one of two places: the handler raises
   (nothing was sent yet: the engine answers 500, or the status of an ``HTTPError``),
   or the streamed body raises (the head is out: the engine aborts the connection,
   never a truncated response that looks complete).
4. Once the client is gone, ``send()`` raises :class:`ClientDisconnectedError` and
   ``receive()`` returns ``http.disconnect``; what the application raises after that
   is logged at DEBUG only. An application that ignores the disconnect is cancelled
   ``ABANDON_GRACE`` seconds later.
5. Nothing the application raises leaves its own exchange: not an exception group
   mixing a cancellation with its own errors, not an error from its cleanup. The
   host nursery, and with it every other request, never sees it.
6. ``receive()`` is safe to cancel (an application's own timeout, Starlette's
   ``is_disconnected()``, which calls it under a scope cancelled in advance): a
   cancelled call takes nothing, and the next one goes on where it would have.
   The application never reads or writes the stream: the engine does it for it.
"""

from __future__ import annotations

import enum
import errno
import io
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from typing import Final

import trio

from .._errors import BodyUnavailable, ClientDisconnected, HTTPError, split_failure
from .._filebody import FileBody, open_regular
from .._logging import error_logger
from .._request import Request
from .._response import BodyAfterFirst, Response
from ._loops import explain_asyncio_failure
from ._types import (
    ASGIApp,
    ClientDisconnectedError,
    Message,
    Receive,
    Scope,
    Send,
    message_bool,
    message_bytes,
    message_headers,
)

__all__ = ["ABANDON_GRACE", "HTTPCycle", "abandon", "call_app", "sort_app_outcome"]

#: Seconds an application may run on after its exchange was aborted (client gone,
#: response failed) before it is cancelled: time to see the ``OSError`` from
#: ``send()`` or the ``http.disconnect`` from ``receive()`` and clean up, while an
#: application that never looks cannot pile up work for clients that are gone.
ABANDON_GRACE: Final = 5.0


class _State(enum.IntEnum):
    """The exchange as the application's messages drive it, in order: each value
    names what the application has done so far (the order is compared: "not yet
    complete" is ``< COMPLETE``). ABORTED is terminal and means the exchange is over
    for the application (client gone, failure handed over, or response aborted). The
    value is the phrase error messages use."""

    WAITING = 0  # nothing sent yet
    STARTED = 1  # http.response.start received, waiting for the first body
    STREAMING = 2  # head and first body handed over, more body to come
    COMPLETE = 3  # the whole response handed over
    ABORTED = 4

    @property
    def phrase(self) -> str:
        return _STATE_PHRASES[self]


_STATE_PHRASES: Final = {
    _State.WAITING: "before http.response.start",
    _State.STARTED: "after http.response.start",
    _State.STREAMING: "while streaming the response body",
    _State.COMPLETE: "after the response was complete",
    _State.ABORTED: "after the exchange was aborted",
}
_WAITING: Final = _State.WAITING
_STARTED: Final = _State.STARTED
_STREAMING: Final = _State.STREAMING
_COMPLETE: Final = _State.COMPLETE
_ABORTED: Final = _State.ABORTED


class HTTPCycle:
    """The state shared by one exchange's handler call, app task and response body.

    Built by the handler for each request; :meth:`run` is the application call (a
    worker of the host runs it, under its ``app_scope``); :meth:`wait_response` is
    what the handler awaits.
    """

    __slots__ = (
        "_body",
        "_body_left",
        "_chunks_in",
        "_chunks_out",
        "_failure",
        "_file",
        "_ready",
        "_request_done",
        "_response",
        "_state",
        "_wake",
        "app_scope",
        "request",
        "scope",
    )

    def __init__(self, request: Request, scope: Scope, body_length: int | None) -> None:
        """``body_length``: the declared Content-Length, ``None`` for a chunked body."""
        self.request = request
        self.scope = scope
        # The cancel scope the application runs under (the worker's), once it runs.
        self.app_scope: trio.CancelScope | None = None
        self._body: AsyncIterator[bytes] | None = None
        self._body_left = body_length
        self._request_done = False  # the last http.request (more_body False) was given
        self._state = _WAITING
        self._response: Response | None = None
        self._failure: BaseException | None = None
        self._ready = False  # the handler has something to return or raise
        self._wake: trio.Event | None = None
        self._chunks_in: trio.MemorySendChannel[bytes] | None = None
        self._chunks_out: trio.MemoryReceiveChannel[bytes] | None = None
        self._file: io.FileIO | None = None

    # --- The handler's side (connection task) ----------------------------------------

    async def wait_response(self) -> Response:
        """Wait until the app has a response (or a failure) for the engine.

        Raises:
            BaseException: whatever the application raised before its first body,
                an ``HTTPError`` from reading the body, or ``RuntimeError`` when the
                application returned without responding.
        """
        try:
            if not self._ready:
                wake = self._wake = trio.Event()  # set when the response is ready
                await wake.wait()
        except BaseException:
            # Cancelled: the engine noticed that the client went away, or the server
            # is cutting connections off. Either way nothing will be sent, and a
            # failure handed over meanwhile is moot (kept, its traceback would hold
            # this cycle's frames in a reference cycle).
            self._failure = None
            self.abort()
            raise
        failure = self._failure
        if failure is not None:
            # Also when the application streamed and then failed before this task
            # ran: nothing was sent yet, so the client still gets a clean 500.
            self._failure = None  # raised once, here; no reference cycle through it
            self.abort()
            raise failure
        assert self._response is not None
        return self._response

    def _hand_over(self) -> None:
        self._ready = True
        if self._wake is not None:
            self._wake.set()

    def _fail(self, failure: BaseException) -> None:
        """Nothing was handed over yet: the handler raises ``failure`` instead.

        The exchange is then over for the application: what it does next cannot
        replace this outcome.
        """
        self._failure = failure
        self._hand_over()
        self.abort()

    def abort(self) -> None:
        """End the exchange for the application: the response will not be sent.

        ``send()`` raises :class:`ClientDisconnectedError` from now on, a ``send()``
        blocked on backpressure is woken to raise it, ``receive()`` returns
        ``http.disconnect``, and the application is cancelled after ``ABANDON_GRACE``.
        """
        if self._state == _ABORTED:
            return
        self._state = _ABORTED
        if self._chunks_out is not None:
            self._chunks_out.close()
        if self.app_scope is not None:  # else the worker abandons it when it takes it
            abandon(self.app_scope)

    @property
    def aborted(self) -> bool:
        """Whether the exchange was aborted (see :meth:`abort`)."""
        return self._state == _ABORTED

    # --- The app task ----------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        """Run the application for this exchange, under ``app_scope``, which the caller
        (a worker) has entered. Never raises but for a ``KeyboardInterrupt`` or a
        cancellation (rule 5): the worker tells the application's own, which
        :meth:`abort` set off, to :meth:`app_cancelled`."""
        try:
            connection = (self.scope, self.receive, self.send)
            await sort_app_outcome(app, connection, self.app_raised, self.app_returned)
        finally:
            self.close_resources()

    # The outcome of the application, also reported by the WebSocket exchange for a
    # denial response (``websocket.http.response.*``), which it runs through a cycle.

    def app_raised(self, exc: Exception) -> None:
        """The application raised ``exc``; where it goes depends on how far it got."""
        state = self._state
        if state <= _STARTED:
            self._fail(exc)  # the handler raises it: 500, or the HTTPError's status
        elif state == _STREAMING:
            self._failure = exc  # the response body raises it: the connection aborts
            self._end_stream()
        elif state == _COMPLETE:
            error_logger.error(
                "ASGI application raised after its response to %r was complete",
                self.request,
                exc_info=exc,
            )
        elif error_logger.isEnabledFor(logging.DEBUG):
            # The exchange was aborted (usually: the client went away), and this is the
            # application reacting to that, as ASGI asks it to. Not an error.
            error_logger.debug(
                "ASGI application stopped after %r was aborted: %r", self.request, exc
            )

    def app_returned(self) -> None:
        """The application returned: an error unless its response was complete."""
        state = self._state
        if state == _WAITING:
            self._fail(RuntimeError("ASGI application returned without a response"))
        elif state == _STARTED:
            self._fail(
                RuntimeError("ASGI application returned after http.response.start without a body")
            )
        elif state == _STREAMING:
            self._failure = RuntimeError(
                "ASGI application returned before its streamed response was complete"
            )
            self._end_stream()

    def app_cancelled(self) -> None:
        """The application was cancelled by its ``app_scope``, which only :meth:`abort`
        sets a deadline on: the exchange was already over."""
        if error_logger.isEnabledFor(logging.DEBUG):
            error_logger.debug(
                "ASGI application for %r cancelled %.4g s after its exchange was aborted",
                self.request,
                ABANDON_GRACE,
            )

    def close_resources(self) -> None:
        """The application has ended: close what it left for the engine to take."""
        if self._chunks_in is not None:
            self._chunks_in.close()
        if self._file is not None and self._state != _COMPLETE:
            self._file.close()  # never handed to the engine

    # --- receive() -------------------------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: ``http.request`` pieces, then ``http.disconnect``.

        The body is read from the client only as fast as the application asks
        (backpressure). ``http.disconnect`` comes once the client is gone or the
        response is done; until then a ``receive()`` after the body waits.
        """
        if self._state == _ABORTED or self.request.is_disconnected():
            # Known at once, so answered at once, even under a scope cancelled in
            # advance: Starlette's is_disconnected() asks exactly that way. (Asking
            # also starts the engine's watch, so a later ask sees a client that left.)
            if self._state < _COMPLETE:
                self.abort()  # spec: once an application got http.disconnect, send() raises
            return {"type": "http.disconnect"}
        await trio.lowlevel.checkpoint_if_cancelled()  # rule 6: cancelled, nothing taken
        if not self._request_done and self._state < _COMPLETE:
            return await self._receive_body()
        # The engine watches the connection for us now (the handler says
        # watch_disconnect = False: most applications never ask).
        await self.request.wait_disconnected()
        if self._state < _COMPLETE:
            # The exchange ended before the response did: the client is gone.
            self.abort()
        return {"type": "http.disconnect"}

    async def _receive_body(self) -> Message:
        body = self._body
        if body is None:
            body = self._body = self.request.stream()
        try:
            # Rule 6: the engine's body iterator takes nothing if cancelled. From here
            # on nothing awaits, so a piece taken is a piece delivered.
            chunk = await body.__anext__()
        except StopAsyncIteration:
            self._body_complete()
            return {"type": "http.request", "body": b"", "more_body": False}
        except BodyUnavailable:
            # The response was completed (or the exchange failed) while this read
            # waited: the engine drains the rest; for the application it is over.
            self._request_done = True
            return {"type": "http.disconnect"}
        except (ClientDisconnected, HTTPError) as exc:
            # The client went away, or the body was refused: too large (413), too slow
            # (408). The application hears http.disconnect; the engine gets the cause,
            # whatever the application does next: before the response starts the
            # handler raises it (the HTTPError's status is answered), while it streams
            # the body raises it (the connection is cut off, logged at DEBUG).
            self._request_done = True
            self._body_failed(exc)
            return {"type": "http.disconnect"}
        left = self._body_left
        if left is not None:
            left = self._body_left = left - len(chunk)
            if left <= 0:
                # The declared length is in (h11 enforces it, and the engine has taken
                # the end already): more_body=False saves the app one receive().
                self._body_complete()
                return {"type": "http.request", "body": chunk, "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    def _body_failed(self, exc: Exception) -> None:
        state = self._state
        if state <= _STARTED:
            self._fail(exc)
        elif state == _STREAMING:
            self._failure = exc
            self._end_stream()
            self.abort()

    def _body_complete(self) -> None:
        self._request_done = True

    # --- send() ----------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """ASGI ``send``: ``http.response.start``, ``.body`` and ``.pathsend``.

        Raises:
            ClientDisconnectedError: the client is gone or the exchange was aborted.
            RuntimeError: the message is unknown or out of order.
            TypeError, ValueError: the message is malformed.
        """
        state = self._state
        if state == _ABORTED:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnectedError("the client went away; the response is abandoned")
        kind = message.get("type")
        if kind == "http.response.body":
            if state == _STREAMING:
                await self._send_chunk(message)
            elif state == _STARTED:
                self._first_body(message)
            else:
                raise RuntimeError(f"ASGI message 'http.response.body' sent {state.phrase}")
        elif kind == "http.response.start":
            if state != _WAITING:
                raise RuntimeError(f"ASGI message 'http.response.start' sent {state.phrase}")
            self._start(message)
        elif kind == "http.response.pathsend":
            if state != _STARTED:
                raise RuntimeError(f"ASGI message 'http.response.pathsend' sent {state.phrase}")
            await self._pathsend(message)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} {state.phrase}")

    def _start(self, message: Message) -> None:
        status = message.get("status")
        if type(status) is not int:
            raise TypeError(f"ASGI http.response.start 'status' must be an int, not {status!r}")
        if message.get("trailers", False):
            # Not offered in scope["extensions"]: the engine has no way to send trailers.
            raise RuntimeError("ASGI response trailers are not supported by this server")
        # Response validates the status range and the header types, so a bad head
        # raises here, into the application, before anything is sent.
        self._response = Response(status, headers=message_headers(message))
        self._state = _STARTED

    def _first_body(self, message: Message) -> None:
        body = message_bytes(message, "body")
        more_body = message_bool(message, "more_body")
        response = self._response
        assert response is not None
        if more_body:
            # Capacity 0: each send() waits until the engine takes the chunk, so the
            # application produces no faster than the client reads (backpressure).
            self._chunks_in, self._chunks_out = trio.open_memory_channel[bytes](0)
            self._response = response.with_body(_StreamedBody(self, body, self._chunks_out))
            self._state = _STREAMING
        else:
            self._response = response.with_body(body)
            self._state = _COMPLETE
        self._hand_over()

    async def _send_chunk(self, message: Message) -> None:
        body = message_bytes(message, "body")
        more_body = message_bool(message, "more_body")
        chunks = self._chunks_in
        assert chunks is not None
        if body:
            try:
                await chunks.send(body)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ClientDisconnectedError(
                    "the client went away; the response is abandoned"
                ) from None
        if not more_body:
            self._state = _COMPLETE
            chunks.close()

    async def _pathsend(self, message: Message) -> None:
        path = message.get("path")
        if not isinstance(path, str):
            raise TypeError("ASGI http.response.pathsend 'path' must be a str")
        # Opening may block (network file systems), so it runs in a thread; errors
        # (missing file, permissions, not a regular file) are raised into the
        # application. The body is the engine's FileBody: sendfile on plain sockets.
        file, st = await trio.to_thread.run_sync(_open_file, path)
        if self._state == _ABORTED:
            # Aborted while the thread opened the file (client gone, connection
            # cancelled): nobody will send or close it, and marking the exchange
            # complete would hide the abort from close_resources. Rule 4.
            file.close()
            raise ClientDisconnectedError("the client went away; the response is abandoned")
        response = self._response
        assert response is not None
        self._file = file
        self._response = response.with_body(
            FileBody(file, path, st.st_size, st.st_mtime_ns, [(0, st.st_size)])
        )
        self._state = _COMPLETE
        self._hand_over()

    # --- The streamed body's side (connection task) ----------------------------------

    def _end_stream(self) -> None:
        # The body raises self._failure once it has sent what was queued before.
        if self._chunks_in is not None:
            self._chunks_in.close()

    def stream_ended(self) -> BaseException | None:
        """The streamed body has no more chunks: None if complete, else the failure."""
        if self._state == _COMPLETE:
            return None
        failure, self._failure = self._failure, None
        if failure is not None:
            return failure
        if self._state == _ABORTED:
            return ClientDisconnectedError("the client went away mid-response")
        # Only a cancellation from outside (a forced shutdown) gets here.
        return RuntimeError("ASGI application stopped before its response was complete")

    def body_closed(self) -> None:
        """The engine is done with the streamed body (sent, or the connection failed)."""
        if self._state != _COMPLETE:
            self.abort()


async def call_app(
    app: ASGIApp,
    connection: tuple[Scope, Receive, Send],
    app_scope: trio.CancelScope,
    raised: Callable[[Exception], None],
    returned: Callable[[], None],
) -> bool:
    """Call ``app(*connection)`` in ``app_scope`` (see :func:`sort_app_outcome`);
    returns whether ``app_scope`` cancelled it (an abandoned call)."""
    with app_scope:
        await sort_app_outcome(app, connection, raised, returned)
    return app_scope.cancelled_caught


async def sort_app_outcome(
    app: ASGIApp,
    connection: tuple[Scope, Receive, Send],
    raised: Callable[[Exception], None],
    returned: Callable[[], None],
) -> None:
    """Call ``app(*connection)``, sorting its outcome (rule 5): its own errors go to
    ``raised``, a return to ``returned``; what is left to raise is only trio's
    cancellation and ``KeyboardInterrupt`` or ``SystemExit``."""
    try:
        await app(*connection)
    except BaseException as exc:
        failure, rest = split_failure(exc)
        if failure is not None:
            explain_asyncio_failure(failure)
            raised(failure)
        if rest is not None:
            raise rest from None
    else:
        returned()


def abandon(app_scope: trio.CancelScope) -> None:
    """Cancel an application call ``ABANDON_GRACE`` seconds from now (or sooner, if
    that was asked already): its exchange is over."""
    deadline = trio.current_time() + ABANDON_GRACE
    if deadline < app_scope.deadline:
        app_scope.deadline = deadline


class _StreamedBody(BodyAfterFirst):
    """The response body of a streaming application, as the engine iterates it."""

    __slots__ = ("_chunks", "_cycle")

    def __init__(
        self, cycle: HTTPCycle, first: bytes, chunks: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        super().__init__(first)
        self._cycle = cycle
        self._chunks = chunks

    async def next_piece(self) -> bytes:
        try:
            return await self._chunks.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            pass
        failure = self._cycle.stream_ended()
        if failure is None:
            raise StopAsyncIteration
        raise failure

    async def aclose(self) -> None:
        """Called by the engine when it is done, also when the connection failed."""
        self._chunks.close()
        self._cycle.body_closed()
        await trio.lowlevel.checkpoint()


def _open_file(path: str) -> tuple[io.FileIO, os.stat_result]:
    """Open ``path`` for ``pathsend`` (in a worker thread): a regular file, or the
    error that says why not."""
    opened = open_regular(path)
    if opened is None:
        if stat.S_ISREG(os.stat(path).st_mode):  # os.stat raises for a missing file
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return opened
