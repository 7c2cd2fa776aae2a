"""Tests of trioserve.testing itself: the streams, the fault injectors, the clients,
the response readers and the conformance check.

A fault injector that silently did nothing would make every test built on it pass
for the wrong reason, so each one is checked here against what the server (or the
other end of the stream) actually sees, and when; and ``check_handler`` is shown to
fail, with a message that names the cause, on handlers broken in each way it claims
to catch.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trioserve
from examples import asgi_app, echo_stream
from trioserve.asgi import ASGIHandler
from trioserve.testing import (
    FailAfter,
    PipeStream,
    ResponseReader,
    check_handler,
    open_client,
    open_connection,
    parse_responses,
    receive_all,
    receive_then_close,
    reset,
    send_then_close,
    send_with_stall,
    stream_pair,
    trickle,
)

from .conftest import echo, hello

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

# --- stream_pair ---------------------------------------------------------------------------


async def test_stream_pair_passes_trios_half_closeable_stream_checks() -> None:
    async def maker() -> tuple[PipeStream, PipeStream]:
        return stream_pair()

    async def clogged_maker() -> tuple[PipeStream, PipeStream]:
        # Both directions full: the next send blocks until the other end reads.
        a, b = stream_pair(buffer_size=1)
        await a.send_all(b"?")
        await b.send_all(b"?")
        return a, b

    await trio.testing.check_half_closeable_stream(maker, clogged_maker)


async def test_stream_pair_buffer_is_bounded_like_a_socket() -> None:
    client, server = stream_pair(buffer_size=10)
    await server.send_all(b"x" * 10)  # fits
    with trio.testing.assert_checkpoints(), trio.move_on_after(1) as blocked:
        await server.send_all(b"y")  # a client that never reads blocks the writer
    assert blocked.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, b"z" * 15)
        await trio.testing.wait_all_tasks_blocked()
        received = b""
        while len(received) < 25:
            received += await client.receive_some()
    assert received == b"x" * 10 + b"z" * 15


async def test_close_gives_eof_and_fails_the_peers_sends() -> None:
    client, server = stream_pair()
    await client.send_all(b"last words")
    await client.aclose()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"anyone?")


async def test_reset_breaks_both_directions_of_the_peer() -> None:
    client, server = stream_pair()
    await reset(client, b"GET")
    # Unlike a close, a reset discards what was in flight, as a TCP RST does.
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await server.send_all(b"x")


async def test_fail_after_breaks_after_n_bytes_in_total() -> None:
    client, server = stream_pair()
    wrapped = FailAfter(server, 5)
    await client.send_all(b"abc")
    assert await wrapped.receive_some() == b"abc"
    await wrapped.send_all(b"de")  # 5 bytes in total: still fine
    with pytest.raises(trio.BrokenResourceError, match="injected"):
        await wrapped.send_all(b"f")
    assert await client.receive_some() == b"de"


# --- fault injectors, seen from the other end, in virtual time -----------------------------


async def _timed_receive(stream: trio.abc.ReceiveStream) -> list[tuple[float, bytes]]:
    arrivals = []
    while data := await stream.receive_some():
        arrivals.append((trio.current_time(), data))
    return arrivals


async def test_trickle_sends_piece_by_piece_at_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = stream_pair()
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await trickle(client, b"abcdefg", size=3, interval=2.0)
            await client.aclose()

        nursery.start_soon(send)
        arrivals = await _timed_receive(server)
    assert arrivals == [(0.0, b"abc"), (2.0, b"def"), (4.0, b"g")]


async def test_trickle_stops_quietly_when_the_server_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, client, b"x" * 100)
        await server.receive_some()
        await server.aclose()
    assert trio.current_time() == 1.0  # the second byte found the server gone


async def test_send_with_stall(autojump_clock: trio.testing.MockClock) -> None:
    client, server = stream_pair()
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await send_with_stall(client, b"headbody", after=4, duration=7.5)
            await client.aclose()

        nursery.start_soon(send)
        arrivals = await _timed_receive(server)
    assert arrivals == [(0.0, b"head"), (7.5, b"body")]


async def test_send_then_close_mid_request_is_a_client_disconnect() -> None:
    server = trioserve.Server(echo)
    async with open_connection(server) as stream:
        await send_then_close(
            stream, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhalf"
        )
    stats = server.statistics()
    assert stats.client_disconnects == 1
    assert stats.requests_served == 0
    assert stats.connections_open == 0


async def test_receive_then_close_mid_response_cancels_the_streamed_body() -> None:
    closed = trio.Event()

    async def endless(request: trioserve.Request) -> trioserve.Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 1000
            finally:
                closed.set()

        return trioserve.Response(200, body=body())

    server = trioserve.Server(endless)
    async with open_connection(server) as stream:
        await stream.send_all(GET)
        first = await receive_then_close(stream, 100)
    assert first.startswith(b"HTTP/1.1 200 ")
    assert len(first) == 100
    assert closed.is_set()
    stats = server.statistics()
    assert stats.client_disconnects == 1
    assert stats.connections_aborted == 1


async def test_reset_mid_request_is_seen_by_the_server_as_broken() -> None:
    server = trioserve.Server(echo)
    async with open_connection(server) as stream:
        await reset(stream, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nhalf")
    assert server.statistics().connections_open == 0
    assert server.statistics().requests_served == 0


async def test_open_connection_wrap_injects_a_failing_stream() -> None:
    server = trioserve.Server(hello)
    async with open_connection(server, wrap=lambda end: FailAfter(end, len(GET) + 20)) as stream:
        await stream.send_all(GET)
        answer = await receive_all(stream)
    # The server could write 20 bytes of its response before the "network" failed.
    assert len(answer) == 20
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert server.statistics().client_disconnects == 1


async def test_receive_all_refuses_a_runaway_response() -> None:
    client, server = stream_pair()
    await server.send_all(b"x" * 100)
    with pytest.raises(ValueError, match="more than 50 bytes"):
        await receive_all(client, max_bytes=50)


# --- open_connection and open_client: a handler or a Server ------------------------------


async def test_open_connection_serves_a_server_or_a_handler_with_its_config(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(header_timeout=3)
    server = trioserve.Server(hello, config)
    for target, kwargs in [(server, {}), (hello, {"config": config})]:
        start = trio.current_time()
        async with open_connection(target, **kwargs) as stream:  # type: ignore[arg-type]
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x")
            [response] = parse_responses(await receive_all(stream))
        assert response.status == 408
        assert trio.current_time() - start == 3  # the config's header_timeout, not 10 s
    # The server given was the one serving: its counters saw the first connection only.
    assert server.statistics().header_timeouts == 1


async def test_a_server_comes_with_its_own_config() -> None:
    server = trioserve.Server(hello)
    with pytest.raises(TypeError, match="config goes to the Server"):
        async with open_connection(server, trioserve.Config()):
            pass  # pragma: no cover
    with pytest.raises(TypeError, match="config goes to the Server"):
        async with open_client(server, trioserve.Config()):
            pass  # pragma: no cover


async def test_open_client_serves_a_server() -> None:
    server = trioserve.Server(echo)
    async with open_client(server) as client:
        assert (await client.post("/", body=b"hi")).body == b"hi"
        assert client.server is server
    assert server.statistics().requests_served == 1


# --- open_client -----------------------------------------------------------------------------


async def test_open_client_keeps_one_connection_alive() -> None:
    async with open_client(echo) as client:
        for i in range(3):
            response = await client.post("/", body=f"n{i}")
            assert response.status == 200
            assert response.text == f"n{i}"
            assert response.http_version == "1.1"
        assert client.connections_opened == 1
    # Counted after the response is written: read it once the connection task is done.
    assert client.server.statistics().requests_served == 3


async def test_open_client_reconnects_after_the_server_closes() -> None:
    async with open_client(hello) as client:
        first = await client.get("/", headers=[("Connection", "close")])
        assert first.headers["connection"] == "close"
        second = await client.request("GET", "/")
        assert second.body == b"Hello, world!"
        assert client.connections_opened == 2


async def test_open_client_raises_when_the_response_is_cut_off() -> None:
    async def broken(request: trioserve.Request) -> trioserve.Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("the handler failed mid-response")

        return trioserve.Response(200, body=body())

    async with open_client(broken) as client:
        with pytest.raises(trio.BrokenResourceError):
            await client.get("/")
        assert client.server.statistics().handler_errors == 1


async def test_open_client_works_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    async def slow(request: trioserve.Request) -> trioserve.Response:
        await trio.sleep(3600)
        return trioserve.Response(200, body=b"an hour later")

    async with open_client(slow) as client:
        response = await client.get("/")
    assert response.body == b"an hour later"
    assert trio.current_time() == 3600


# --- parse_responses -------------------------------------------------------------------------


def test_parse_responses_pipelined_and_informational() -> None:
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nno!\r\n0\r\n\r\n"
    )
    first, second = parse_responses(data)
    assert (first.status, first.body, first.informational) == (200, b"ok", (100,))
    assert (second.status, second.reason, second.body) == (404, "Not Found", b"no!")
    assert second.informational == ()
    assert parse_responses(b"") == []


def test_parse_responses_head_has_no_body() -> None:
    [response] = parse_responses(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", method="HEAD")
    assert response.headers["content-length"] == "5"
    assert response.body == b""


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # truncated body
        b"HTTP/1.1 200 OK\r\nContent-",  # truncated head
        b"HTTP/1.1 2000 OK\r\n\r\n",  # not a status
        b"hello",
        # Bytes after a response that closes the connection.
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\nextra",
        # A 1xx with no final response after it.
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ],
)
def test_parse_responses_refuses_what_is_not_a_complete_response(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_responses(data)


# --- ResponseReader --------------------------------------------------------------------------


async def test_response_reader_reads_each_answer_as_it_comes() -> None:
    async with open_connection(echo) as stream:
        reader = ResponseReader(stream)
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        first = await reader.receive_response()
        await stream.send_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await reader.receive_response("HEAD")
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        third = await reader.receive_response()
        assert await reader.receive_rest() == b""
        with pytest.raises(trio.BrokenResourceError, match="no more responses"):
            await reader.receive_response()
    assert (first.status, first.body, first.headers["content-length"]) == (200, b"hi", "2")
    assert (second.status, second.body) == (200, b"")
    assert third.headers["connection"] == "close"


async def test_response_reader_waits_for_100_continue() -> None:
    async with open_connection(echo) as stream:
        reader = ResponseReader(stream)
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        assert await reader.receive_informational() == 100
        await stream.send_all(b"ok")
        response = await reader.receive_response("POST")
    assert (response.status, response.body) == (200, b"ok")
    assert response.informational == ()  # the 100 was taken by receive_informational


async def test_response_reader_errors() -> None:
    client, server = stream_pair()
    reader = ResponseReader(client)
    await server.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\npart")
    await server.aclose()
    with pytest.raises(trio.BrokenResourceError, match="incomplete chunked read"):
        await reader.receive_response()

    client, server = stream_pair()
    reader = ResponseReader(client)
    await server.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
    server.reset()  # a reset reads as the end, mid-response
    with pytest.raises(trio.BrokenResourceError, match="closed mid-response"):
        await reader.receive_response()

    client, server = stream_pair()
    reader = ResponseReader(client)
    await server.send_all(b"HTTP/1.1 2000 OK\r\n\r\n")
    with pytest.raises(ValueError, match=r"not a valid HTTP/1\.1 response"):
        await reader.receive_response()

    client, server = stream_pair()
    reader = ResponseReader(client)
    await server.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    with pytest.raises(AssertionError, match="expected an interim"):
        await reader.receive_informational()
    assert (await reader.receive_response("POST")).body == b"no"  # the rest still reads


# --- check_handler -------------------------------------------------------------------------


async def streaming(request: trioserve.Request) -> trioserve.Response:
    async def body() -> AsyncIterator[bytes]:
        for i in range(5):
            yield b"chunk %d\n" % i
            await trio.sleep(1)

    return trioserve.Response(200, body=body())


async def large(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=b"x" * 300_000)  # more than the write buffers


@pytest.mark.parametrize(
    "handler",
    [hello, echo, echo_stream.handler, streaming, large],
    ids=["hello", "echo", "streamed-echo", "streaming", "large"],
)
@pytest.mark.parametrize(
    "config",
    [
        None,
        trioserve.Config(header_timeout=3, body_timeout=7, write_timeout=2, max_body_size=999),
        trioserve.Config(body_min_rate=0, max_header_size=2048),
        trioserve.Config(header_timeout=math.inf, body_timeout=math.inf, write_timeout=math.inf),
    ],
    ids=["defaults", "short", "no-rate", "no-deadlines"],
)
async def test_check_handler_passes_well_behaved_handlers(
    autojump_clock: trio.testing.MockClock,
    handler: trioserve.Handler,
    config: trioserve.Config | None,
) -> None:
    await check_handler(handler, config=config)


async def test_check_handler_on_an_asgi_application(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = ASGIHandler(asgi_app.app)
    async with handler.lifespan():
        await check_handler(handler, path="/?name=check", headers=[("Accept", "text/plain")])


async def swallows_the_body_timeout(request: trioserve.Request) -> trioserve.Response:
    try:
        body = await request.body()
    except Exception:  # too broad: the RequestTimeout never reaches the server
        body = b"(no body)"
    return trioserve.Response(200, body=body)


async def body_never_ends(request: trioserve.Request) -> trioserve.Response:
    async def body() -> AsyncIterator[bytes]:
        while True:
            yield b"tick\n"
            await trio.sleep(1)

    return trioserve.Response(200, body=body())


async def body_never_ends_nor_sleeps(request: trioserve.Request) -> trioserve.Response:
    async def body() -> AsyncIterator[bytes]:
        while True:  # virtual time never moves: cut off by size
            yield b"x" * 65536

    return trioserve.Response(200, body=body())


async def swallows_the_disconnect_and_hangs(request: trioserve.Request) -> trioserve.Response:
    try:
        body = await request.body()
    except trioserve.ClientDisconnected:
        with trio.CancelScope(shield=True):  # "finish the work anyway"
            await trio.sleep(3600)
        raise
    return trioserve.Response(200, body=body)


async def slow_to_close_when_cut_off(request: trioserve.Request) -> trioserve.Response:
    async def body() -> AsyncIterator[bytes]:
        finished = False
        try:
            yield b"x" * 100
            finished = True
        finally:
            if not finished:  # an abort: a cleanup that waits, shielded
                with trio.CancelScope(shield=True):
                    await trio.sleep(20)

    return trioserve.Response(200, body=body())


async def fails_when_cut_off(request: trioserve.Request) -> trioserve.Response:
    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"x" * 100
        except BaseException:
            raise RuntimeError("cleanup failed") from None

    return trioserve.Response(200, body=body())


async def fails(request: trioserve.Request) -> trioserve.Response:
    raise RuntimeError("broken")


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (fails, "a plain GET: the handler raised an exception"),
        (body_never_ends, "a plain GET: no complete response to GET /, 60 s on"),
        (body_never_ends_nor_sleeps, "a plain GET: the answer ran past 67108864 bytes"),
        (swallows_the_body_timeout, "a stalled request body: the handler answered 200 after"),
        (slow_to_close_when_cut_off, r"stops reading .*\(closing the streamed body took 20 s\)"),
        (fails_when_cut_off, "stops reading .*: the handler raised an exception"),
        (
            swallows_the_disconnect_and_hangs,
            "goes away in the middle of a POST body: the handler still running",
        ),
    ],
    ids=lambda value: getattr(value, "__name__", "message"),
)
async def test_check_handler_catches_broken_handlers(
    autojump_clock: trio.testing.MockClock,
    handler: trioserve.Handler,
    message: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(AssertionError, match=f"^check_handler, .*{message}"):
        await check_handler(handler)


async def test_check_handler_needs_virtual_time() -> None:
    with pytest.raises(RuntimeError, match=r"MockClock\(autojump_threshold=0\)"):
        await check_handler(hello)


@pytest.mark.parametrize("seconds", [0, -1, math.inf, math.nan])
async def test_check_handler_needs_a_finite_handler_time(
    autojump_clock: trio.testing.MockClock, seconds: float
) -> None:
    with pytest.raises(ValueError, match="max_handler_time"):
        await check_handler(hello, max_handler_time=seconds)


async def test_open_connection_still_takes_the_older_server_keyword() -> None:
    server = trioserve.Server(hello)
    async with open_connection(hello, server=server) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        [response] = parse_responses(await receive_all(stream))
    assert response.status == 200
    assert server.statistics().requests_served == 1

    async def other(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200)

    with pytest.raises(ValueError, match="not the server's handler"):
        async with open_connection(other, server=server):
            pass
