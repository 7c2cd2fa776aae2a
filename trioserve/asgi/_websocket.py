"""One ASGI ``websocket`` exchange: the application's receive/send against a request
that asks for a WebSocket, then against the WebSocket once accepted.

Rules for this module:
1. As for HTTP (``_http`` rule 1), the application runs in a task of the host. What
   must happen in the connection task, the handler's, is asked of it: taking the
   upgrade (``Request.accept_websocket``), a denial response, a failure to answer.
2. The opening handshake ends one of three ways, decided by the application's first
   answer to ``websocket.connect``: accepted (``websocket.accept``: the handler takes
   the upgrade, then waits for the application or the WebSocket to end, and returns
   ``None``), denied (``websocket.close`` before accepting is a 403;
   ``websocket.http.response.*`` is the application's own response, run through an
   ``HTTPCycle``), or failed (the application raised or returned first: 500, or the
   status of an ``HTTPError``).
3. Once accepted, ``receive()`` is the WebSocket's (``websocket.receive``, then
   ``websocket.disconnect`` with the close code and reason as they were, custom codes
   included) and ``send()`` writes to it; a ``send()`` once it is closed raises
   :class:`ClientDisconnectedError` (ASGI spec 2.4). ``receive()`` is safe to cancel:
   a cancelled call takes no message.
4. An application may go on after its WebSocket closed with a closing handshake (the
   host drains it at shutdown, as work after an HTTP response); after an abnormal end
   (1006: the peer vanished, the connection was aborted) it is cancelled
   ``ABANDON_GRACE`` seconds later, as after an aborted HTTP exchange.
5. An exception raised after accepting closes the WebSocket with 1011 and is logged by
   the engine, as a native handler's; nothing the application raises leaves its
   exchange (``_http`` rule 5).
"""

from __future__ import annotations

import enum
import logging
from typing import Final

import trio

from .._errors import ClientDisconnected
from .._logging import error_logger
from .._request import Request
from .._response import Response
from .._websocket import WebSocket, WebSocketClosed
from ._http import ABANDON_GRACE, HTTPCycle, abandon, call_app
from ._types import (
    ASGIApp,
    ClientDisconnectedError,
    Message,
    Scope,
    message_bytes,
    message_headers,
)

__all__ = ["WebSocketCycle"]

#: RFC 6455 7.1.5: the close code of a connection that ended without a close frame;
#: what ``websocket.disconnect`` says when no WebSocket was ever open.
_ABNORMAL: Final = 1006


class _State(enum.Enum):
    """The exchange as the application's messages drive it; the value is the phrase
    error messages use."""

    CONNECTING = "before websocket.accept"
    ACCEPTING = "while websocket.accept is taken"
    OPEN = "after websocket.accept"
    DENYING = "after websocket.http.response.start"
    FAILED = "after the application failed to answer the handshake"
    ABORTED = "after the exchange was aborted"


_CONNECTING: Final = _State.CONNECTING
_ACCEPTING: Final = _State.ACCEPTING
_OPEN: Final = _State.OPEN
_DENYING: Final = _State.DENYING
_FAILED: Final = _State.FAILED
_ABORTED: Final = _State.ABORTED


class WebSocketCycle:
    """The state shared by one WebSocket exchange's handler call and app task.

    Built by the handler for each upgrade request; :meth:`run` is the app task;
    :meth:`respond` is what the handler awaits.
    """

    __slots__ = (
        "_accept_done",
        "_accept_error",
        "_accepting",
        "_ask",
        "_connected",
        "_denial",
        "_failure",
        "_handshake_over",
        "_state",
        "_ws",
        "app_done",
        "app_scope",
        "request",
        "scope",
    )

    def __init__(self, request: Request, scope: Scope) -> None:
        self.request = request
        self.scope = scope
        self.app_scope = trio.CancelScope()
        self.app_done = trio.Event()
        self._state = _CONNECTING
        self._connected = False  # websocket.connect was given to the application
        self._ask = trio.Event()  # the application asks the handler to act
        self._handshake_over = trio.Event()  # accepted, denied, failed or aborted
        self._accepting: tuple[str | None, list[tuple[bytes, bytes]]] = (None, [])
        self._accept_done = trio.Event()
        self._accept_error: BaseException | None = None
        self._failure: BaseException | None = None
        self._denial: HTTPCycle | None = None
        self._ws: WebSocket | None = None

    # --- The handler's side (connection task) ----------------------------------------

    async def respond(self) -> Response | None:
        """Act for the application until the handshake is decided (rule 2): return its
        denial response, raise its failure, or accept and return ``None`` once the
        application has finished or the WebSocket has closed."""
        try:
            while True:
                await self._ask.wait()
                self._ask = trio.Event()
                state = self._state
                if state is _ACCEPTING:
                    ws = await self._accept()
                    if ws is not None:
                        await self._serve(ws)
                        return None
                elif state is _DENYING:
                    assert self._denial is not None
                    return await self._denial.wait_response()
                elif state is _FAILED:
                    failure, self._failure = self._failure, None
                    assert failure is not None
                    raise failure
                elif state is _ABORTED:
                    raise ClientDisconnected("the client left before the WebSocket was accepted")
        except BaseException:
            # Cancelled (the server cuts the connection off), or the client is gone:
            # the application hears it from receive() and send().
            self.abort()
            raise

    async def _accept(self) -> WebSocket | None:
        subprotocol, headers = self._accepting
        try:
            ws = await self.request.accept_websocket(subprotocol, headers)
        except (ValueError, RuntimeError) as exc:
            # Refused before anything was sent (a subprotocol the client did not offer,
            # a header of the handshake's own): raised into the application's send().
            self._accept_error = exc
            self._state = _CONNECTING
            self._accept_done.set()
            return None
        except BaseException:
            self._accept_error = ClientDisconnectedError("the client left during the handshake")
            self._accept_done.set()
            raise
        self._ws = ws
        self._state = _OPEN
        self._handshake_over.set()
        self._accept_done.set()
        return ws

    async def _serve(self, ws: WebSocket) -> None:
        """Wait until the application has finished or the WebSocket has closed; raise
        what the application raised while it was open (the engine closes with 1011)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._end_when_closed, ws, nursery.cancel_scope)
            await self.app_done.wait()
            nursery.cancel_scope.cancel()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def _end_when_closed(self, ws: WebSocket, waiting: trio.CancelScope) -> None:
        await ws.wait_closed()
        if ws.close_code == _ABNORMAL:
            self.abort()  # rule 4: no peer left to talk to
        waiting.cancel()

    def abort(self) -> None:
        """End the exchange for the application: ``send()`` raises
        :class:`ClientDisconnectedError`, ``receive()`` returns ``websocket.disconnect``
        (once the WebSocket's own messages are out), and the application is cancelled
        after ``ABANDON_GRACE``."""
        if self._state is not _OPEN and self._state is not _ABORTED:
            self._state = _ABORTED
            self._handshake_over.set()
            if self._accept_error is None:
                self._accept_error = ClientDisconnectedError("the client went away")
            self._accept_done.set()
            self._ask.set()
        if self._denial is not None:
            self._denial.abort()
        abandon(self.app_scope)

    # --- The app task ----------------------------------------------------------------

    async def run(self, app: ASGIApp) -> None:
        """Run the application for this exchange (the app task). Never raises but
        for a ``KeyboardInterrupt`` or a cancellation from outside (rule 5)."""
        try:
            connection = (self.scope, self.receive, self.send)
            raised, returned = self._app_raised, self._app_returned
            cancelled = await call_app(app, connection, self.app_scope, raised, returned)
            if cancelled and error_logger.isEnabledFor(logging.DEBUG):
                error_logger.debug(
                    "ASGI application for %r cancelled %.4g s after its WebSocket was lost",
                    self.request,
                    ABANDON_GRACE,
                )
        finally:
            if self._denial is not None:
                self._denial.close_resources()
            self.app_done.set()

    def _app_raised(self, exc: Exception) -> None:
        state = self._state
        if state is _CONNECTING or state is _ACCEPTING:
            self._fail(exc)  # the handler raises it: 500, or the HTTPError's status
        elif state is _DENYING:
            assert self._denial is not None
            self._denial.app_raised(exc)
        elif state is _OPEN and not self._closed():
            self._failure = exc  # the handler raises it: close 1011, logged
        elif isinstance(exc, ClientDisconnected):
            # The application reacting to its closed WebSocket, as ASGI asks it to.
            if error_logger.isEnabledFor(logging.DEBUG):
                error_logger.debug(
                    "ASGI application stopped after %r ended: %r", self.request, exc
                )
        else:
            error_logger.error(
                "ASGI application raised after the WebSocket of %r was closed",
                self.request,
                exc_info=exc,
            )

    def _app_returned(self) -> None:
        state = self._state
        if state is _CONNECTING or state is _ACCEPTING:
            self._fail(
                RuntimeError(
                    "ASGI application returned without accepting or closing the WebSocket"
                )
            )
        elif state is _DENYING:
            assert self._denial is not None
            self._denial.app_returned()

    def _fail(self, failure: BaseException) -> None:
        self._failure = failure
        self._state = _FAILED
        self._handshake_over.set()
        self._ask.set()

    def _closed(self) -> bool:
        return self._ws is not None and self._ws.close_code is not None

    # --- receive() -------------------------------------------------------------------

    async def receive(self) -> Message:
        """ASGI ``receive``: ``websocket.connect``, then once accepted the messages,
        then ``websocket.disconnect``."""
        if not self._connected:
            self._connected = True
            await trio.lowlevel.checkpoint()
            return {"type": "websocket.connect"}
        if not self._handshake_over.is_set():
            await self._wait_handshake()
        ws = self._ws
        if ws is None:
            await trio.lowlevel.checkpoint()
            return {"type": "websocket.disconnect", "code": _ABNORMAL, "reason": ""}
        try:
            message = await ws.receive()  # rule 3: a cancelled receive takes nothing
        except WebSocketClosed as closed:
            return {"type": "websocket.disconnect", "code": closed.code, "reason": closed.reason}
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def _wait_handshake(self) -> None:
        """Wait until the handshake is decided, or the client leaves before it is."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._abort_when_gone, nursery.cancel_scope)
            await self._handshake_over.wait()
            nursery.cancel_scope.cancel()

    async def _abort_when_gone(self, waiting: trio.CancelScope) -> None:
        await self.request.wait_disconnected()
        if not self._handshake_over.is_set():
            self.abort()
        waiting.cancel()

    # --- send() ----------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """ASGI ``send``: ``websocket.accept``, ``.send``, ``.close``, and the
        ``websocket.http.response`` denial extension.

        Raises:
            ClientDisconnectedError: the WebSocket is closed, or the client is gone.
            RuntimeError: the message is unknown or out of order.
            TypeError, ValueError: the message is malformed, or the subprotocol was not
                offered, or the close code may not be sent.
        """
        kind = message.get("type")
        state = self._state
        if state is _ABORTED:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnectedError("the client went away")
        if kind == "websocket.send":
            await self._send_message(message, state)
        elif kind == "websocket.accept":
            self._expect(kind, state, _CONNECTING)
            await self._accept_asked(message)
        elif kind == "websocket.close":
            await self._close(message, state)
        elif kind == "websocket.http.response.start":
            self._expect(kind, state, _CONNECTING)
            status = message.get("status")
            if type(status) is int and status < 200:
                raise ValueError(f"a WebSocket denial response needs a final status, not {status}")
            await self._deny({**message, "type": "http.response.start"})
        elif kind == "websocket.http.response.body":
            self._expect(kind, state, _DENYING)
            assert self._denial is not None
            await self._denial.send({**message, "type": "http.response.body"})
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} {state.value}")

    @staticmethod
    def _expect(kind: str, state: _State, expected: _State) -> None:
        if state is not expected:
            raise RuntimeError(f"ASGI message {kind!r} sent {state.value}")

    async def _accept_asked(self, message: Message) -> None:
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and not isinstance(subprotocol, str):
            raise TypeError(
                f"ASGI websocket.accept 'subprotocol' must be a str, not {subprotocol!r}"
            )
        self._accepting = (subprotocol, message_headers(message))
        self._accept_done = trio.Event()
        self._accept_error = None
        self._state = _ACCEPTING
        self._ask.set()
        await self._accept_done.wait()
        error = self._accept_error
        if error is not None:
            raise error

    async def _send_message(self, message: Message, state: _State) -> None:
        self._expect("websocket.send", state, _OPEN)
        text = message.get("text")
        payload: str | bytes
        if text is None:
            if message.get("bytes") is None:
                raise ValueError("ASGI websocket.send needs one of 'bytes' and 'text'")
            payload = message_bytes(message, "bytes")
        elif message.get("bytes") is not None:
            raise ValueError("ASGI websocket.send takes 'bytes' or 'text', not both")
        elif isinstance(text, str):
            payload = text
        else:
            raise TypeError(f"ASGI websocket.send 'text' must be a str, not {type(text).__name__}")
        ws = self._ws
        assert ws is not None
        try:
            await ws.send(payload)
        except WebSocketClosed as closed:
            raise ClientDisconnectedError(f"the WebSocket is closed ({closed.code})") from None

    async def _close(self, message: Message, state: _State) -> None:
        code = message.get("code", 1000)
        reason = message.get("reason") or ""
        if type(code) is not int:
            raise TypeError(f"ASGI websocket.close 'code' must be an int, not {code!r}")
        if not isinstance(reason, str):
            raise TypeError(f"ASGI websocket.close 'reason' must be a str, not {reason!r}")
        if state is _CONNECTING:
            # ASGI: a close before the accept refuses the handshake with a 403.
            await self._deny({"type": "http.response.start", "status": 403})
            assert self._denial is not None
            await self._denial.send({"type": "http.response.body", "body": b""})
            return
        self._expect("websocket.close", state, _OPEN)
        ws = self._ws
        assert ws is not None
        await ws.close(code, reason)  # ValueError for a code that may not be sent

    async def _deny(self, start: Message) -> None:
        denial = HTTPCycle(self.request, self.scope, 0)
        denial.app_scope = self.app_scope  # its abort() bounds this application
        await denial.send(start)  # validated here: raises into the application
        self._denial = denial
        self._state = _DENYING
        self._handshake_over.set()
        self._ask.set()
