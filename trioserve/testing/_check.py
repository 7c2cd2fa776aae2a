"""check_handler: the faults the server defends against, run on a user's handler.

Rules for this module:
1. No pytest: a failed check raises ``AssertionError`` whose message names the fault,
   what the server should have done, what it did, and what in a handler causes that.
2. Each fault gets a fresh ``Server`` and connection, and a deadline in virtual time:
   a wait that passes it is a failure, never a hang. Runaway responses are cut off by
   size, since a body that never sleeps never lets virtual time pass. Failures are
   raised once the connection's nursery has closed, never inside it (where they would
   come out wrapped in an exception group).
3. Virtual time only: the timings asserted are exact under
   ``trio.testing.MockClock(autojump_threshold=0)``, which ``check_handler`` requires.
4. The handler is called through ``_probe.Probe``, which only watches: it records
   when each call ends and that the server closed a streamed body.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

import trio
import trio.testing

from .._config import Config
from .._handler import Handler
from .._server import Server
from .._stats import ServerStatistics
from ._faults import reset, trickle
from ._probe import Probe
from ._responses import TestResponse, parse_responses
from ._streams import PipeStream, stream_pair

__all__ = ["check_handler"]

#: Tolerance when comparing virtual moments computed in two ways (float rounding).
_EPSILON = 1e-6
#: An answer larger than this, or arriving in more reads, is a runaway body.
_MAX_ANSWER_BYTES = 2**26
_MAX_ANSWER_READS = 100_000
#: Request-body bytes sent before a stall at most (the rate rule may want more).
_MAX_STALLED_SENT = 2**20
#: Bytes of the endless header line a slow head trickles in.
_SLOW_BYTES = 50


async def check_handler(
    handler: Handler,
    *,
    config: Config | None = None,
    path: str = "/",
    headers: Sequence[tuple[str, str]] = (),
    max_handler_time: float = 60.0,
) -> None:
    """Check that the server's defences hold with ``handler``, in memory and in
    virtual time; raise ``AssertionError`` on the first that does not.

    Each fault below runs on a fresh ``trioserve.Server(handler, config)`` over an
    in-memory connection, with requests for ``path``:

    1. A plain ``GET``: one complete response, and no exception from the handler.
    2. Three pipelined ``GET`` requests in one write: three complete responses (fewer
       only after one that says ``Connection: close``).
    3. A slow head (slowloris, a byte at a time, never finished): ``408`` with
       ``Connection: close`` at exactly ``header_timeout``; the handler is not called.
    4. An oversized head (over ``max_header_size``): ``431`` at once, not called.
    5. An oversized declared body (``Content-Length`` over ``max_body_size``): ``413``
       at once, not called.
    6. A stalled body (a ``POST`` whose body stops part way): a handler that reads
       it gets ``408`` with ``Connection: close``, no sooner than the body deadline
       (``body_timeout``, or the minimum-rate rule's if that comes first), and a
       streamed response already started is cut off then; a handler that answers
       without reading has its answer sent, then the connection closed. A handler
       that catches the ``trioserve.RequestTimeout`` and answers anything else fails.
    7. A client that reads the response head, then nothing more: the connection is
       aborted exactly ``write_timeout`` after the blocked write began, and a streamed
       body is closed (its ``finally`` blocks run).
    8. A reset in the middle of the response: the connection ends, a streamed body is
       closed, and the handler raises nothing.
    9. A client that goes away while the handler waits, after a whole ``GET`` and in
       the middle of a ``POST`` body: the handler ends (a handler that catches
       ``trioserve.ClientDisconnected``, or shields its waits, hangs here) and
       raises nothing.

    A fault whose limit is ``math.inf`` in ``config`` is skipped. Waiting on the
    handler (for a response, or to end once its client is gone) is bounded by
    ``max_handler_time``; responses by 64 MiB. The handler is called through a thin
    wrapper that records when each call ends and whether the server closed a
    streamed body; ``watch_disconnect`` is passed on.

    Run it under ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
    ``autojump_clock`` fixture): the deadlines of whole minutes take microseconds,
    and the moments asserted are exact. An ``ASGIHandler`` needs its lifespan
    entered, as under the server. A handler that works in threads (``WSGIHandler``,
    ``trio.to_thread``) cannot be checked: virtual time jumps ahead while a thread
    runs, so every deadline seems to pass at once.

    Example::

        from trioserve.testing import check_handler

        async def test_my_handler_keeps_the_servers_defences(autojump_clock):
            await check_handler(my_handler, path="/items")

        async def test_my_asgi_app(autojump_clock):
            handler = trioserve.asgi.ASGIHandler(app)
            async with handler.lifespan():
                await check_handler(handler, config=trioserve.Config(body_timeout=5))

    Args:
        handler: the handler to check.
        config: the server's config (``Config()`` when omitted).
        path: the request target of every request; the handler should answer a
            ``GET`` of it with a response that ends.
        headers: more ``(name, value)`` fields for every request (``Host`` is added
            unless given).
        max_handler_time: virtual seconds the handler may take to answer, or to end
            once its client is gone, before it counts as hung.

    Raises:
        AssertionError: a fault got an answer other than the one above; the message
            says which fault, what came, and what in the handler may cause it.
        RuntimeError: not running under ``MockClock(autojump_threshold=0)``.
        ValueError: ``max_handler_time`` is not a finite number of seconds above 0.

    Resource handling: every connection is closed and its task ended before this
    returns or raises (a handler still running when its wait runs out is cancelled).
    """
    clock = trio.lowlevel.current_clock()
    if not isinstance(clock, trio.testing.MockClock) or clock.autojump_threshold != 0:
        raise RuntimeError(
            "check_handler runs in virtual time: run it under "
            "trio.testing.MockClock(autojump_threshold=0) (pytest-trio: the "
            "autojump_clock fixture)"
        )
    if not 0 < max_handler_time < math.inf:
        raise ValueError(f"max_handler_time must be finite and above 0, not {max_handler_time}")
    check = _Check(handler, config or Config(), path, headers, max_handler_time)
    for fault in _FAULTS:
        await fault(check)


# --- Connections and answers -----------------------------------------------------------------


class _Connection:
    """The client end of one connection, and when the server's task for it ended."""

    __slots__ = ("ended", "ended_at", "stream")

    def __init__(self, stream: PipeStream) -> None:
        self.stream = stream
        self.ended = trio.Event()
        self.ended_at = math.inf


class _Answer:
    """Everything the server sent, when the first byte came, and the counters then."""

    __slots__ = ("closed_at", "data", "first_at", "runaway", "stats_at_first")

    def __init__(self) -> None:
        self.data = b""
        self.first_at = math.inf
        self.closed_at = math.inf
        self.runaway = False  # cut off by size: a body that never ends
        self.stats_at_first: ServerStatistics | None = None


class _Check:
    """One run of check_handler: the handler, its config, and how requests look."""

    def __init__(
        self,
        handler: Handler,
        config: Config,
        path: str,
        headers: Sequence[tuple[str, str]],
        max_handler_time: float,
    ) -> None:
        self.handler = handler
        self.config = config
        self.path = path
        self.headers = list(headers)
        self.max_handler_time = max_handler_time
        self.begin("")

    def begin(self, fault: str) -> None:
        """A fresh probe and server for the next fault."""
        self.fault = fault
        self.waiting_for = ""  # what a wait that runs out was waiting for
        self.probe = Probe(self.handler)
        self.received = bytearray()  # what the server sent on the last connection
        self.server = Server(self.probe, self.config)

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"check_handler, {self.fault}: {message}")

    def head(
        self, method: str = "GET", extra: Sequence[tuple[str, str]] = (), *, end: bool = True
    ) -> bytes:
        """A request head for ``path`` (without its last empty line if not ``end``)."""
        lines = [f"{method} {self.path} HTTP/1.1"]
        if all(name.lower() != "host" for name, _ in self.headers):
            lines.append("Host: testserver")
        lines += [f"{name}: {value}" for name, value in (*self.headers, *extra)]
        return "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n" * end

    @asynccontextmanager
    async def connect(self, buffer_size: int = 65536) -> AsyncIterator[_Connection]:
        """Serve one connection; on exit close the client end and wait for the task."""
        client_end, server_end = stream_pair(buffer_size)
        connection = _Connection(client_end)

        async def serve() -> None:
            try:
                await self.server.serve_connection(server_end)
            finally:
                connection.ended_at = trio.current_time()
                connection.ended.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                yield connection
            finally:
                await client_end.aclose()

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        """Fail if the block takes more than ``seconds``: it is cancelled (connection
        tasks included, so a hung handler is cut off), then ``waiting_for`` is
        reported."""
        with trio.move_on_after(seconds) as scope:
            yield
        if scope.cancelled_caught:
            raise self.fail(f"{self.waiting_for}, {seconds:g} s on (virtual time){self._so_far()}")

    def _so_far(self) -> str:
        if not self.received:
            return ""
        try:
            count = len(parse_responses(bytes(self.received)))
        except ValueError:
            return f"; {len(self.received)} bytes of an unfinished answer had come"
        return f"; {count} complete response(s) had come, but the connection stayed open"

    async def answer(self, stream: PipeStream) -> _Answer:
        """Read until the server closes, then close the client end (rule 2)."""
        answer = _Answer()
        data = self.received
        for reads in range(1, _MAX_ANSWER_READS + 2):
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            if not data:
                answer.first_at = trio.current_time()
                answer.stats_at_first = self.server.statistics()
            data += chunk
            if len(data) > _MAX_ANSWER_BYTES or reads > _MAX_ANSWER_READS:
                answer.runaway = True  # reported once the connection is closed
                break
        answer.data = bytes(data)
        answer.closed_at = trio.current_time()
        await stream.aclose()  # the server's lingering close need not wait for us
        return answer

    def responses(self, answer: _Answer, method: str = "GET") -> list[TestResponse]:
        """The responses in ``answer``; a failure if it is not complete, valid HTTP.

        Call it after the connection has closed (rule 2)."""
        if answer.runaway:
            raise self.fail(
                f"the answer ran past {_MAX_ANSWER_BYTES} bytes or {_MAX_ANSWER_READS} "
                "reads: a streamed body that never ends? (check a path whose response ends)"
            )
        try:
            return parse_responses(answer.data, method=method)
        except ValueError as exc:
            raise self.fail(f"the answer is not complete, valid HTTP/1.1: {exc}") from None

    def refusal(self, answer: _Answer, status: int, started: float, after: float) -> None:
        """Assert one ``status`` response with ``Connection: close``, ``after`` seconds
        from ``started``, and that the handler was never called."""
        [response] = self.expect_count(answer, 1)
        if response.status != status:
            raise self.fail(f"expected {status}, got {response.status}")
        if response.headers.get("connection") != "close":
            raise self.fail(f"the {status} does not say Connection: close")
        if abs(answer.first_at - started - after) > _EPSILON:
            raise self.fail(
                f"the {status} came {answer.first_at - started:g} s after the request "
                f"began, not {after:g} s"
            )
        if self.probe.calls:
            raise self.fail(f"the handler was called for a request refused with {status}")

    def expect_count(self, answer: _Answer, count: int) -> list[TestResponse]:
        responses = self.responses(answer)
        if len(responses) != count:
            raise self.fail(f"expected {count} response(s), got {len(responses)}")
        return responses

    def no_handler_errors(self, when: str) -> None:
        if self.server.statistics().handler_errors:
            raise self.fail(
                f"the handler raised an exception {when} (the trioserve.error log has it)"
            )

    def bodies_closed(self) -> None:
        unclosed = self.probe.unclosed_bodies()
        if unclosed:
            raise self.fail(f"{unclosed} streamed response body(ies) not closed by the server")


# --- The faults -----------------------------------------------------------------------------


async def _plain_request(check: _Check) -> None:
    check.begin("a plain GET")
    check.waiting_for = f"no complete response to GET {check.path}"
    with check.within(check.max_handler_time):
        async with check.connect() as connection:
            await connection.stream.send_all(check.head(extra=[("Connection", "close")]))
            answer = await check.answer(connection.stream)
    check.expect_count(answer, 1)
    check.no_handler_errors(f"for GET {check.path}; check_handler needs a path it answers")


async def _pipelined(check: _Check) -> None:
    check.begin("three pipelined requests")
    data = check.head() * 2 + check.head(extra=[("Connection", "close")])
    check.waiting_for = "no complete responses to all three"
    with check.within(3 * check.max_handler_time):
        async with check.connect() as connection:
            await connection.stream.send_all(data)
            answer = await check.answer(connection.stream)
    responses = check.responses(answer)
    expected = 3
    for number, response in enumerate(responses[:2], 1):
        if response.headers.get("connection") == "close":
            expected = number
            break
    if len(responses) != expected:
        raise check.fail(f"expected {expected} responses, got {len(responses)}")
    if check.probe.calls != expected:
        raise check.fail(f"the handler was called {check.probe.calls} times, not {expected}")
    check.no_handler_errors("for a pipelined request")


async def _slow_head(check: _Check) -> None:
    timeout = check.config.header_timeout
    start = check.head(end=False) + b"X-Slow: "
    if timeout == math.inf or len(start) + _SLOW_BYTES >= check.config.max_header_size:
        return
    check.begin("a slow request head")
    # A byte every timeout/20.5 s (never one at the deadline itself), and never the
    # end of the head: progress must not extend the deadline.
    slow = functools.partial(trickle, size=1, interval=timeout / 20.5)
    check.waiting_for = "no answer to a request head that never ends"
    begun = trio.current_time()
    with check.within(timeout + 1):
        async with check.connect() as connection, trio.open_nursery() as nursery:
            await connection.stream.send_all(start)
            nursery.start_soon(slow, connection.stream, b"a" * _SLOW_BYTES)
            answer = await check.answer(connection.stream)
    check.refusal(answer, 408, begun, timeout)
    if check.server.statistics().header_timeouts != 1:
        raise check.fail("the 408 was not counted as a header timeout")


async def _oversized_head(check: _Check) -> None:
    limit = check.config.max_header_size
    if limit == math.inf:
        return
    check.begin("an oversized request head")
    data = check.head(extra=[("X-Big", "a" * int(limit))])
    check.waiting_for = "no answer to a head over max_header_size"
    begun = trio.current_time()
    with check.within(1):
        async with check.connect() as connection, trio.open_nursery() as nursery:
            # Sent from a task: the server stops reading at the limit.
            nursery.start_soon(functools.partial(trickle, size=len(data)), connection.stream, data)
            answer = await check.answer(connection.stream)
    check.refusal(answer, 431, begun, 0)


async def _oversized_body(check: _Check) -> None:
    limit = check.config.max_body_size
    if limit == math.inf:
        return
    check.begin("an oversized declared body")
    data = check.head("POST", [("Content-Length", str(int(limit) + 1))])
    check.waiting_for = "no answer to a Content-Length over max_body_size"
    begun = trio.current_time()
    with check.within(1):
        async with check.connect() as connection:
            await connection.stream.send_all(data)
            answer = await check.answer(connection.stream)
    check.refusal(answer, 413, begun, 0)


def _stalled_body_plan(config: Config) -> tuple[int, float] | None:
    """Body bytes to send before the stall, and the deadline they get; None when the
    config sets no body deadline.

    The bytes sent earn, under the rate rule, at least ``body_timeout`` of waiting
    when they can, so ``body_timeout`` is what runs out, as its name promises.
    """
    timeout, rate, grace = config.body_timeout, config.body_min_rate, config.body_rate_grace
    if timeout == math.inf and rate == 0:
        return None
    sent = 1
    if rate > 0 and timeout != math.inf:
        sent = math.ceil(timeout * rate)
    sent = int(min(sent, _MAX_STALLED_SENT, config.max_body_size - 1))
    allowed = timeout if rate == 0 else min(timeout, max(grace, sent / rate))
    return sent, allowed


async def _stalled_body(check: _Check) -> None:
    plan = _stalled_body_plan(check.config)
    if plan is None:
        return
    sent, allowed = plan
    check.begin("a stalled request body")
    # One byte short of the declared length, then nothing more.
    data = check.head("POST", [("Content-Length", str(sent + 1))]) + b"x" * sent
    check.waiting_for = f"the connection still open, the body stalled (deadline: {allowed:g} s)"
    begun = trio.current_time()
    with check.within(allowed + check.max_handler_time + 1):
        async with check.connect(buffer_size=len(data) + 1) as connection:
            await connection.stream.send_all(data)
            answer = await check.answer(connection.stream)
    stats = check.server.statistics()
    if not answer.data:
        raise check.fail("the connection closed without an answer: expected 408")
    if answer.runaway:
        check.responses(answer)  # raises: a body that never ends
    try:
        [response] = parse_responses(answer.data, method="POST")
    except ValueError as exc:
        # A streamed response cut off: only the body deadline may have done that.
        if stats.body_timeouts != 1 or stats.handler_errors:
            message = f"the response was cut off, and not by the body deadline: {exc}"
            raise check.fail(message) from None
        return
    if response.status == 408:
        if response.headers.get("connection") != "close":
            raise check.fail("the 408 does not say Connection: close")
        if stats.body_timeouts and answer.first_at - begun < allowed - _EPSILON:
            raise check.fail(f"408 after {answer.first_at - begun:g} s, before {allowed:g} s")
        return
    at_first = answer.stats_at_first
    if at_first is not None and at_first.body_timeouts:
        raise check.fail(
            f"the handler answered {response.status} after the request body timed out: it "
            "caught trioserve.RequestTimeout (or replaced it) instead of letting it "
            "propagate, so the client never learns it was too slow (expected 408)"
        )


async def _never_reads(check: _Check) -> None:
    timeout = check.config.write_timeout
    if timeout == math.inf:
        return
    check.begin("a client that stops reading after the response head")
    check.waiting_for = (
        "the connection still open, its client not reading (does closing the response body wait?)"
    )
    with check.within(check.max_handler_time + timeout + 1):
        # One byte of buffer: once the client stops reading, the next write blocks.
        async with check.connect(buffer_size=1) as connection:
            await connection.stream.send_all(check.head())
            head = await _receive_head(connection.stream)
            try:
                complete = bool(parse_responses(head))
            except ValueError:
                complete = False  # more is to come: the body
            if not complete:
                await connection.ended.wait()
    check.no_handler_errors("when its client stopped reading")
    if complete:
        return  # the response was its head alone: no write was left to block
    began = check.probe.last_write_began()
    if began is None:
        raise check.fail("the handler was not called")
    took = connection.ended_at - began
    if abs(took - timeout) > _EPSILON:
        closing = [body.close_time() for body in check.probe.bodies]
        cause = f" (closing the streamed body took {max(closing):g} s)" if closing else ""
        raise check.fail(
            f"the connection ended {took:g} s after the last write began, not at "
            f"write_timeout ({timeout:g} s){cause}"
        )
    stats = check.server.statistics()
    if stats.write_timeouts != 1 or stats.connections_aborted != 1:
        raise check.fail("the connection was not aborted as a write timeout")
    check.bodies_closed()


async def _receive_head(stream: PipeStream) -> bytes:
    """Read a byte at a time up to the end of a response head (or the close)."""
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        try:
            byte = await stream.receive_some(1)
        except trio.BrokenResourceError:
            break
        if not byte:
            break
        head += byte
    return bytes(head)


async def _reset_mid_response(check: _Check) -> None:
    check.begin("a reset in the middle of the response")
    with check.within(2 * check.max_handler_time):
        async with check.connect() as connection:
            check.waiting_for = "no first byte of a response"
            await connection.stream.send_all(check.head())
            await connection.stream.receive_some(1)
            await reset(connection.stream)
            reset_at = trio.current_time()
            check.waiting_for = "the connection still open after a reset"
            await connection.ended.wait()
    if connection.ended_at - reset_at > check.max_handler_time:
        raise check.fail(
            f"the connection was still open {check.max_handler_time:g} s after a reset"
        )
    check.bodies_closed()
    check.no_handler_errors("when its connection was reset")


async def _vanished(check: _Check) -> None:
    cases = [("after a whole GET", check.head())]
    if check.config.max_body_size >= 2:
        declared = check.head("POST", [("Content-Length", "2")])
        cases.append(("in the middle of a POST body", declared + b"x"))
    for when, data in cases:
        check.begin(f"a client that goes away {when}")
        check.waiting_for = "the request could not be sent"
        with check.within(check.max_handler_time):
            async with check.connect() as connection:
                await connection.stream.send_all(data)
                await trio.testing.wait_all_tasks_blocked()  # the handler waits (or is done)
                await connection.stream.aclose()
                check.waiting_for = (
                    "the handler still running after its client went away: does it catch "
                    "trioserve.ClientDisconnected, shield its waits from cancellation, or "
                    "say watch_disconnect = False and never await "
                    "request.wait_disconnected()?"
                )
                await connection.ended.wait()
        check.bodies_closed()
        check.no_handler_errors("after its client went away")


_FAULTS: tuple[Callable[[_Check], Awaitable[None]], ...] = (
    _plain_request,
    _pipelined,
    _slow_head,
    _oversized_head,
    _oversized_body,
    _stalled_body,
    _never_reads,
    _reset_mid_response,
    _vanished,
)
