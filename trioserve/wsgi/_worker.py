"""The server side of PEP 3333 that runs in a worker thread.

Rules for this module:
1. Everything here runs in the worker thread, never in trio. It reaches the
   connection task only through a :class:`~trioserve._wsgi_mailbox.Mailbox`.
2. The application's iterable is closed (``close()``, PEP 3333 "Specification
   Details") in this thread, whatever happened: success, an error, or a client that
   went away.
3. The head is sent with the first non-empty piece of body, the first ``write()``,
   or, for an empty body, once the iterable is exhausted (PEP 3333 "Buffering and
   Streaming"); until then ``start_response(..., exc_info)`` may replace it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .._logging import error_logger
from ._environ import Head, parse_head
from ._mailbox import READ_BODY, Finished, Mailbox, SendBody

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import WSGIApplication

__all__ = ["ErrorStream", "InputStream", "WSGIWorker"]


class WSGIWorker:
    """One call of a WSGI application: ``start_response``, ``write`` and the iteration.

    Args:
        app: the WSGI application.
        environ: its environ (see ``build_environ``).
        mailbox: the line to the connection task.
    """

    __slots__ = ("_app", "_done", "_environ", "_head", "_head_sent", "_mailbox")

    def __init__(self, app: WSGIApplication, environ: dict[str, object], mailbox: Mailbox) -> None:
        self._app = app
        self._environ = environ
        self._mailbox = mailbox
        self._head: Head | None = None
        self._head_sent = False
        self._done = False

    def run(self) -> Finished:
        """Call the application and stream its response; never raises."""
        try:
            try:
                result = self._app(self._environ, self.start_response)
            except BaseException as exc:
                return Finished(error=exc)
            try:
                return self._iterate(result)
            except BaseException as exc:
                return Finished(error=exc)
            finally:
                _close(result)
        finally:
            self._done = True
            errors = self._environ.get("wsgi.errors")
            if isinstance(errors, ErrorStream):
                errors.flush()

    def _iterate(self, result: Iterable[bytes]) -> Finished:
        if isinstance(result, (list, tuple)) and not self._head_sent:
            # The whole body is in memory already (the common ``return [body]``):
            # answer with a Content-Length and a single write.
            body = b"".join([_check_bytes(chunk) for chunk in result])
            return Finished(head=self._commit_head(), body=body)
        for chunk in result:
            if _check_bytes(chunk):
                self._send(chunk)
        if self._head_sent:
            return Finished()
        return Finished(head=self._commit_head())

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]:
        """PEP 3333 ``start_response``: store the head, to be sent with the body.

        Raises:
            BaseException: ``exc_info``'s exception, re-raised, if the head was sent.
            RuntimeError: called a second time without ``exc_info``.
            TypeError, ValueError: a malformed status or header (see ``parse_head``).
        """
        if exc_info is not None:
            error = exc_info[1]
            if self._head_sent:
                # PEP 3333: too late to change the response; the server re-raises so
                # that the application aborts, and the connection is cut.
                if error is None:
                    raise RuntimeError("start_response() called after the head was sent")
                raise error.with_traceback(exc_info[2])
            del exc_info, error  # PEP 3333: do not keep a traceback cycle alive
        elif self._head is not None:
            raise RuntimeError(
                "start_response() called twice without exc_info (PEP 3333 forbids it)"
            )
        self._head = parse_head(status, headers)
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333 ``write()``: send ``data`` now; blocks while the client is slow.

        Raises:
            trioserve.ClientDisconnected: nobody will receive the data any more.
            RuntimeError: ``start_response`` was not called, or the call is over.
            TypeError: ``data`` is not bytes.
        """
        data = _check_bytes(data)
        if self._done:
            raise RuntimeError("write() called after the application call returned")
        # PEP 3333: the first write() sends the head, even for empty data.
        if data or not self._head_sent:
            self._send(data)

    def _send(self, data: bytes) -> None:
        head = None if self._head_sent else self._commit_head()
        self._mailbox.call(SendBody(head, data))

    def _commit_head(self) -> Head:
        head = self._head
        if head is None:
            raise RuntimeError("the application sent body before calling start_response()")
        self._head_sent = True
        return head


def _check_bytes(chunk: object) -> bytes:
    if type(chunk) is not bytes:
        raise TypeError(
            f"a WSGI application must produce bytes (PEP 3333), not {type(chunk).__name__}"
        )
    return chunk


def _close(result: Iterable[bytes]) -> None:
    close: Callable[[], object] | None = getattr(result, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        # The response is decided by now (sent, or failing for its own reason); an
        # error in cleanup must not turn a complete response into a cut connection.
        error_logger.exception("close() of the WSGI response %r raised", result)


class InputStream(io.BufferedIOBase):
    """``wsgi.input``: the request body, read from the client as the application asks.

    Each refill fetches one piece from the connection task, which reads the socket
    only then (backpressure): ``read(n)`` never holds more than ``n`` bytes plus one
    piece. It ends where the body ends (``wsgi.input_terminated``), so ``read()``
    without a size is safe; the body is bounded by ``Config.max_body_size``.

    Reads raise :class:`trioserve.HTTPError` (413 too large, 408 too slow, 400
    malformed) or :class:`trioserve.ClientDisconnected`; an application that lets
    them propagate before its response started gets that status sent for it.
    """

    def __init__(self, mailbox: Mailbox) -> None:
        super().__init__()
        self._mailbox = mailbox
        self._buffer = bytearray()
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Fetch one more piece of body into the buffer; False at the end of the body."""
        if self._eof:
            return False
        if self.closed:
            raise ValueError("I/O operation on closed wsgi.input")
        chunk = self._mailbox.call(READ_BODY)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1, /) -> bytes:
        """Read ``size`` bytes, fewer only at the end of the body; all if ``size < 0``."""
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def read1(self, size: int | None = -1, /) -> bytes:
        """Read up to ``size`` bytes, fetching from the client at most once."""
        if size == 0:
            return b""
        if not self._buffer:
            self._fill()
        if size is None or size < 0:
            size = len(self._buffer)
        return self._take(size)

    def readline(self, size: int | None = -1, /) -> bytes:
        """Read up to and including the next ``b"\\n"`` (at most ``size`` bytes)."""
        limit = -1 if size is None else size
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                end += 1
                return self._take(end if limit < 0 else min(end, limit))
            if 0 <= limit <= len(self._buffer):
                return self._take(limit)
            searched = len(self._buffer)
            if not self._fill():
                return self._take(len(self._buffer))


class ErrorStream(io.TextIOBase):
    """``wsgi.errors``: each line written becomes an ERROR record of ``trioserve.error``.

    PEP 3333 asks for a text stream for error output; a logger lets the embedding
    program decide where it goes (trioserve configures no handlers).
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, s: str, /) -> int:
        if not isinstance(s, str):
            raise TypeError(f"wsgi.errors takes str, not {type(s).__name__}")
        *lines, self._pending = (self._pending + s).split("\n")
        for line in lines:
            error_logger.error("%s", line)
        return len(s)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            error_logger.error("%s", pending)
