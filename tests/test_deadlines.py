"""Every deadline in virtual time: the exact moment the server answers or closes (at
the deadline, never before), the status it sends, and the counter it bumps.

Each test runs under ``autojump_clock`` and starts at virtual time 0, so the asserted
moments are the Config values themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trioserve
from trioserve.testing import (
    open_connection,
    parse_responses,
    receive_all,
    send_with_stall,
    trickle,
)

from .conftest import echo, hello

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
DEFAULTS = trioserve.Config()


async def _closed_at(stream: trioserve.testing.PipeStream) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and the moment it closed."""
    answer = await receive_all(stream)
    return answer, trio.current_time()


def _post(length: int, *, extra: bytes = b"") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)


# --- keep_alive_timeout ------------------------------------------------------------------


async def test_keep_alive_timeout_closes_quietly(autojump_clock: trio.testing.MockClock) -> None:
    server = trioserve.Server(hello)
    async with open_connection(server) as stream:
        await trio.sleep(3)  # the first request may come late (within header_timeout)
        await stream.send_all(GET)
        answer, closed = await _closed_at(stream)
    [response] = parse_responses(answer)  # one response, then a quiet close
    assert response.status == 200
    assert "connection" not in response.headers
    assert closed == 3 + DEFAULTS.keep_alive_timeout
    stats = server.statistics()
    assert stats.keep_alive_timeouts == 1
    assert stats.header_timeouts == 0


async def test_keep_alive_timeout_restarts_after_each_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    just_in_time = DEFAULTS.keep_alive_timeout - 0.001
    async with open_connection(hello) as stream:
        for i in range(3):
            if i:
                await trio.sleep(just_in_time)
            await stream.send_all(GET)
            assert parse_responses(await stream.receive_some())[0].status == 200
        last_response = trio.current_time()
        answer, closed = await _closed_at(stream)
    assert answer == b""
    assert last_response == pytest.approx(2 * just_in_time)
    assert closed == last_response + DEFAULTS.keep_alive_timeout


async def test_a_stray_crlf_on_an_idle_connection_keeps_it_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # RFC 9112 2.2: empty lines before a request line are ignored. They once moved
    # the connection into the head phase: a 408 at header_timeout instead of a quiet
    # close at keep_alive_timeout.
    server = trioserve.Server(hello)
    async with open_connection(server) as stream:
        await stream.send_all(GET)
        assert parse_responses(await stream.receive_some())[0].status == 200
        await trio.sleep(1)
        await stream.send_all(b"\r")
        await stream.send_all(b"\n\r\n")  # a CRLF split between reads, then another
        answer, closed = await _closed_at(stream)
    assert answer == b""
    assert closed == DEFAULTS.keep_alive_timeout
    stats = server.statistics()
    assert (stats.keep_alive_timeouts, stats.header_timeouts, stats.responses_4xx) == (1, 0, 0)


async def test_a_request_after_stray_crlfs_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_connection(hello) as stream:
        await stream.send_all(b"\r\n")
        await trio.sleep(1)
        await stream.send_all(b"\r\n" + GET)
        assert parse_responses(await stream.receive_some())[0].status == 200


# --- header_timeout ------------------------------------------------------------------------


async def test_silent_connection_closes_quietly_at_header_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = trioserve.Server(hello)
    async with open_connection(server) as stream:
        answer, closed = await _closed_at(stream)
    # No byte was sent: nobody may be there to read a 408, so none is sent.
    assert answer == b""
    assert closed == DEFAULTS.header_timeout
    assert server.statistics().header_timeouts == 1
    assert server.statistics().responses_4xx == 0


async def test_slowloris_first_request_gets_408_at_header_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = trioserve.Server(hello)
    head = GET[:-2] + b"X-Slow: " + b"a" * 100 + b"\r\n\r\n"
    async with open_connection(server) as stream, trio.open_nursery() as nursery:
        # One byte a second, forever within reach of the next byte: progress must not
        # extend the deadline, which counts from accept for a first request.
        nursery.start_soon(lambda: trickle(stream, head, size=1, interval=1.0))
        answer, closed = await _closed_at(stream)
    [response] = parse_responses(answer)
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert closed == DEFAULTS.header_timeout
    stats = server.statistics()
    assert stats.header_timeouts == 1
    assert stats.responses_4xx == 1
    assert stats.requests_served == 0


async def test_slowloris_later_request_deadline_counts_from_its_first_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_connection(hello) as stream, trio.open_nursery() as nursery:
        await stream.send_all(GET)
        await stream.receive_some()
        await trio.sleep(3)  # idle, within keep_alive_timeout
        nursery.start_soon(lambda: trickle(stream, GET, size=1, interval=1.0))
        answer, closed = await _closed_at(stream)
    [response] = parse_responses(answer)
    assert response.status == 408
    assert closed == 3 + DEFAULTS.header_timeout


async def test_head_completed_just_before_header_timeout_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(header_timeout=10.0)
    request = GET[:-2] + b"Connection: close\r\n\r\n"
    async with open_connection(hello, config) as stream, trio.open_nursery() as nursery:
        interval = 9.99 / (len(request) - 1)
        nursery.start_soon(lambda: trickle(stream, request, size=1, interval=interval))
        answer, closed = await _closed_at(stream)
    assert parse_responses(answer)[0].status == 200
    assert closed < 10.0


# --- body_timeout and the body rate ----------------------------------------------------------


async def test_stalled_body_gets_408_at_body_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = trioserve.Server(echo)
    # 1 MiB arrives at once (earning 1024 s of waiting at 1 KiB/s), then nothing:
    # body_timeout, not the rate, is what runs out.
    sent = 1024 * 1024
    async with open_connection(server, buffer_size=2 * sent) as stream:
        await stream.send_all(_post(2 * sent) + b"x" * sent)
        answer, closed = await _closed_at(stream)
    [response] = parse_responses(answer)
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert closed == DEFAULTS.body_timeout
    stats = server.statistics()
    assert stats.body_timeouts == 1
    assert stats.header_timeouts == 0


async def test_body_timeout_counts_from_the_last_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(body_min_rate=0)  # only body_timeout
    data = _post(20) + b"x" * 10
    async with open_connection(echo, config) as stream, trio.open_nursery() as nursery:
        # 10 bytes, a stall just short of body_timeout, 5 more, then nothing.
        stall = config.body_timeout - 1
        nursery.start_soon(
            lambda: send_with_stall(stream, data + b"y" * 5, after=len(data), duration=stall)
        )
        answer, closed = await _closed_at(stream)
    assert parse_responses(answer)[0].status == 408
    assert closed == stall + config.body_timeout


async def test_one_byte_a_second_body_fails_the_rate_at_the_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = trioserve.Server(echo)

    async def client(stream: trio.abc.SendStream) -> None:
        await stream.send_all(_post(1000))
        await trio.sleep(0.5)  # bytes at 0.5, 1.5, 2.5 ...: never at a deadline
        await trickle(stream, b"x" * 1000, size=1, interval=1.0)

    async with open_connection(server) as stream, trio.open_nursery() as nursery:
        nursery.start_soon(client, stream)
        answer, closed = await _closed_at(stream)
    [response] = parse_responses(answer)
    assert response.status == 408
    # 10 bytes in 10 s of waiting, far under 1 KiB/s: cut off when the grace ends.
    assert closed == DEFAULTS.body_rate_grace
    assert server.statistics().body_timeouts == 1


async def test_rate_deadline_is_earned_by_bytes(autojump_clock: trio.testing.MockClock) -> None:
    # 20 KiB arrive at t=0, then a stall: 20 KiB at 1 KiB/s earns 20 s of waiting,
    # later than the 10 s grace and sooner than the 30 s body_timeout.
    body = b"x" * 20 * 1024
    async with open_connection(echo) as stream:
        await stream.send_all(_post(2 * len(body)) + body)
        answer, closed = await _closed_at(stream)
    assert parse_responses(answer)[0].status == 408
    assert closed == len(body) / DEFAULTS.body_min_rate


async def test_handler_time_between_reads_does_not_count_against_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    piece = b"x" * 2048
    pieces = 20

    async def slow_reader(request: trioserve.Request) -> trioserve.Response:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            await trio.sleep(60)  # the application is slow, not the client
        return trioserve.Response(200, body=b"%d" % received)

    async def client(stream: trio.abc.SendStream) -> None:
        await stream.send_all(_post(len(piece) * pieces))
        for _ in range(pieces):
            await stream.send_all(piece)
            await trio.sleep(61)

    # Wall-clock rate: 2 KiB per 61 s, far under 1 KiB/s. Waiting-time rate: 2 KiB per
    # 1 s of waiting for it, well over.
    server = trioserve.Server(slow_reader)
    async with open_connection(server) as stream, trio.open_nursery() as n:
        n.start_soon(client, stream)
        [response] = parse_responses(await receive_all(stream))
    assert response.status == 200
    assert response.body == b"%d" % (len(piece) * pieces)
    assert server.statistics().body_timeouts == 0


async def test_64_kib_per_second_upload_of_100_mb_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    total = 100_000_000
    piece = b"x" * 65536

    async def discard(request: trioserve.Request) -> trioserve.Response:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
        return trioserve.Response(200, body=b"%d" % received)

    async def client(stream: trio.abc.SendStream) -> None:
        await stream.send_all(_post(total))
        left = total
        while left:
            await stream.send_all(piece[: min(left, len(piece))])
            left -= min(left, len(piece))
            if left:
                await trio.sleep(1)

    server = trioserve.Server(discard)
    async with open_connection(server) as stream, trio.open_nursery() as n:
        n.start_soon(client, stream)
        answer, closed = await _closed_at(stream)
    [response] = parse_responses(answer)
    assert response.status == 200
    assert response.body == b"%d" % total
    # One piece a second: the last at t == 1525, then the keep-alive idle time.
    assert closed == total // len(piece) + DEFAULTS.keep_alive_timeout
    assert server.statistics().body_timeouts == 0


# --- write_timeout ---------------------------------------------------------------------------


async def test_client_that_never_reads_is_aborted_at_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    finished = trio.Event()
    cancelled_at: list[float] = []

    async def endless(request: trioserve.Request) -> trioserve.Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 16384
            finally:
                cancelled_at.append(trio.current_time())
                finished.set()

        return trioserve.Response(200, body=body())

    server = trioserve.Server(endless)
    async with open_connection(server) as stream:
        await stream.send_all(GET)
        await finished.wait()  # never reads: the 64 KiB buffer fills at t == 0
        assert cancelled_at == [DEFAULTS.write_timeout]
        await trio.testing.wait_all_tasks_blocked()
        stats = server.statistics()
        assert stats.write_timeouts == 1
        assert stats.connections_aborted == 1
        assert stats.connections_open == 0
        # The response was cut off, not ended as if complete.
        answer = await receive_all(stream)
    with pytest.raises(ValueError, match="without sending complete message body"):
        parse_responses(answer)


async def test_write_timeout_on_a_bytes_body(autojump_clock: trio.testing.MockClock) -> None:
    big = b"x" * (1024 * 1024)

    async def handler(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200, body=big)

    server = trioserve.Server(handler)
    async with open_connection(server) as stream:
        await stream.send_all(GET)
        await trio.sleep(DEFAULTS.write_timeout - 1)
        assert server.statistics().connections_open == 1
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().write_timeouts == 1
        assert server.statistics().connections_open == 0


async def test_slow_reader_within_write_timeout_gets_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    big = b"x" * (1024 * 1024)

    async def handler(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200, body=big, headers=[("connection", "close")])

    server = trioserve.Server(handler)
    answer = bytearray()
    async with open_connection(server, buffer_size=65536) as stream:
        await stream.send_all(GET)
        # 64 KiB every 5 s: each piece the server writes (256 KiB) is taken within
        # 20 s, under write_timeout.
        while data := await stream.receive_some(65536):
            answer += data
            await trio.sleep(5)
    [response] = parse_responses(bytes(answer))
    assert response.body == big
    assert server.statistics().write_timeouts == 0


async def test_body_timeout_after_the_response_started_aborts_without_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def streaming_echo(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response(200, body=request.stream())

    server = trioserve.Server(streaming_echo)
    config = server.config
    async with open_connection(server) as stream:
        await stream.send_all(_post(100) + b"x" * 10)
        answer, closed = await _closed_at(stream)
    # The 200 head and the 10 echoed bytes went out; a 408 can no longer be sent, so
    # the connection is cut off (the response is visibly incomplete).
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert closed == config.body_rate_grace
    with pytest.raises(ValueError, match="without sending complete message body"):
        parse_responses(answer)
    stats = server.statistics()
    assert stats.body_timeouts == 1
    assert stats.responses_4xx == 0
    assert stats.connections_aborted == 1
    assert stats.handler_errors == 0  # a slow client is not the handler's fault
