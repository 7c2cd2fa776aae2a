"""A handler wrapper that only watches, for ``check_handler``.

Rules for this module:
1. The probe changes nothing the server sees: the handler's response, its
   ``watch_disconnect``, and a streamed body's items, end and ``aclose`` pass
   through unchanged. It only records when each call ends and when the server closed
   a streamed body.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

import trio

from .._handler import Handler, watches_disconnect
from .._request import Request
from .._response import Response

__all__ = ["Probe", "ProbedBody"]


class ProbedBody:
    """A streamed body as the server sees it, recording when the server closes it."""

    __slots__ = ("_body", "_iterator", "close_called_at", "close_ended_at", "produced_at")

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._body = body
        self._iterator: AsyncIterator[bytes] | None = None
        self.produced_at: float | None = None  # when the last non-empty piece came
        self.close_called_at: float | None = None
        self.close_ended_at: float | None = None

    def __aiter__(self) -> ProbedBody:
        return self

    async def __anext__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._body.__aiter__()
        piece = await self._iterator.__anext__()
        if piece:
            self.produced_at = trio.current_time()
        return piece

    async def aclose(self) -> None:
        # What the server closes without the probe: the body object itself, if it can.
        self.close_called_at = trio.current_time()
        aclose: Callable[[], Awaitable[object]] | None = getattr(self._body, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            self.close_ended_at = trio.current_time()

    def close_time(self) -> float:
        """Seconds the body's own ``aclose`` took (0 if it was not closed)."""
        if self.close_called_at is None or self.close_ended_at is None:
            return 0.0
        return self.close_ended_at - self.close_called_at


class Probe:
    """Calls ``handler`` and records its calls and streamed bodies."""

    __slots__ = ("bodies", "calls", "ended_at", "handler", "watch_disconnect")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.watch_disconnect = watches_disconnect(handler)  # passed on to the server
        self.calls = 0
        self.ended_at: float | None = None  # when the last call returned (or raised)
        self.bodies: list[ProbedBody] = []

    async def __call__(self, request: Request) -> Response | None:
        self.calls += 1
        try:
            response = await self.handler(request)
        finally:
            self.ended_at = trio.current_time()
        if isinstance(response, Response) and not isinstance(response.body, bytes):
            body = ProbedBody(response.body)
            self.bodies.append(body)
            return response.with_body(body)
        return response

    def last_write_began(self) -> float | None:
        """When the server last had something new to write: the handler's answer, or
        the last non-empty piece of a streamed body."""
        moments = [body.produced_at for body in self.bodies if body.produced_at is not None]
        if self.ended_at is not None:
            moments.append(self.ended_at)
        return max(moments, default=None)

    def unclosed_bodies(self) -> int:
        """Streamed bodies the server has not (or not yet completely) closed."""
        return sum(body.close_ended_at is None for body in self.bodies)
