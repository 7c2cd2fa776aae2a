"""WSGIHandler: a WSGI application's calls in worker threads, hosted by the
connection task.

The application runs in worker threads, so it never blocks the event loop; the
connection's reads and writes stay in the connection task, under the server's
deadlines. How the two sides meet:

1. **One thread per request, not per await.** ``trio.to_thread.run_sync`` ties a
   thread's life to one ``await`` in one task, but a WSGI call outlives the handler:
   the handler returns once the head is known, and the body streams afterwards, while
   the engine iterates the response. Nothing spans both. So the call's thread is
   started with ``trio.lowlevel.start_thread_soon`` (the primitive under
   ``to_thread.run_sync``, same thread cache) and holds a token of a
   ``trio.CapacityLimiter`` from before it starts until after it ends, exactly as
   ``to_thread.run_sync`` does it: ``max_threads`` bounds the threads running
   applications, and further requests wait for a token without holding a thread.
2. **The connection task is the thread's host.** The thread posts one message at a
   time (a piece of body to send, a request for body to read) and blocks for the
   answer; whichever of the handler or the response body is running in the
   connection task answers it (``_mailbox``). Every socket read and write so
   happens in the connection task, under its cancel scopes and deadlines: no system
   tasks, no second reader of the socket. ``trio.from_thread.run`` would have needed
   exactly such a host task, or a system task per call outside every deadline.
3. **A vanished client unblocks the thread.** When the exchange ends early (the
   client went away, a write timed out, the server is shutting down, or the body is
   not sent, as for HEAD), the mailbox hangs up: the thread's pending call and every
   later one raise :class:`trioserve.ClientDisconnected` at once, the application
   unwinds at its next read or write, and the iterable's ``close()`` runs in its
   thread. The response body's ``aclose()`` then waits for the thread to finish, so
   ``close()`` has run before the connection moves on. A thread is left to finish on
   its own only as a last resort, when the connection task itself is cancelled
   (the client vanished while the application computed its head, or the shutdown
   deadline passed): it cannot wait then, and the thread still stops at its next
   read or write, or at once if it is blocked in one, even a ``wsgi.input`` read
   whose body bytes the cancelled task was still waiting for. Like a native
   handler, the application's own code has no deadline: a thread stuck in
   ``time.sleep()`` holds its limiter token until it returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

import trio

from .._errors import ClientDisconnected, HTTPError
from .._logging import error_logger
from .._request import Request
from .._response import BodyAfterFirst, Response
from ._environ import build_environ, native_root_path
from ._mailbox import Finished, Mailbox, ReadBody, SendBody
from ._worker import ErrorStream, InputStream, WSGIWorker

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
    from outcome import Outcome

__all__ = ["DEFAULT_MAX_THREADS", "WSGIHandler", "WSGIStatistics"]

#: Worker threads per handler: trio's own default for ``trio.to_thread`` (40). For
#: comparison, waitress runs 4 threads, gunicorn's gthread worker 1 unless told
#: ``--threads``, Tomcat 200. A thread is held for the whole application call, so size
#: this to the requests that may be inside the application (or waiting on its
#: database) at once.
DEFAULT_MAX_THREADS: Final = 40

_CANCELLED: Final = "the client went away or the server is shutting down"
_ENDED_EARLY: Final = (
    "the response ended before its body did (the client went away, a write timed out, "
    "or the body is not sent, as for HEAD)"
)


@dataclass(frozen=True, slots=True)
class WSGIStatistics:
    """A snapshot of a :class:`WSGIHandler`'s thread pool.

    Attributes:
        threads_busy: threads running an application call (including calls already
            told that their client went away and not yet returned).
        max_threads: the limit (``max_threads``).
        requests_waiting: requests waiting for a free thread.
    """

    threads_busy: int
    max_threads: int
    requests_waiting: int


class WSGIHandler:
    """A trioserve handler that runs a WSGI application (PEP 3333) in worker threads.

    Args:
        app: the WSGI application, ``app(environ, start_response) -> iterable``.
        root_path: where the application is mounted, e.g. ``"/api"``: it becomes
            ``SCRIPT_NAME``, and is cut from the front of ``PATH_INFO`` when the path
            starts with it (a proxy that strips the prefix itself works too).
        max_threads: at most this many application calls run at once; further
            requests wait (reading nothing) until a thread is free.

    Returns:
        ``await handler(request)`` returns the :class:`trioserve.Response`: once the
        application has sent its head, with the body streamed from its thread.

    Raises:
        ValueError: ``root_path`` does not start with ``/``, or ``max_threads < 1``.

    Example::

        from flask import Flask
        from trioserve.wsgi import WSGIHandler

        app = Flask(__name__)
        trio.run(trioserve.serve, WSGIHandler(app, max_threads=16), 8000)

    The environ has everything PEP 3333 requires, plus ``REMOTE_ADDR``,
    ``REMOTE_PORT``, ``REQUEST_URI``/``RAW_URI`` (the target as sent) and
    ``wsgi.input_terminated`` (``wsgi.input`` ends with the body). Request headers
    whose names contain ``_`` are dropped, as nginx and gunicorn do: they would be
    indistinguishable from their ``-`` twins in ``HTTP_*``.

    Error handling:
        An application that raises before its head is sent gets a 500 (or, for a
        :class:`trioserve.HTTPError` from reading ``wsgi.input``, that error's status:
        413 for a body over ``Config.max_body_size``, 408 for a stalled one). After
        the head was sent an error cuts the connection, so a client never takes a
        truncated response for a whole one. ``start_response(status, headers,
        exc_info)`` follows PEP 3333: it replaces the head if none was sent, else it
        re-raises ``exc_info``. Errors are logged to ``trioserve.error``, as is every
        line written to ``wsgi.errors``.

    Resource handling:
        The iterable's ``close()`` is always called, in the application's thread. If
        the client goes away, the iterable is not advanced again but closed (a
        generator sees ``GeneratorExit``), and the application's next ``write()`` or
        ``wsgi.input`` read raises :class:`trioserve.ClientDisconnected` (not logged
        if it escapes); see the module documentation for the details.
    """

    #: WSGI has no WebSocket: an upgrade request is served as plain HTTP, and the
    #: server logs the first one at WARNING.
    supports_websocket: ClassVar[bool] = False

    __slots__ = ("_limiter", "_script_name", "app", "root_path")

    def __init__(
        self,
        app: WSGIApplication,
        *,
        root_path: str = "",
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        if type(max_threads) is not int or max_threads < 1:
            raise ValueError(f"max_threads must be a positive int, not {max_threads!r}")
        self.app = app
        self.root_path = root_path
        self._script_name = native_root_path(root_path)
        self._limiter = trio.CapacityLimiter(max_threads)

    async def __call__(self, request: Request) -> Response:
        call = _WSGICall(self.app, request, self._script_name)
        return await call.start(self._limiter)

    def statistics(self) -> WSGIStatistics:
        """How many threads are busy, the limit, and how many requests wait for one."""
        stats = self._limiter.statistics()
        return WSGIStatistics(
            threads_busy=stats.borrowed_tokens,
            max_threads=int(stats.total_tokens),
            requests_waiting=stats.tasks_waiting,
        )

    def __repr__(self) -> str:
        return (
            f"WSGIHandler({self.app!r}, root_path={self.root_path!r}, "
            f"max_threads={int(self._limiter.total_tokens)})"
        )


class _WSGICall:
    """One request's application call: its thread, and the trio side of its mailbox.

    Every method but ``_deliver`` and ``abandon`` runs in the connection task.
    """

    __slots__ = (
        "_body_error",
        "_body_reader",
        "_limiter",
        "_mailbox",
        "_over",
        "_request",
        "_thread_done",
        "_token",
        "_worker",
    )

    def __init__(self, app: WSGIApplication, request: Request, script_name: str) -> None:
        self._request = request
        self._token = trio.lowlevel.current_trio_token()
        self._mailbox = Mailbox()
        environ = build_environ(
            request,
            script_name=script_name,
            wsgi_input=InputStream(self._mailbox),
            wsgi_errors=ErrorStream(),
        )
        self._worker = WSGIWorker(app, environ, self._mailbox)
        self._thread_done = trio.Event()
        self._limiter: trio.CapacityLimiter | None = None
        self._body_reader: AsyncIterator[bytes] | None = None
        self._body_error: Exception | None = None
        self._over = False

    async def start(self, limiter: trio.CapacityLimiter) -> Response:
        """Run the application in a thread; return the response once its head is known."""
        await limiter.acquire_on_behalf_of(self)
        self._limiter = limiter
        # A fresh context per call: trio reuses its worker threads, and a context
        # variable an application leaves set must not leak into the next request.
        run = functools.partial(contextvars.Context().run, self._worker.run)
        try:
            trio.lowlevel.start_thread_soon(run, self._deliver, "trioserve.wsgi worker")
        except BaseException:
            self._limiter = None
            limiter.release_on_behalf_of(self)
            raise
        try:
            message = await self._next_from_app()
            if isinstance(message, Finished):
                self._over = True
                await self._close_body_reader()
                return self._complete_response(message)
            assert message.head is not None, "the first SendBody carries the head"
            status, headers = message.head
            return Response(status, headers=headers, body=_ResponseBody(self, message.data))
        except BaseException:
            self._over = True
            self._mailbox.hang_up(_CANCELLED)
            await self._close_body_reader()
            raise

    def _complete_response(self, message: Finished) -> Response:
        """The response of an application that finished before sending any body."""
        if message.error is not None:
            raise message.error
        assert message.head is not None, "Finished carries the head when none was sent"
        status, headers = message.head
        body = message.body
        declared = _declared_length(headers)
        if declared is None or declared == len(body):
            return Response(status, headers=headers, body=body)
        # A declared length that differs from the body: for HEAD (Werkzeug sends the
        # GET length and no body) the engine keeps it, since the body is streamed
        # from its point of view; for anything else it is enforced, so a lying
        # Content-Length cuts the connection instead of framing a wrong response.
        return Response(status, headers=headers, body=_ResponseBody(self, body))

    async def next_chunk(self) -> bytes:
        """The next non-empty piece of response body (for ``_ResponseBody``).

        Raises:
            StopAsyncIteration: the body is complete.
            BaseException: whatever the application raised after its head was sent.
        """
        while not self._over:
            message = await self._next_from_app()
            if isinstance(message, SendBody):
                if message.data:
                    return message.data
                continue
            self._over = True
            await self._close_body_reader()
            if message.error is not None:
                raise message.error
        raise StopAsyncIteration

    async def end(self) -> None:
        """The engine is done with the body: stop the application, wait for its thread."""
        if not self._over:
            self._over = True
            self._mailbox.hang_up(_ENDED_EARLY)
            await self._close_body_reader()
        if not self._thread_done.is_set():
            await self._thread_done.wait()

    def abandon(self) -> None:
        """Hang up from any thread (the response body was dropped without ``aclose``)."""
        if not self._over:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._mailbox.hang_up, _ENDED_EARLY)

    async def _next_from_app(self) -> SendBody | Finished:
        """Answer the application's body reads until it sends body or finishes."""
        mailbox = self._mailbox
        while True:
            # A cancellation anywhere in here, even inside _read_body with a
            # ReadBody taken and not yet answered, is safe: every way out hangs the
            # mailbox up (start()'s except, or end()/abandon() for the body), and
            # hang_up answers the message in flight too, so the thread never waits
            # forever holding its limiter token.
            message = await mailbox.receive()
            if isinstance(message, ReadBody):
                mailbox.answer(await self._read_body())
                continue
            if isinstance(message, SendBody):
                # Taken: the thread may produce the next piece while this one is sent.
                mailbox.answer(None)
            return message

    async def _read_body(self) -> bytes | Exception:
        if self._body_error is not None:
            # The body is broken for good: a second read must not look like its end.
            return self._body_error
        if self._body_reader is None:
            self._body_reader = self._request.stream()
        try:
            return await anext(self._body_reader, b"")
        except (HTTPError, ClientDisconnected, RuntimeError) as exc:
            self._body_error = exc
            return exc

    async def _close_body_reader(self) -> None:
        # Request.stream() is an async generator; left unexhausted, trio would warn
        # when it is collected. Closing it does not checkpoint, so this also works
        # in a cancelled scope.
        reader, self._body_reader = self._body_reader, None
        if isinstance(reader, AsyncGenerator):
            await reader.aclose()

    # --- Called from the worker thread ---------------------------------------------------

    def _deliver(self, result: Outcome[Finished]) -> None:
        try:
            message = result.unwrap()
        except BaseException as exc:  # WSGIWorker.run never raises; be safe anyway
            message = Finished(error=exc)
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._thread_exited, message)

    # --- Back in trio --------------------------------------------------------------------

    def _thread_exited(self, message: Finished) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.release_on_behalf_of(self)
        self._thread_done.set()
        if self._mailbox.finish(message):
            return
        # Nobody waits for this call's outcome any more; an error other than the
        # ClientDisconnected we raised into it is the application's, and is logged.
        error = message.error
        if error is not None and not isinstance(error, ClientDisconnected):
            error_logger.error(
                "WSGI application raised after its response ended (%r)",
                self._request,
                exc_info=error,
            )


class _ResponseBody(BodyAfterFirst):
    """The response body the engine iterates (and ``aclose()``-s) in the connection task."""

    __slots__ = ("_call",)

    def __init__(self, call: _WSGICall, first: bytes) -> None:
        super().__init__(first)
        self._call = call

    async def next_piece(self) -> bytes:
        return await self._call.next_chunk()

    async def aclose(self) -> None:
        """Stop the application if its body is not complete, and wait for its thread."""
        await self._call.end()

    def __del__(self) -> None:
        # A safety net: should the body be dropped without aclose(), the thread must
        # still learn that nobody will take its next piece.
        self._call.abandon()


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else -1
    return None
