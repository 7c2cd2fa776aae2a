"""Errors never reach the client as tracebacks, and the two loggers say what happened.

Who caused the error decides the answer: a malformed request gets its status and a
close; a handler failure gets a 500 (before the response started) or an aborted
connection (after); a client that vanished is a normal event, logged at DEBUG.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trioserve
from trioserve import Request, Response
from trioserve.testing import ResponseReader, open_connection, receive_all, stream_pair

GET = b"GET /%s HTTP/1.1\r\nHost: example.com\r\n\r\n"


def problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records a user would see as trouble: WARNING and up, or any traceback."""
    return [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "trioserve.error" and r.levelno >= logging.ERROR
    ]


# --- Refused requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * 600 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 11 + b"\r\n", 431),
        (b"\x00\x01\x02\r\n\r\n", 400),
    ],
    ids=["target-414", "head-431", "count-431", "binary-400"],
)
async def test_refused_request_gets_its_status_and_a_close(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    status: int,
) -> None:
    config = trioserve.Config(max_target_length=100, max_header_size=512, max_header_count=10)
    async with open_connection(hello, config) as stream:
        await stream.send_all(request_bytes)
        reader = ResponseReader(stream)
        reply = await reader.receive_response()
        assert await reader.receive_rest() == b""
    assert reply.status == status
    assert reply.headers.get("connection") == "close"
    assert b"Traceback" not in reply.body
    assert not problems(caplog)


async def hello(request: Request) -> Response:
    return Response(200, body=b"hello")


# --- Handler failures ----------------------------------------------------------------------


async def test_handler_error_before_the_response_is_a_500_logged_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Request) -> Response:
        raise ValueError("secret detail")

    async with open_connection(broken) as stream:
        await stream.send_all(GET % b"x" + GET % b"y")
        reader = ResponseReader(stream)
        reply = await reader.receive_response()
        # The pipelined second request is not answered: the connection closes.
        assert await reader.receive_rest() == b""
    assert reply.status == 500
    assert reply.body == b"Internal Server Error\n"
    assert reply.headers.get("connection") == "close"
    [record] = error_records(caplog)
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert "broken" in record.getMessage()
    assert "GET /x" in record.getMessage()


async def test_handler_error_inside_a_nursery_is_a_500(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail() -> None:
        raise KeyError("k")

    async def grouped(request: Request) -> Response:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
        return Response(200)

    async with trioserve.testing.open_client(grouped) as client:
        response = await client.get("/")
    assert response.status == 500
    assert len(error_records(caplog)) == 1


async def test_handler_raising_http_error_answers_its_status(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def forbidden(request: Request) -> Response:
        raise trioserve.HTTPError("not you", status_code=403)

    async with trioserve.testing.open_client(forbidden) as client:
        response = await client.get("/")
    assert (response.status, response.body) == (403, b"Forbidden\n")
    assert response.headers.get("connection") == "close"
    assert not problems(caplog)


@pytest.mark.parametrize("returned", [None, b"bytes", {"status": 200}])
async def test_handler_returning_a_non_response_is_a_500_naming_the_handler(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, returned: object
) -> None:
    async def forgetful_handler(request: Request) -> Response:
        return returned  # type: ignore[return-value]  # the mistake under test

    async with trioserve.testing.open_client(forgetful_handler) as client:
        response = await client.get("/")
        stats = client.server.statistics()
    assert response.status == 500
    assert stats.handler_errors == 1
    [record] = error_records(caplog)
    message = record.getMessage()
    assert "forgetful_handler" in message
    assert "not a trioserve.Response" in message
    assert repr(returned) in message


async def test_sync_handler_is_a_500_naming_the_handler(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    def not_async(request: Request) -> Response:
        return Response(200)

    async with trioserve.testing.open_client(not_async) as client:  # type: ignore[arg-type]
        response = await client.get("/")
    assert response.status == 500
    [record] = error_records(caplog)
    assert "not_async" in record.getMessage()


async def failing_stream() -> AsyncIterator[bytes]:
    yield b"first part, "
    yield b"second part, "
    raise RuntimeError("the body failed")


async def test_handler_error_after_the_response_started_aborts(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def streaming(request: Request) -> Response:
        return Response(200, body=failing_stream())

    async with open_connection(streaming) as stream:
        await stream.send_all(GET % b"s")
        reader = ResponseReader(stream)
        # The chunked body never gets its last chunk: no client takes it as complete.
        with pytest.raises(trio.BrokenResourceError, match="incomplete chunked read"):
            await reader.receive_response()
    [record] = error_records(caplog)
    assert isinstance(record.exc_info[1] if record.exc_info else None, RuntimeError)


async def twenty_three_bytes() -> AsyncIterator[bytes]:
    yield b"0123456789"
    yield b"abcdefghijklm"


async def test_declared_length_of_a_streamed_body_is_used_instead_of_chunked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> Response:
        return Response(200, headers=[("Content-Length", "23")], body=twenty_three_bytes())

    async with trioserve.testing.open_client(handler) as client:
        response = await client.get("/")
        again = await client.get("/")
    assert response.body == again.body == b"0123456789abcdefghijklm"
    assert response.headers.getall("content-length") == ["23"]
    assert response.headers.get("transfer-encoding") is None
    assert client.connections_opened == 1


@pytest.mark.parametrize("declared", [30, 10], ids=["body-short", "body-long"])
async def test_declared_length_of_a_streamed_body_is_enforced(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, declared: int
) -> None:
    async def handler(request: Request) -> Response:
        return Response(
            200, headers=[("content-length", str(declared))], body=twenty_three_bytes()
        )

    async with open_connection(handler) as stream:
        await stream.send_all(GET % b"x" + GET % b"y")
        raw = await receive_all(stream)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length: %d" % declared in head
    # The connection was cut: fewer bytes than declared when the body ran short, and
    # never a byte more than declared (nor a second response) when it ran long.
    if declared == 30:
        assert body == b"0123456789abcdefghijklm"
    else:
        assert body == b"0123456789"
    assert len(error_records(caplog)) == 1


# --- Clients that vanish -------------------------------------------------------------------


class Watched:
    """A handler that reads the body (if asked), then waits; records how it ended."""

    def __init__(self, *, read_body: bool) -> None:
        self.read_body = read_body
        self.started = trio.Event()
        self.outcome: str | None = None

    async def __call__(self, request: Request) -> Response:
        self.started.set()
        try:
            if self.read_body:
                await request.body()
            await trio.sleep(3600)
        except trioserve.ClientDisconnected:
            self.outcome = "disconnected"
            raise
        except trio.Cancelled:
            self.outcome = "cancelled"
            raise
        self.outcome = "finished"
        return Response(200)


POST_HALF = b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly part"


@pytest.mark.parametrize("how", ["eof", "reset"])
@pytest.mark.parametrize(
    ("sent", "read_body", "outcome"),
    [
        (b"GET /x HTT", False, None),  # mid-head: the handler never runs
        (POST_HALF, True, "disconnected"),  # mid-body: raised into the body read
        (GET % b"wait", False, "cancelled"),  # handler waiting: cancelled
    ],
    ids=["mid-head", "mid-body", "handler-waiting"],
)
async def test_vanished_client_is_a_debug_line_and_others_are_served(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    how: str,
    sent: bytes,
    read_body: bool,
    outcome: str | None,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    watched = Watched(read_body=read_body)

    async def handler(request: Request) -> Response:
        if request.path == "/other":
            return Response(200, body=b"other")
        return await watched(request)

    server = trioserve.Server(handler)
    vanishing, server_end = stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, server_end)
        await vanishing.send_all(sent)
        await trio.testing.wait_all_tasks_blocked()
        if how == "eof":
            await vanishing.aclose()
        else:
            vanishing.reset()
        # A well-behaved client of the same server is served as if nothing happened.
        other, other_server_end = stream_pair()
        nursery.start_soon(server.serve_connection, other_server_end)
        await other.send_all(GET % b"other")
        reply = await ResponseReader(other).receive_response()
        await other.aclose()
    assert reply.body == b"other"
    assert watched.outcome == outcome
    assert not problems(caplog)
    stats = server.statistics()
    assert stats.connections_open == 0
    assert stats.requests_served == 1
    if outcome is not None:
        assert stats.client_disconnects == 1
        [line] = [r for r in caplog.records if r.name == "trioserve.error"]
        assert line.levelno == logging.DEBUG
        assert "went away" in line.getMessage()


async def test_client_that_leaves_before_reading_a_big_response(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    sent_all = False

    async def big(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            nonlocal sent_all
            for _ in range(100):
                yield b"x" * 65536
            sent_all = True

        return Response(200, body=body())

    async with open_connection(big, buffer_size=4096) as stream:
        await stream.send_all(GET % b"big")
        assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 200 ")
        await stream.aclose()  # a broken pipe for the server's next write
    assert not sent_all
    assert not problems(caplog)
    [line] = [r for r in caplog.records if r.name == "trioserve.error"]
    assert "went away while we wrote" in line.getMessage()


async def test_eof_after_a_pipelined_request_still_gets_its_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A half-close behind complete requests is not a vanished client (RFC 9112 9.6
    # lets a client close its sending side once it has sent its last request).
    async def slow(request: Request) -> Response:
        await trio.sleep(1)
        return Response(200, body=request.path)

    async with open_connection(slow) as stream:
        await stream.send_all(GET % b"one" + GET % b"two")
        await stream.send_eof()
        raw = await receive_all(stream)
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.endswith(b"/two")


# --- Logging ---------------------------------------------------------------------------------

ACCESS_LINE = re.compile(
    r"^10\.1\.2\.3 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
    r'"POST /form\?a=1 HTTP/1\.1" 201 5 "http://ref/" "agent/1\.0" 2\.500000$'
)


async def test_access_log_line_per_response(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")

    async def handler(request: Request) -> Response:
        await request.body()
        await trio.sleep(2.5)
        return Response(201, body=b"made!")

    server = trioserve.Server(handler)
    client_end, server_end = stream_pair()
    request = (
        b"POST /form?a=1 HTTP/1.1\r\nHost: h\r\nReferer: http://ref/\r\n"
        b"User-Agent: agent/1.0\r\nContent-Length: 2\r\n\r\nhi"
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: server.serve_connection(
                server_end, client=("10.1.2.3", 4567), server=("10.0.0.1", 80)
            )
        )
        await client_end.send_all(request + b"HEAD /next HTTP/1.1\r\nHost: h\r\n\r\n")
        reader = ResponseReader(client_end)
        await reader.receive_response("POST")
        await reader.receive_response("HEAD")
        await client_end.aclose()
    records = [r for r in caplog.records if r.name == "trioserve.access"]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    first, second = (r.getMessage() for r in records)
    assert ACCESS_LINE.match(first), first
    assert second.endswith(' "HEAD /next HTTP/1.1" 201 - "-" "-" 2.500000')


@pytest.mark.parametrize(
    ("sent", "status"),
    [(b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n", 400), (b"GET / HTTP/1.1\r\n", 408)],
)
async def test_access_log_line_for_a_refused_head(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    sent: bytes,
    status: int,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")
    server = trioserve.Server(hello)
    client_end, server_end = stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: server.serve_connection(server_end, client=("10.1.2.3", 4567), server=None)
        )
        await client_end.send_all(sent)
        assert (await receive_all(client_end)).startswith(b"HTTP/1.1 %d " % status)
        await client_end.aclose()
    [record] = [r for r in caplog.records if r.name == "trioserve.access"]
    assert record.getMessage().startswith("10.1.2.3 - - [")
    assert record.getMessage().endswith(f'] "-" {status} - "-" "-" -')


async def test_no_logging_configuration_is_imposed() -> None:
    root_handlers = list(logging.getLogger().handlers)
    async with trioserve.testing.open_client(hello) as client:
        await client.get("/")
    for name in ("trioserve", "trioserve.error", "trioserve.access"):
        logger = logging.getLogger(name)
        assert logger.handlers == []
        assert logger.level == logging.NOTSET
        assert logger.propagate
    assert logging.getLogger().handlers == root_handlers


class _Patient:
    """A handler that opts out of the automatic disconnect watcher."""

    watch_disconnect = False

    def __init__(self, *, wait_for_disconnect: bool) -> None:
        self.wait_for_disconnect = wait_for_disconnect
        self.outcome: list[str] = []

    async def __call__(self, request: Request) -> Response:
        try:
            if self.wait_for_disconnect:
                await request.wait_disconnected()  # asks the server to watch, now
            else:
                await trio.sleep(10)  # nobody watches the connection meanwhile
        except trio.Cancelled:
            self.outcome.append(f"cancelled at {trio.current_time():g}")
            raise
        self.outcome.append(f"finished at {trio.current_time():g}")
        return Response(200)


@pytest.mark.parametrize("wait_for_disconnect", [False, True])
async def test_watch_disconnect_false_watches_only_on_request(
    autojump_clock: trio.testing.MockClock, wait_for_disconnect: bool
) -> None:
    handler = _Patient(wait_for_disconnect=wait_for_disconnect)
    async with open_connection(handler) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        await trio.sleep(1)
        await stream.aclose()  # the client leaves at t=1
        await trio.sleep(20)
    # Watching, the server sees the client leave and cancels the handler, as always.
    expected = "cancelled at 1" if wait_for_disconnect else "finished at 10"
    assert handler.outcome == [expected]
