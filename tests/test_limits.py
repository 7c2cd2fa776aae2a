"""Size and count limits, in virtual time: each refusal is sent at once (t == 0), with
its status and ``Connection: close``, is counted, and leaves the server serving others.

Also: ``max_connections`` (eviction of the longest-idle connection, then backpressure),
``max_requests_per_connection``, and the validation of each limit's value (Config's
defaults and ``replace`` are tested with the other value objects, in test_values).
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

import trioserve
from trioserve.testing import (
    MemoryListener,
    open_client,
    open_connection,
    parse_responses,
    receive_all,
    trickle,
)

from .conftest import echo, hello


def _request(
    target: bytes = b"/", *, headers: bytes = b"", body: bytes = b"", method: bytes = b"GET"
) -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n%s" % (method, target, headers, body)


async def _exchange(
    server: trioserve.Server, data: bytes, *, bytewise: bool = False
) -> list[trioserve.testing.TestResponse]:
    """Send ``data`` on a new connection and parse everything until the server closes."""
    async with open_connection(server) as stream:
        if bytewise:
            await trickle(stream, data, size=1, interval=0)
        else:
            await stream.send_all(data)
        answer = await receive_all(stream)
    return parse_responses(answer)


async def _assert_still_serving(server: trioserve.Server) -> None:
    [response] = await _exchange(server, _request(headers=b"Connection: close\r\n"))
    assert response.status == 200


async def _refused(
    config: trioserve.Config, data: bytes, status: int, *, bytewise: bool = False
) -> trioserve.Server:
    """Assert ``data`` gets exactly one ``status`` response with Connection: close, at
    once, and that the same server then serves an ordinary request."""
    server = trioserve.Server(echo, config)
    start = trio.current_time()
    [response] = await _exchange(server, data, bytewise=bytewise)
    assert response.status == status
    assert response.headers["connection"] == "close"
    assert trio.current_time() == start  # answered at once, not at some deadline
    await _assert_still_serving(server)
    stats = server.statistics()
    assert stats.responses_4xx == 1
    assert stats.requests_served == 1
    assert stats.connections_open == 0
    return server


# --- max_header_size ---------------------------------------------------------------------

SMALL_HEAD = trioserve.Config(max_header_size=1024)


def _head_of_size(size: int) -> bytes:
    """A complete request head of exactly ``size`` bytes."""
    base = _request(headers=b"X-Pad: \r\n")
    assert len(base) <= size
    return _request(headers=b"X-Pad: " + b"a" * (size - len(base)) + b"\r\n")


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_header_size_at_the_limit_is_served(
    autojump_clock: trio.testing.MockClock, bytewise: bool
) -> None:
    data = _head_of_size(1024) + _request(headers=b"Connection: close\r\n")
    assert len(_head_of_size(1024)) == 1024
    server = trioserve.Server(hello, SMALL_HEAD)
    responses = await _exchange(server, data, bytewise=bytewise)
    assert [r.status for r in responses] == [200, 200]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
async def test_header_size_over_the_limit_gets_431(
    autojump_clock: trio.testing.MockClock, bytewise: bool
) -> None:
    # "whole": the complete head arrives in one read, which h11's
    # max_incomplete_event_size alone would let through.
    server = await _refused(SMALL_HEAD, _head_of_size(1025), 431, bytewise=bytewise)
    assert server.statistics().headers_too_large == 1


async def test_endless_header_gets_431_without_buffering_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A head that never ends: refused as soon as the buffer passes the limit.
    data = _request()[:-2] + b"X-Pad: " + b"a" * 4096
    server = await _refused(SMALL_HEAD, data, 431)
    assert server.statistics().headers_too_large == 1


# --- max_target_length -------------------------------------------------------------------

SHORT_TARGET = trioserve.Config(max_target_length=100)


async def test_target_at_the_limit_is_served(autojump_clock: trio.testing.MockClock) -> None:
    target = b"/" + b"a" * 99
    async with open_client(hello, SHORT_TARGET) as client:
        response = await client.get(target.decode())
    assert response.status == 200


async def test_target_over_the_limit_gets_414(autojump_clock: trio.testing.MockClock) -> None:
    server = await _refused(SHORT_TARGET, _request(b"/" + b"a" * 100), 414)
    assert server.statistics().targets_too_long == 1


async def test_request_line_over_the_header_size_gets_414(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The request line alone overflows max_header_size before it ends: still 414.
    data = b"GET /" + b"a" * 2000
    config = trioserve.Config(max_header_size=1024, max_target_length=100)
    server = await _refused(config, data, 414)
    assert server.statistics().targets_too_long == 1


# --- max_header_count --------------------------------------------------------------------


def _with_fields(count: int) -> bytes:
    # Host is one of the fields.
    return _request(headers=b"".join(b"X-F%d: v\r\n" % i for i in range(count - 1)))


async def test_header_count_at_the_limit_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(max_header_count=10)
    server = trioserve.Server(hello, config)
    responses = await _exchange(
        server, _with_fields(10) + _request(headers=b"Connection: close\r\n")
    )
    assert [r.status for r in responses] == [200, 200]


async def test_header_count_over_the_limit_gets_431(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = await _refused(trioserve.Config(max_header_count=10), _with_fields(11), 431)
    assert server.statistics().headers_too_large == 1


async def test_default_header_count_is_100(autojump_clock: trio.testing.MockClock) -> None:
    server = trioserve.Server(hello)
    [ok] = await _exchange(server, _with_fields(100)[:-2] + b"Connection: close\r\n\r\n")
    assert ok.status == 431  # 101 fields with Connection
    [ok] = await _exchange(server, _with_fields(99)[:-2] + b"Connection: close\r\n\r\n")
    assert ok.status == 200


# --- max_body_size -------------------------------------------------------------------------

SMALL_BODY = trioserve.Config(max_body_size=1000)


async def test_body_at_the_limit_is_served(autojump_clock: trio.testing.MockClock) -> None:
    async with open_client(echo, SMALL_BODY) as client:
        response = await client.post("/", body=b"x" * 1000)
    assert response.status == 200
    assert response.body == b"x" * 1000


async def test_declared_body_over_the_limit_gets_413_before_it_is_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    called = False

    async def handler(request: trioserve.Request) -> trioserve.Response:
        nonlocal called
        called = True
        return trioserve.Response(200)

    server = trioserve.Server(handler, SMALL_BODY)
    # Only the head is sent: the answer must not wait for the body.
    data = _request(method=b"POST", headers=b"Content-Length: 1001\r\n")
    [response] = await _exchange(server, data)
    assert response.status == 413
    assert response.headers["connection"] == "close"
    assert trio.current_time() == 0
    assert not called
    assert server.statistics().bodies_too_large == 1


async def test_declared_body_over_the_limit_gets_413_without_100_continue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = trioserve.Server(echo, SMALL_BODY)
    data = _request(method=b"POST", headers=b"Content-Length: 1001\r\nExpect: 100-continue\r\n")
    async with open_connection(server) as stream:
        await stream.send_all(data)
        answer = await receive_all(stream)
    assert answer.startswith(b"HTTP/1.1 413 ")  # no "100 Continue" before it
    assert server.statistics().responses_1xx == 0


async def test_chunked_body_over_the_limit_gets_413_as_it_crosses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = 0

    async def handler(request: trioserve.Request) -> trioserve.Response:
        nonlocal seen
        async for chunk in request.stream():
            seen += len(chunk)
        return trioserve.Response(200)

    server = trioserve.Server(handler, SMALL_BODY)
    # 600 + 600 bytes: the second chunk crosses the limit; the body never ends.
    chunk = b"258\r\n" + b"x" * 600 + b"\r\n"
    data = _request(method=b"POST", headers=b"Transfer-Encoding: chunked\r\n") + chunk * 2
    [response] = await _exchange(server, data)
    assert response.status == 413
    assert response.headers["connection"] == "close"
    assert seen == 600  # the handler never saw a byte past the limit
    assert trio.current_time() == 0
    assert server.statistics().bodies_too_large == 1
    await _assert_still_serving(server)


# --- max_requests_per_connection ------------------------------------------------------------


async def test_max_requests_per_connection(autojump_clock: trio.testing.MockClock) -> None:
    server = trioserve.Server(hello, trioserve.Config(max_requests_per_connection=3))
    responses = await _exchange(server, _request() * 4)
    # The fourth pipelined request is never answered: the third said Connection: close.
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.headers.get("connection") for r in responses] == [None, None, "close"]
    assert trio.current_time() == 0
    assert server.statistics().requests_served == 3


# --- max_connections ------------------------------------------------------------------------


async def _get(stream: trioserve.testing.PipeStream) -> trioserve.testing.TestResponse:
    await stream.send_all(_request(headers=b"Connection: close\r\n"))
    [response] = parse_responses(await receive_all(stream))
    return response


async def test_max_connections_evicts_the_longest_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = trioserve.Config(max_connections=3)
    server = trioserve.Server(hello, config)
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        # Two idle connections (no byte sent yet), then one kept alive after a request.
        never_spoke = await listener.connect()
        await trio.sleep(1)
        also_silent = await listener.connect()
        await trio.sleep(1)
        kept_alive = await listener.connect()
        await kept_alive.send_all(_request())
        assert parse_responses(await kept_alive.receive_some())[0].status == 200
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().connections_idle == 3
        # At the cap, the fourth connection closes the one idle longest, at once.
        fourth = await listener.connect()
        assert await never_spoke.receive_some() == b""
        await fourth.send_all(_request())
        assert parse_responses(await fourth.receive_some())[0].status == 200
        # The fifth evicts the next longest idle (idle since t == 1), not the
        # connections that finished a request at t == 2.
        fifth = await listener.connect()
        assert await also_silent.receive_some() == b""
        assert (await _get(fifth)).status == 200
        # The fifth closed (Connection: close): a sixth fits without evicting anyone.
        sixth = await listener.connect()
        assert (await _get(sixth)).status == 200
        assert trio.current_time() == 2
        stats = server.statistics()
        assert stats.connections_evicted == 2
        assert stats.connections_open == 2  # kept_alive and fourth, still served
        await kept_alive.send_all(_request())
        assert parse_responses(await kept_alive.receive_some())[0].status == 200
        assert stats.keep_alive_timeouts == stats.header_timeouts == 0
        await server.shutdown()


async def test_max_connections_all_busy_is_backpressure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def slow(request: trioserve.Request) -> trioserve.Response:
        await release.wait()
        return trioserve.Response(200, body=b"slow")

    config = trioserve.Config(max_connections=2)
    server = trioserve.Server(slow, config)
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        busy = [await listener.connect() for _ in range(2)]
        for stream in busy:
            await stream.send_all(_request(headers=b"Connection: close\r\n"))
        waiting = await listener.connect()
        await waiting.send_all(_request(headers=b"Connection: close\r\n"))
        await trio.testing.wait_all_tasks_blocked()
        # Both connections have a request in progress: nobody is evicted, and the
        # third waits unserved instead of being refused. (A generic Listener's client
        # is accepted, then held; a socket's stays in the kernel backlog.)
        await trio.sleep(100)
        stats = server.statistics()
        assert stats.connections_open == 2
        assert stats.connections_evicted == 0
        assert stats.requests_served == 0
        release.set()
        for stream in [*busy, waiting]:
            [response] = parse_responses(await receive_all(stream))
            assert response.status == 200
        assert server.statistics().connections_total == 3
        assert trio.current_time() == 100
        await server.shutdown()


# --- Config validation ----------------------------------------------------------------------


TIMES = [
    "keep_alive_timeout",
    "header_timeout",
    "body_timeout",
    "body_rate_grace",
    "write_timeout",
    "shutdown_timeout",
]
SIZES = [
    "max_header_size",
    "max_target_length",
    "max_header_count",
    "max_body_size",
    "max_connections",
    "max_requests_per_connection",
]


@pytest.mark.parametrize("name", TIMES + SIZES + ["body_min_rate", "max_drain_size"])
@pytest.mark.parametrize("value", [-1, -0.5, math.nan, -math.inf])
def test_out_of_range_values_raise_value_error(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        trioserve.Config(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TIMES + SIZES + ["body_min_rate", "backlog"])
@pytest.mark.parametrize("value", ["10", None, True, [1]])
def test_wrong_types_raise_type_error(name: str, value: object) -> None:
    with pytest.raises(TypeError, match=name):
        trioserve.Config(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TIMES + SIZES)
def test_zero_is_refused_where_it_makes_no_sense(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        trioserve.Config(**{name: 0})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SIZES)
def test_sizes_must_be_whole(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        trioserve.Config(**{name: 10.5})  # type: ignore[arg-type]
    assert getattr(trioserve.Config(**{name: math.inf}), name) == math.inf  # type: ignore[arg-type]


def test_backlog_and_rate_bounds() -> None:
    with pytest.raises(ValueError, match="backlog"):
        trioserve.Config(backlog=0)
    with pytest.raises(TypeError, match="backlog"):
        trioserve.Config(backlog=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="body_min_rate"):
        trioserve.Config(body_min_rate=math.inf)
    assert trioserve.Config(body_min_rate=0).body_min_rate == 0  # no minimum rate
