"""HTTP/1.1 connection behaviour (RFC 9112), driven by an h11 client in memory.

Every case runs three ways (the ``feed`` fixture): the request arrives whole, one byte
per read, and pipelined behind a ``GET /prelude``. Everything runs in virtual time.
"""

from __future__ import annotations

import email.utils
import logging
import ssl

import pytest
import trio
import trio.testing

import trioserve
from trioserve import Request, Response

from .helpers import FEEDS, open_feed

GET = b"GET /%s HTTP/1.1\r\nHost: example.com\r\n\r\n"


@pytest.fixture(params=FEEDS)
def feed(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


async def describe(request: Request) -> Response:
    """Answers with what it saw, body included."""
    body = await request.body()
    text = f"{request.method} {request.target} {request.http_version} {body!r}"
    return Response(200, headers=[("content-type", "text/plain")], body=text)


async def ignore_body(request: Request) -> Response:
    """Answers at once and never reads the body."""
    return Response(200, body=f"ignored {request.target}")


class Calls:
    """A handler that counts its calls (for requests that must never reach it)."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, request: Request) -> Response:
        self.count += 1
        return Response(200, body=b"handled")


def get(path: str) -> bytes:
    return GET % path.encode("ascii")


# --- Keep-alive and Connection: close (RFC 9112 9.3, 9.6) ---------------------------------


async def test_http11_keeps_alive_by_default(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(get("a"))
        first = await conn.read()
        await conn.send(get("b"))
        second = await conn.read()
        assert conn.server.statistics().connections_total == 1
    assert first.body == b"GET /a 1.1 b''"
    assert second.body == b"GET /b 1.1 b''"
    assert first.headers.get("connection") is None
    assert first.headers.get("content-length") == str(len(first.body))


async def test_http10_kept_alive_when_asked(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = await conn.read()
        await conn.send(b"GET /b HTTP/1.0\r\n\r\n")
        second = await conn.read()
        assert await conn.read_eof() == b""
    assert first.body == b"GET /a 1.0 b''"
    assert first.headers.get("connection") == "keep-alive"
    assert first.headers.get("content-length") == str(len(first.body))
    assert second.body == b"GET /b 1.0 b''"
    assert second.headers.get("connection") == "close"


async def test_http10_closes_by_default(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(b"GET /only HTTP/1.0\r\n\r\n")
        reply = await conn.read()
        assert await conn.read_eof() == b""
    assert reply.body == b"GET /only 1.0 b''"
    assert reply.headers.get("connection") == "close"


async def test_http10_streamed_body_is_close_delimited(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stream(request: Request) -> Response:
        async def chunks():  # type: ignore[no-untyped-def]
            yield b"one,"
            yield b"two"

        return Response(200, body=chunks())

    async with open_feed(stream, feed) as conn:
        await conn.send(b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        reply = await conn.read()
        assert await conn.read_eof() == b""
    # No length is known and HTTP/1.0 has no chunked coding: the close ends the body.
    assert reply.body == b"one,two"
    assert reply.headers.get("transfer-encoding") is None
    assert reply.headers.get("connection") == "close"


async def test_client_connection_close_is_honoured(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        reply = await conn.read()
        assert await conn.read_eof() == b""
    assert reply.status == 200
    assert reply.headers.get("connection") == "close"


async def test_handler_connection_close_is_honoured(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def closing(request: Request) -> Response:
        return Response(200, headers=[("Connection", "close")], body=b"bye")

    async with open_feed(closing, feed) as conn:
        await conn.send(get("x") + get("never"))
        reply = await conn.read()
        assert await conn.read_eof() == b""
    assert reply.body == b"bye"
    assert reply.headers.getall("connection") == ["close"]


async def test_pipelined_requests_are_answered_in_order(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    requests = (
        get("1")
        + b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        + b"HEAD /3 HTTP/1.1\r\nHost: h\r\n\r\n"
        + get("4")
    )
    async with open_feed(describe, feed) as conn:
        await conn.send(requests)
        replies = [
            await conn.read(),
            await conn.read(),
            await conn.read("HEAD"),
            await conn.read(),
        ]
    assert [reply.body for reply in replies] == [
        b"GET /1 1.1 b''",
        b"POST /2 1.1 b'abc'",
        b"",
        b"GET /4 1.1 b''",
    ]
    assert replies[2].headers.get("content-length") == str(len(b"HEAD /3 1.1 b''"))


async def test_empty_lines_before_a_request_line_are_ignored(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # RFC 9112 2.2: a server SHOULD ignore at least one empty line before the request
    # line; some clients send a CRLF after a POST body.
    requests = (
        b"\r\n"
        + get("1")
        + b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\r\n"
        + b"\n\r\n"
        + get("3")
    )
    async with open_feed(describe, feed) as conn:
        await conn.send(requests)
        replies = [await conn.read(), await conn.read(), await conn.read()]
    assert [reply.body for reply in replies] == [
        b"GET /1 1.1 b''",
        b"POST /2 1.1 b'abc'",
        b"GET /3 1.1 b''",
    ]


async def test_a_lone_cr_before_a_request_line_is_refused(feed: str) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(b"\rGET / HTTP/1.1\r\nHost: h\r\n\r\n")
        reply = await conn.read()
    assert reply.status == 400


# --- Request bodies --------------------------------------------------------------------


async def test_chunked_request_body(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with open_feed(describe, feed) as conn:
        await conn.send(chunked + get("after"))
        reply = await conn.read()
        after = await conn.read()
    assert reply.body == b"POST /c 1.1 b'hello world'"
    assert after.body == b"GET /after 1.1 b''"


async def test_streamed_request_body_arrives_in_order(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    pieces: list[bytes] = []

    async def collect(request: Request) -> Response:
        async for piece in request.stream():
            assert piece
            pieces.append(piece)
        return Response(204)

    async with open_feed(collect, feed) as conn:
        await conn.send(b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789")
        reply = await conn.read()
    assert reply.status == 204
    assert b"".join(pieces) == b"0123456789"
    if feed == "bytewise":
        assert len(pieces) == 10


async def test_unread_small_body_is_drained_for_the_next_request(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_feed(ignore_body, feed) as conn:
        await conn.send(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nGET /x HTTP")
        first = await conn.read()
        await conn.send(get("b"))
        second = await conn.read()
        assert conn.server.statistics().connections_total == 1
    assert first.body == b"ignored /a"
    assert first.headers.get("connection") is None
    # Had the body been left in the buffer, "GET /x HTTP" would have been parsed next.
    assert second.body == b"ignored /b"


async def test_unread_small_chunked_body_is_drained(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    chunked = (
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    async with open_feed(ignore_body, feed) as conn:
        await conn.send(chunked + get("b"))
        first = await conn.read()
        second = await conn.read()
    assert (first.body, second.body) == (b"ignored /a", b"ignored /b")


async def test_unread_large_body_closes_instead_of_draining(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(max_drain_size=16)
    async with open_feed(ignore_body, feed, config) as conn:
        await conn.send(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n\r\n" + get("b"))
        reply = await conn.read()
        assert await conn.read_eof() == b""
    assert reply.body == b"ignored /a"
    assert reply.headers.get("connection") == "close"


async def test_unread_large_chunked_body_stops_the_drain(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(max_drain_size=16)
    head = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with open_feed(ignore_body, feed, config) as conn:
        await conn.send(head + b"20\r\n" + b"x" * 32 + b"\r\n")
        reply = await conn.read()
        # The body's end never came: the drain gave up at max_drain_size and closed.
        assert await conn.read_eof() == b""
    assert reply.body == b"ignored /a"


# --- Expect: 100-continue (RFC 9110 10.1.1) --------------------------------------------

EXPECT = b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"


async def test_100_continue_is_sent_when_the_handler_reads(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(EXPECT)
        assert await conn.read_informational() == 100
        await conn.send(b"hello" + get("next"))
        reply = await conn.read()
        after = await conn.read()
    assert reply.body == b"POST /e 1.1 b'hello'"
    assert reply.informational == ()
    assert after.body == b"GET /next 1.1 b''"


async def test_100_continue_not_sent_when_the_handler_does_not_read(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[str | None] = []

    async def peek(request: Request) -> Response:
        seen.append(request.headers.get("expect"))
        return Response(403, body=b"no")

    async with open_feed(peek, feed) as conn:
        await conn.send(EXPECT)
        reply = await conn.read()
        # The client may or may not send the body now, so the connection cannot be
        # reused: it is closed.
        assert await conn.read_eof() == b""
        assert conn.server.statistics().responses_1xx == 0
    assert (reply.status, reply.informational) == (403, ())
    assert reply.headers.get("connection") == "close"
    assert seen == ["100-continue"]


async def test_100_continue_not_sent_for_a_body_over_the_limit(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Calls()
    config = trioserve.Config(max_body_size=4)
    async with open_feed(handler, feed, config) as conn:
        await conn.send(EXPECT)
        reply = await conn.read()
        assert await conn.read_eof() == b""
    assert (reply.status, reply.informational) == (413, ())
    assert handler.count == 0


async def test_100_continue_when_the_client_sends_the_body_anyway(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(EXPECT + b"hello" + get("next"))
        reply = await conn.read()
        after = await conn.read()
    assert reply.body == b"POST /e 1.1 b'hello'"
    assert after.body == b"GET /next 1.1 b''"


# --- HEAD, Date, Server, bodiless statuses ----------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["bytes", "streamed"])
async def test_head_has_the_get_headers_and_no_body(
    feed: str, autojump_clock: trio.testing.MockClock, streamed: bool
) -> None:
    async def page(request: Request) -> Response:
        headers = [("content-type", "text/html"), ("x-custom", "1")]
        if not streamed:
            return Response(200, headers=headers, body=b"<p>page</p>")

        async def chunks():  # type: ignore[no-untyped-def]
            yield b"<p>page</p>"

        return Response(200, headers=headers, body=chunks())

    async with open_feed(page, feed) as conn:
        await conn.send(get("p") + b"HEAD /p HTTP/1.1\r\nHost: h\r\n\r\n" + get("after"))
        got = await conn.read()
        head = await conn.read("HEAD")
        after = await conn.read()
    assert (head.status, head.body) == (200, b"")
    assert without_date(head.headers.items()) == without_date(got.headers.items())
    assert after.body == b"<p>page</p>"


def without_date(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in items if name != "date"]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (GET % b"ok", 200),
        (GET % b"missing", 404),
        (GET % b"fail", 500),
        (b"GET /x HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /x HTTP/2.0\r\n\r\n", 505),
    ],
    ids=["200", "404", "500", "400", "505"],
)
async def test_date_and_server_on_every_response(
    feed: str, autojump_clock: trio.testing.MockClock, request_bytes: bytes, status: int
) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/fail":
            raise RuntimeError("boom")
        return Response(200 if request.path == "/ok" else 404)

    async with open_feed(handler, feed) as conn:
        await conn.send(request_bytes)
        reply = await conn.read()
    assert reply.status == status
    assert reply.headers.get("server") == "trioserve"
    date = reply.headers.get("date")
    assert date is not None
    assert email.utils.parsedate_to_datetime(date).tzname() == "UTC"


async def test_server_header_is_configurable_and_not_duplicated(
    feed: str,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/own":
            return Response(200, headers=[("Server", "mine"), ("Date", "then")])
        return Response(200)

    config = trioserve.Config(server_header=None)
    async with open_feed(handler, feed, config) as conn:
        await conn.send(get("plain") + get("own"))
        plain = await conn.read()
        own = await conn.read()
    assert plain.headers.get("server") is None
    assert plain.headers.get("date") is not None
    assert own.headers.getall("server") == ["mine"]
    assert own.headers.getall("date") == ["then"]


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_or_length_on_204_and_304(
    feed: str, autojump_clock: trio.testing.MockClock, status: int
) -> None:
    async def handler(request: Request) -> Response:
        return Response(status, headers=[("content-length", "5")], body=b"hello")

    async with open_feed(handler, feed) as conn:
        await conn.send(get("x") + get("y"))
        first = await conn.read()
        second = await conn.read()
    for reply in (first, second):
        assert (reply.status, reply.body) == (status, b"")
        assert reply.headers.get("content-length") is None
        assert reply.headers.get("transfer-encoding") is None


# --- Strict framing: refusals that close the connection ---------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        # RFC 9112 6.1: Content-Length and Transfer-Encoding together (smuggling).
        b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n",
        # RFC 9112 6.3: more than one Content-Length field, even identical ones.
        b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /s HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\nCONTENT-LENGTH: 6\r\n\r\nhello!",
        b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: -5\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
        # RFC 9112 5.2: obs-fold.
        b"GET /s HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /s HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n\tb\r\n\r\n",
        # RFC 9112 6.1: a Transfer-Encoding other than chunked, or chunked not last.
        b"POST /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        # RFC 9112 6.1: Transfer-Encoding in HTTP/1.0.
        b"POST /s HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # RFC 9112 3.2: no Host, or two.
        b"GET /s HTTP/1.1\r\n\r\n",
        b"GET /s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        # Malformed request lines and fields.
        b"GET  /s HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /s HTTP/1.1 extra\r\nHost: h\r\n\r\n",
        b"G@T /s HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /s HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
        b"GET /s HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
        b"GET /s HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        # A malformed chunked body (the handler reads it).
        b"POST /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=[
        "cl-then-te",
        "te-then-cl",
        "two-identical-cl",
        "two-cl-any-case",
        "cl-list",
        "cl-negative",
        "cl-plus",
        "obs-fold-space",
        "obs-fold-tab",
        "te-gzip",
        "te-chunked-not-last",
        "te-http10",
        "no-host",
        "two-hosts",
        "double-space",
        "extra-token",
        "bad-method",
        "space-in-name",
        "no-colon",
        "nul-in-value",
        "bad-chunk-size",
    ],
)
async def test_malformed_request_gets_400_and_close(
    feed: str, autojump_clock: trio.testing.MockClock, request_bytes: bytes
) -> None:
    async with open_feed(describe, feed) as conn:
        await conn.send(request_bytes + get("smuggled"))
        reply = await conn.read()
        assert await conn.read_eof() == b""
        stats = conn.server.statistics()
    assert reply.status == 400
    assert reply.headers.get("connection") == "close"
    assert reply.body == b"Bad Request\n"
    assert stats.bad_requests == 1
    # Nothing was served but the pipelined prelude: not the bad request, and not the
    # request smuggled behind it.
    assert stats.requests_served == (1 if feed == "pipelined" else 0)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: h\r\n\r\n",
        # The HTTP/2 connection preface (RFC 9113 3.4) parses as a request line.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
    ids=["http2", "http3", "h2-preface"],
)
async def test_http_major_version_other_than_1_is_refused(
    feed: str, autojump_clock: trio.testing.MockClock, request_bytes: bytes
) -> None:
    handler = Calls()
    async with open_feed(handler, feed) as conn:
        await conn.send(request_bytes)
        reply = await conn.read()
        assert await conn.read_eof() == b""
    assert reply.status == 505
    assert reply.headers.get("connection") == "close"
    assert handler.count == 0


async def test_tls_client_hello_on_the_plain_port(
    feed: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Calls()
    async with open_feed(handler, feed) as conn:
        await conn.send(client_hello())
        reply = await conn.read()
        assert await conn.read_eof() == b""
        stats = conn.server.statistics()
    # Refused from its first byte (no method starts with 0x16): no wait for a head
    # that never comes.
    assert reply.status == 400
    assert trio.current_time() < 1
    assert handler.count == 0
    assert stats.bad_requests == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def client_hello() -> bytes:
    """The first flight of a real TLS client."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"
    return hello


# --- Request targets (RFC 9112 3.2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "raw_path", "query_string"),
    [
        (b"/a%20b/c?x=1&y=%202", "/a b/c", b"/a%20b/c", b"x=1&y=%202"),
        (b"/plain", "/plain", b"/plain", b""),
        (b"/q?", "/q", b"/q", b""),
        (b"http://example.com/a%2Fb?q=1", "/a/b", b"/a%2Fb", b"q=1"),
        (b"http://example.com:8080", "/", b"/", b""),
        (b"https://example.com?x", "/", b"/", b"x"),
        (b"*", "*", b"*", b""),
    ],
    ids=[
        "origin",
        "no-query",
        "empty-query",
        "absolute",
        "absolute-no-path",
        "no-path-query",
        "*",
    ],
)
async def test_request_target_forms(
    feed: str,
    autojump_clock: trio.testing.MockClock,
    target: bytes,
    path: str,
    raw_path: bytes,
    query_string: bytes,
) -> None:
    seen: list[tuple[str, str, bytes, bytes]] = []

    async def handler(request: Request) -> Response:
        seen.append((request.target, request.path, request.raw_path, request.query_string))
        return Response(200)

    method = b"OPTIONS" if target == b"*" else b"GET"
    async with open_feed(handler, feed) as conn:
        await conn.send(method + b" " + target + b" HTTP/1.1\r\nHost: example.com\r\n\r\n")
        reply = await conn.read()
    assert reply.status == 200
    assert seen == [(target.decode("ascii"), path, raw_path, query_string)]


# --- Bytes after a request that ends the connection ---------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /last HTTP/1.0\r\n\r\n",
        b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"POST /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["http10", "close", "close-with-body"],
)
@pytest.mark.parametrize(
    "trailing",
    [GET % b"second", b"\x16\x03\x01garbage\r\n\r\n", b"\r\n" * 1000],
    ids=["request", "garbage", "blank-lines"],
)
@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slow-handler"])
async def test_bytes_after_the_last_request_are_ignored(
    feed: str,
    autojump_clock: trio.testing.MockClock,
    request_bytes: bytes,
    trailing: bytes,
    slow: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> Response:
        body = await request.body()
        if slow:
            await trio.sleep(1)  # the disconnect watcher reads the trailing bytes meanwhile
        return Response(200, body=b"last " + body)

    async with open_feed(handler, feed) as conn:
        await conn.send(request_bytes + trailing)
        reply = await conn.read()
        assert await conn.read_eof() == b""
        stats = conn.server.statistics()
    assert reply.body in (b"last ", b"last ok")
    assert reply.headers.get("connection") == "close"
    assert stats.requests_served == (2 if feed == "pipelined" else 1)
    assert stats.bad_requests == stats.connections_aborted == stats.handler_errors == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
