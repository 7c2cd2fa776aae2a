"""Strict framing (issue 9, docs/framing.md): what llhttp and nginx refuse and h11 accepts.

Every case runs three ways (the ``feed`` fixture): whole, one byte per read, and
pipelined behind a ``GET /prelude``. A refused request is followed by a request that
must never be answered. "At once" means in virtual time 0: before this, these requests
waited for ``header_timeout`` or ``body_timeout`` and got 408, or were served.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import trioserve
from trioserve import Request, Response

from .helpers import FEEDS, Reply, open_feed

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
CHUNKED = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture(params=FEEDS)
def feed(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


class Collect:
    """Streams the body and keeps what it saw, then answers with it."""

    def __init__(self) -> None:
        self.seen = bytearray()

    async def __call__(self, request: Request) -> Response:
        async for piece in request.stream():
            self.seen += piece
        return Response(200, body=f"{request.method} {request.http_version} {self.seen!r}")


async def ignore_body(request: Request) -> Response:
    return Response(200, body=b"ignored")


async def refuse(
    feed: str,
    data: bytes,
    *,
    config: trioserve.Config | None = None,
    handler: Collect | None = None,
) -> tuple[Reply, trioserve.ServerStatistics, float]:
    """Send ``data``; return the one answer, the statistics and when it came."""
    async with open_feed(handler or Collect(), feed, config) as conn:
        await conn.send(data)
        reply = await conn.read()
        answered_at = trio.current_time()
        # Refused: nothing more is answered, not even a request sent after.
        assert await conn.read_eof() == b""
        stats = conn.server.statistics()
    assert reply.headers.get("connection") == "close"
    assert stats.requests_served == (1 if feed == "pipelined" else 0)
    return reply, stats, answered_at


# --- 1. Chunk extensions: the grammar of RFC 9112 7.1.1, on the raw bytes ----------------


@pytest.mark.parametrize(
    "body",
    [
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5;a=\x00b\r\nhello\r\n0\r\n\r\n",
        b"5;a\x01\r\nhello\r\n0\r\n\r\n",
        b"5;a=b\x7f\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0;a\rb\r\n\r\n",
        b"5\r\nhello\r\n5;a\rb\r\nworld\r\n0\r\n\r\n",
        b"5;a b\r\nhello\r\n0\r\n\r\n",
        b"5;=b\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b'5;a="b\r\nhello\r\n0\r\n\r\n',
        b"5;a=b c\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5;a \r\nhello\r\n0\r\n\r\n",
    ],
    ids=[
        "bare-cr",
        "nul-in-value",
        "ctl-in-name",
        "del-in-value",
        "bare-cr-in-last-chunk",
        "bare-cr-in-second-chunk",
        "space-in-name",
        "no-name",
        "empty-value",
        "unterminated-quoted-string",
        "two-words-value",
        "whitespace-before-crlf",
        "whitespace-after-name",
    ],
)
async def test_malformed_chunk_extension_gets_400(
    feed: str, autojump_clock: trio.testing.MockClock, body: bytes
) -> None:
    reply, stats, answered_at = await refuse(feed, CHUNKED + body + SMUGGLED)
    assert reply.status == 400
    assert stats.bad_requests == 1
    assert answered_at == 0


@pytest.mark.parametrize(
    ("size_line", "max_body_size", "status"),
    [
        (b"5;a\rb", math.inf, 400),
        (b"5;a=\x00", math.inf, 400),
        (b"5;\x1b", math.inf, 400),
        (b"10000000000000000", math.inf, 400),
        (b"6400001", 100 * 1024 * 1024, 413),
    ],
    ids=["bare-cr", "nul", "escape", "17th-digit", "over-max-body-size"],
)
async def test_incomplete_chunk_size_line_is_refused_at_once(
    feed: str,
    autojump_clock: trio.testing.MockClock,
    size_line: bytes,
    max_body_size: float,
    status: int,
) -> None:
    # The line never ends: the refusal cannot wait for its CRLF.
    config = trioserve.Config(max_body_size=max_body_size)
    reply, _, answered_at = await refuse(feed, CHUNKED + size_line, config=config)
    assert reply.status == status
    assert answered_at == 0


async def test_a_handler_that_never_reads_a_refused_body_does_not_keep_the_connection(
    feed: str, autojump_clock: trio.testing.MockClock
) -> None:
    # h11 accepts the body, so the unread body was drained and the request behind it
    # served; the drain now meets the refusal and closes.
    async with open_feed(ignore_body, feed) as conn:
        await conn.send(CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n" + SMUGGLED)
        reply = await conn.read()
        assert await conn.read_eof() == b""
        stats = conn.server.statistics()
    assert reply.body == b"ignored"
    assert stats.requests_served == (2 if feed == "pipelined" else 1)


# --- 2. Chunk sizes: at most 16 hex digits, and never over max_body_size -----------------


@pytest.mark.parametrize(
    "size_line",
    [
        b"10000000000000000\r\n",  # 2**64
        b"00000000000000005\r\nhello\r\n0\r\n\r\n",  # 17 digits, whatever their value
        b"ffffffffffffffffffff\r\n",  # h11 takes up to 20
    ],
    ids=["2**64", "17-digits-leading-zeros", "20-digits"],
)
async def test_chunk_size_of_more_than_16_hex_digits_gets_400_at_once(
    feed: str, autojump_clock: trio.testing.MockClock, size_line: bytes
) -> None:
    # No body limit, so that the size's length is what is refused.
    config = trioserve.Config(max_body_size=math.inf)
    reply, stats, answered_at = await refuse(feed, CHUNKED + size_line + SMUGGLED, config=config)
    assert reply.status == 400
    assert stats.bad_requests == 1
    assert answered_at == 0


@pytest.mark.parametrize(
    "size_line",
    [b"ffffffffffffffff\r\n", b"6400001\r\n", b"6400001;ext=1\r\n"],
    ids=["2**64-1", "limit+1", "limit+1-with-ext"],
)
async def test_chunk_over_max_body_size_gets_413_at_once(
    feed: str, autojump_clock: trio.testing.MockClock, size_line: bytes
) -> None:
    # max_body_size defaults to 100 MiB = 0x6400000. What follows the size line was
    # read as chunk data until body_timeout (408).
    reply, stats, answered_at = await refuse(feed, CHUNKED + size_line + SMUGGLED)
    assert reply.status == 413
    assert stats.bodies_too_large == 1
    assert answered_at == 0


async def test_chunk_that_would_cross_max_body_size_gets_413_before_its_data(
    feed: str, autojump_clock: trio.testing.MockClock
) -> None:
    handler = Collect()
    config = trioserve.Config(max_body_size=8)
    # The second chunk's data never comes: its size line is enough.
    reply, _, answered_at = await refuse(
        feed, CHUNKED + b"5\r\nhello\r\n4\r\n", config=config, handler=handler
    )
    assert reply.status == 413
    assert answered_at == 0
    # The body before the refused chunk reached the handler, however it was split.
    assert handler.seen == b"hello"


async def test_refusal_falls_where_it_is_in_the_body(
    feed: str, autojump_clock: trio.testing.MockClock
) -> None:
    handler = Collect()
    body = b"5\r\nhello\r\n6\r\n world\r\n5;a\rb\r\nagain\r\n0\r\n\r\n"
    reply, _, _ = await refuse(feed, CHUNKED + body + SMUGGLED, handler=handler)
    assert reply.status == 400
    assert handler.seen == b"hello world"


# --- 3. An incomplete head is judged line by line ---------------------------------------


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /\tg HTTP/1.1\r\n", 400),
        (b"GET /\tg HTTP/1.1\r\nHost: h\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: h\r\n", 400),
        (b"get / HTTP/1.1\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n", 400),
        (b"GET / HTTP/1.1\r\n\tfolded\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n", 505),
        (b"GET /" + b"t" * 64 + b" HTTP/1.1\r\n", 414),
    ],
    ids=[
        "tab-in-target",
        "tab-in-target-then-field",
        "space-after-version",
        "lowercase-method",
        "space-in-name",
        "no-colon",
        "nul-in-value",
        "bare-cr-in-value",
        "obs-fold",
        "obs-fold-first-line",
        "http2",
        "target-too-long",
    ],
)
async def test_bad_line_of_an_incomplete_head_is_refused_at_once(
    feed: str, autojump_clock: trio.testing.MockClock, head: bytes, status: int
) -> None:
    # The blank line never comes: judged when it came, these waited for
    # header_timeout and got 408.
    config = trioserve.Config(max_target_length=32)
    reply, stats, answered_at = await refuse(feed, head, config=config)
    assert reply.status == status
    assert answered_at == 0
    assert stats.header_timeouts == 0


async def test_complete_lines_are_judged_before_what_h11_refuses_in_the_same_read(
    feed: str, autojump_clock: trio.testing.MockClock
) -> None:
    # h11 meets the bad field first (400) when the head comes whole; one byte per read,
    # the request line is judged first (505). The order is the line order either way.
    reply, _, _ = await refuse(feed, b"GET / HTTP/2.0\r\nBad Name: v\r\n\r\n" + SMUGGLED)
    assert reply.status == 505


# --- 4. Methods: uppercase letters, "-" and "_" ------------------------------------------


@pytest.mark.parametrize(
    "method",
    [b"get", b"Get", b"gET", b"loGET", b"G3T", b"0GET", b"GET.", b"GET!", b"PO~ST"],
)
async def test_method_other_than_uppercase_letters_gets_400(
    feed: str, autojump_clock: trio.testing.MockClock, method: bytes
) -> None:
    reply, stats, _ = await refuse(feed, method + b" /s HTTP/1.1\r\nHost: h\r\n\r\n" + SMUGGLED)
    assert reply.status == 400
    assert stats.bad_requests == 1


async def test_leftover_body_bytes_read_as_a_method_get_400(
    feed: str, autojump_clock: trio.testing.MockClock
) -> None:
    # The client meant a body of 5 and declared 3: "lo" is left before the next
    # request line. Before, "loGET" was served as a method.
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nhello"
    async with open_feed(Collect(), feed) as conn:
        await conn.send(post + b"GET /s HTTP/1.1\r\nHost: h\r\n\r\n" + SMUGGLED)
        first = await conn.read()
        second = await conn.read()
        assert await conn.read_eof() == b""
    assert first.body == b"POST 1.1 bytearray(b'hel')"
    assert second.status == 400


# --- 5. HTTP/1.2 and later 1.x are HTTP/1.1: Host is required ----------------------------


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
async def test_http_1_x_above_1_1_without_host_gets_400(
    feed: str, autojump_clock: trio.testing.MockClock, version: bytes
) -> None:
    reply, stats, _ = await refuse(feed, b"GET /s HTTP/" + version + b"\r\n\r\n" + SMUGGLED)
    assert reply.status == 400
    assert stats.bad_requests == 1


# --- What must still be served ------------------------------------------------------------
# These pass on the code before the change too: they hold the new rules to what they
# must refuse, nothing more.


@pytest.mark.parametrize(
    "body",
    [
        b"5;name=value\r\nhello\r\n0\r\n\r\n",
        # (h11 refuses the BWS the grammar allows between the size and the first ";".)
        b'5;a = b ;\tc\t=\t"q \\" \\x\xff" ; d\r\nhello\r\n0;last=1\r\n\r\n',
        b"000000000000005\r\nhello\r\n0000\r\n\r\n",
        b"5\r\n\r\x00;\n\x7f\r\n0\r\n\r\n",  # anything goes inside chunk data
        b"5\r\nhello\r\n0\r\nTrailer: t\r\n\r\n",
    ],
    ids=["ext", "bws-and-quoted-string", "leading-zeros", "ctl-in-data", "trailer"],
)
async def test_valid_chunked_bodies_are_served(
    feed: str, autojump_clock: trio.testing.MockClock, body: bytes
) -> None:
    async with open_feed(Collect(), feed) as conn:
        await conn.send(CHUNKED + body + b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        reply = await conn.read()
        after = await conn.read()
    assert reply.status == 200
    assert after.status == 200


async def test_sixteen_hex_digits_are_a_size(
    feed: str, autojump_clock: trio.testing.MockClock
) -> None:
    config = trioserve.Config(max_body_size=math.inf)
    async with open_feed(Collect(), feed, config) as conn:
        await conn.send(CHUNKED + b"000000000000000a\r\n0123456789\r\n0\r\n\r\n")
        reply = await conn.read()
    assert reply.body == b"POST 1.1 bytearray(b'0123456789')"


@pytest.mark.parametrize("method", [b"M-SEARCH", b"BASELINE-CONTROL", b"X_CUSTOM", b"PROPFIND"])
async def test_methods_with_dash_and_underscore_are_served(
    feed: str, autojump_clock: trio.testing.MockClock, method: bytes
) -> None:
    async with open_feed(Collect(), feed) as conn:
        await conn.send(method + b" /m HTTP/1.1\r\nHost: h\r\n\r\n")
        reply = await conn.read()
    assert reply.body.startswith(method + b" 1.1")


async def test_http_1_2_with_host_is_served_as_1_1(
    feed: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_feed(Collect(), feed) as conn:
        await conn.send(
            b"GET /v HTTP/1.2\r\nHost: h\r\n\r\n" + b"GET /w HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        reply = await conn.read()
        after = await conn.read()
    assert reply.body.startswith(b"GET 1.1 ")
    assert after.status == 200
