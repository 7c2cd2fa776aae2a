"""The one line between a WSGI worker thread and the connection task.

Rules for this module:
1. The worker thread posts a message with :meth:`Mailbox.call` and blocks until the
   connection task answers it, so at most one message is in flight: the application
   can never run ahead of the client by more than one piece of body.
2. The only way into trio from the thread is ``TrioToken.run_sync_soon`` (the one
   thread-safe entry point trio has); every other method runs in the trio thread.
3. After :meth:`Mailbox.hang_up` every call, pending or later, raises
   :class:`trioserve.ClientDisconnected` in the thread at once, so an application
   unwinds at its next read or write instead of blocking forever. "Pending" includes
   a message the connection task already received but had not answered yet (its
   answer was being computed when the task was cancelled). Posting, receiving,
   answering and hanging up all run in the trio thread, so no message can slip
   between them.
4. Every message the thread blocks on gets exactly one reply: a stray second
   reply would be taken as the answer to the thread's *next* call.
"""

from __future__ import annotations

import math
import queue
from dataclasses import dataclass
from typing import Final

import trio

from .._errors import ClientDisconnected
from ._environ import Head

__all__ = ["READ_BODY", "Finished", "Mailbox", "Message", "ReadBody", "SendBody"]


@dataclass(frozen=True, slots=True)
class ReadBody:
    """Thread to trio: the next piece of the request body, please (``b""`` at its end)."""


READ_BODY: Final = ReadBody()


@dataclass(frozen=True, slots=True)
class SendBody:
    """Thread to trio: a piece of response body, with the head if it is the first."""

    head: Head | None
    data: bytes


@dataclass(frozen=True, slots=True)
class Finished:
    """The application call is over and ``close()`` was called: the thread is done.

    ``head`` is set if the head was never sent before; ``body`` is then the whole
    body. ``error`` is what the application raised, if anything.
    """

    error: BaseException | None = None
    head: Head | None = None
    body: bytes = b""


Message = ReadBody | SendBody | Finished
#: An answer to a message: body bytes, ``None`` (sent), or an exception to raise.
Reply = bytes | None | BaseException


class Mailbox:
    """Carries messages from a worker thread to the connection task, and answers back.

    Build it in the trio thread. The thread calls :meth:`call`; the connection task
    receives with :meth:`receive`, answers with :meth:`answer`, and hangs up when the
    exchange is over.
    """

    __slots__ = ("_hung_up", "_in_flight", "_inbox", "_outbox", "_replies", "_token")

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        # Unbounded, yet never holds more than one message and a Finished: rule 1.
        self._outbox, self._inbox = trio.open_memory_channel[Message](math.inf)
        self._replies: queue.SimpleQueue[Reply] = queue.SimpleQueue()
        self._hung_up: str | None = None
        # True from the moment the connection task takes a ReadBody or SendBody off
        # the inbox until it answers it. The answer may take awaits (a body read)
        # that get cancelled; hang_up then owes the thread the reply (rule 3).
        self._in_flight = False

    # --- Worker thread ------------------------------------------------------------------

    def call(self, message: ReadBody | SendBody) -> bytes | None:
        """Post ``message`` and block until it is answered (worker thread only).

        Raises:
            trioserve.ClientDisconnected: the exchange is over (see :meth:`hang_up`),
                or the server stopped.
            trioserve.HTTPError: reading the request body failed (413, 408, 400).
        """
        try:
            self._token.run_sync_soon(self._post, message)
        except trio.RunFinishedError:
            raise ClientDisconnected("the server has stopped") from None
        reply = self._replies.get()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    # --- Trio thread --------------------------------------------------------------------

    def _post(self, message: Message) -> None:
        if self._hung_up is None:
            self._outbox.send_nowait(message)
        elif not isinstance(message, Finished):
            self._replies.put(ClientDisconnected(self._hung_up))

    async def receive(self) -> Message:
        """The thread's next message; a ReadBody or SendBody must then be answered."""
        message = await self._inbox.receive()
        if not isinstance(message, Finished):
            self._in_flight = True
        return message

    def finish(self, message: Finished) -> bool:
        """Deliver the thread's last message; False if nobody listens any more."""
        self._post(message)
        return self._hung_up is None

    def answer(self, reply: Reply) -> None:
        """Answer the message the thread is blocked on.

        A no-op if :meth:`hang_up` answered it already (rule 4).
        """
        if self._in_flight:
            self._in_flight = False
            self._replies.put(reply)

    def hang_up(self, reason: str) -> None:
        """End the exchange: the thread's pending and later calls raise at once.

        ``reason`` becomes the message of the ClientDisconnected the thread sees.
        """
        if self._hung_up is not None:
            return
        self._hung_up = reason
        if self._in_flight:
            # Received but never answered: the connection task was cancelled while
            # computing the answer. Without this the thread would wait forever,
            # holding its CapacityLimiter token.
            self._in_flight = False
            self._replies.put(ClientDisconnected(reason))
        while True:
            try:
                message = self._inbox.receive_nowait()
            except trio.WouldBlock:
                return
            if not isinstance(message, Finished):
                self._replies.put(ClientDisconnected(reason))
