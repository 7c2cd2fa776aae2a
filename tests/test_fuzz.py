"""Property tests: random and mutated requests through ``Server.serve_connection``.

For any bytes a client sends, split at any points, ended by EOF, a close, a reset or
silence, the server must: never raise out of the connection task, never log an
internal error, answer with a sequence of valid HTTP/1.1 responses (checked by an h11
client) or close, and then serve the next connection normally.

Each example runs in its own ``trio.run`` under a MockClock, so a client that goes
silent costs only virtual seconds (the server's own deadlines end it).
"""

from __future__ import annotations

import logging

import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import HealthCheck, event, example, given, settings

import trioserve
from trioserve.testing import open_connection, parse_responses, receive_all

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    # Near and over CONFIG's limits.
    b"GET /" + b"t" * 520 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 2000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4097\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1001\r\n" + b"b" * 4097 + b"\r\n0\r\n\r\n",
]
#: Bytes that matter to an HTTP parser, to insert more often than chance would.
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\xff",
    b"Content-Length: 4\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"HTTP/2.0",
    b"ffffffff\r\n",
    b"0\r\n\r\n",
]
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

CONFIG = trioserve.Config(max_header_size=2048, max_body_size=4096, max_target_length=512)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "insert", "token", "delete", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            at = min(at, len(data) - 1)
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "duplicate":
            data[at:at] = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


REQUESTS = st.one_of(
    _mutated(),
    st.binary(max_size=200),
    st.lists(st.sampled_from(SEEDS + TOKENS), max_size=6).map(b"".join),
)
ENDINGS = st.sampled_from(["eof", "close", "reset", "silence"])


async def _handler(request: trioserve.Request) -> trioserve.Response:
    body = await request.body()
    if request.method == "HEAD":
        # A bodiless status, so the h11 client parsing the answer (which assumes
        # each response answers a GET) needs no knowledge of the method.
        return trioserve.Response(204)
    return trioserve.Response(200, body=body)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _check_answer(answer: bytes) -> list[int]:
    """A sequence of complete, valid responses; 1xx only before a final one (or last,
    when the client vanished mid-body after ``100 Continue``)."""
    if answer.endswith(CONTINUE):
        answer = answer[: -len(CONTINUE)]
    responses = parse_responses(answer)  # raises ValueError if anything is off
    for response in responses[:-1]:
        assert response.status < 400
        assert response.headers.get("connection") != "close"
    for response in responses:
        if response.status >= 400:
            assert response.headers["connection"] == "close"
            assert response.status in (400, 404, 405, 408, 413, 414, 431, 501, 505)
    return [response.status for response in responses]


async def _one_example(data: bytes, cuts: list[int], ending: str) -> list[int] | None:
    """Returns the statuses answered (None when the client did not read)."""
    statuses = None
    server = trioserve.Server(_handler, CONFIG)
    async with open_connection(server) as stream:
        pieces = []
        start = 0
        for cut in sorted({c % (len(data) + 1) for c in cuts}):
            pieces.append(data[start:cut])
            start = cut
        pieces.append(data[start:])
        try:
            for piece in pieces:
                if piece:
                    await stream.send_all(piece)
                    await trio.sleep(0.01)
        except trio.BrokenResourceError:
            pass  # the server answered early and closed: fine
        if ending == "eof":
            try:
                await stream.send_eof()
            except trio.ClosedResourceError:
                pass
        elif ending == "close":
            await stream.aclose()
        elif ending == "reset":
            stream.reset()
        if ending in ("eof", "silence"):
            statuses = _check_answer(await receive_all(stream))
    # The connection task finished without raising (the nursery would have said so).
    stats = server.statistics()
    assert stats.connections_open == 0
    assert stats.handler_errors == 0
    # The same server serves the next connection normally.
    async with open_connection(server) as stream:
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        await stream.send_eof()
        [response] = parse_responses(await receive_all(stream))
    assert response.status == 200
    assert response.body == b"ok"
    return statuses


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=REQUESTS, cuts=st.lists(st.integers(0, 10_000), max_size=4), ending=ENDINGS)
@example(data=SEEDS[5][:-2], cuts=[], ending="eof")  # EOF mid-body after 100 Continue
@example(data=SEEDS[4], cuts=list(range(200)), ending="silence")  # byte by byte
def test_any_bytes_get_valid_responses_or_a_close(
    data: bytes, cuts: list[int], ending: str
) -> None:
    errors = _Errors()
    logger = logging.getLogger("trioserve")
    logger.addHandler(errors)
    try:
        statuses = trio.run(
            _one_example,
            data,
            cuts,
            ending,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
    finally:
        logger.removeHandler(errors)
    assert errors.records == []
    # See what the examples exercised: pytest --hypothesis-show-statistics.
    event(f"answered {statuses}" if statuses is not None else "client did not read")
