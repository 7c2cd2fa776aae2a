"""One exchange's concurrency: who may touch the stream, cancelled reads, and errors
that must stay inside their own exchange.

Each test here held a defect of an earlier main (issue 9): a cancelled ASGI
``receive()`` that truncated the body, two tasks reading or writing one stream, an
application's exception group that took the server down, a body whose ``aclose()``
failed after a complete response. All in memory, in virtual time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import trioserve
from trioserve.asgi import ASGIHandler, Receive, Scope, Send
from trioserve.testing import open_connection, parse_responses, receive_all

POST_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nConnection: close\r\n\r\n"
BODY = b"hello world"
Handler = Callable[[trioserve.Request], Awaitable[trioserve.Response]]
CLOSE_GET = b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@asynccontextmanager
async def hosted(app: object) -> AsyncIterator[ASGIHandler]:
    handler = ASGIHandler(app, lifespan="off")  # type: ignore[arg-type]  # loosely typed apps
    async with handler.lifespan():
        yield handler


async def post_with_late_body(handler: Handler, *, early: int = 0) -> bytes:
    """POST whose body (but its first ``early`` bytes) follows its head 3 s later;
    the one response's body."""
    async with open_connection(handler) as stream:
        await stream.send_all(POST_HEAD + BODY[:early])
        await trio.sleep(3)
        await stream.send_all(BODY[early:])
        [response] = parse_responses(await receive_all(stream))
    assert response.status == 200
    return response.body


# --- A cancelled read loses nothing ------------------------------------------------


async def test_asgi_receive_under_the_apps_own_timeout_loses_no_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = None
            with trio.move_on_after(1):  # the app's own read timeout; then it retries
                message = await receive()
            if message is None:
                continue
            body += message["body"]
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async with hosted(app) as handler:
        assert await post_with_late_body(handler) == BODY


async def test_starlette_is_disconnected_before_the_body_loses_no_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # is_disconnected() calls receive() under a scope cancelled in advance: that
    # receive() must take nothing, or Starlette throws the piece away.
    async def endpoint(request: StarletteRequest) -> PlainTextResponse:
        if await request.is_disconnected():
            return PlainTextResponse("gone", status_code=499)
        return PlainTextResponse((await request.body()).decode())

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    async with hosted(app) as handler:
        assert await post_with_late_body(handler) == BODY


async def test_is_disconnected_when_the_body_is_already_in_takes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def endpoint(request: StarletteRequest) -> PlainTextResponse:
        assert not await request.is_disconnected()
        return PlainTextResponse((await request.body()).decode())

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    with trio.fail_after(30):
        async with hosted(app) as handler, open_connection(handler) as stream:
            await stream.send_all(POST_HEAD + BODY)
            [response] = parse_responses(await receive_all(stream))
    assert response.body == BODY


async def test_a_cancelled_request_body_call_resumes_where_it_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        with trio.move_on_after(2):
            await request.body()  # half of the body has come when this gives up
        return trioserve.Response(200, body=await request.body())

    assert await post_with_late_body(handler, early=5) == BODY


async def test_a_cancelled_stream_iteration_keeps_the_iterator_usable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        pieces = request.stream()
        got = [await pieces.__anext__()]
        with trio.move_on_after(1):
            await pieces.__anext__()
            raise AssertionError("the rest of the body came early")
        got += [piece async for piece in pieces]
        return trioserve.Response(200, body=b"".join(got))

    assert await post_with_late_body(handler, early=5) == BODY


async def test_a_read_cancelled_in_advance_owes_no_100_continue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # h11 was told "100 Continue sent" and the write was then cancelled: the client
    # waited for a 100 Continue that never came.
    async def handler(request: trioserve.Request) -> trioserve.Response:
        with trio.CancelScope() as scope:
            scope.cancel()
            await request.body()
        await trio.sleep(1)
        return trioserve.Response(200, body=await request.body())

    async with open_connection(handler) as stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        with trio.fail_after(5):
            answer = await stream.receive_some()
        assert answer == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(BODY)
        [response] = parse_responses(await receive_all(stream))
    assert response.body == BODY


# --- Only the connection's tasks touch the stream ------------------------------------


async def test_an_early_asgi_response_while_the_app_reads_the_body(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The app's reader task waits for the rest of the body when another of its tasks
    # completes the response; the engine's drain of that body must not read the
    # stream beside it (it did: BusyResourceError, the pipelined request lost).
    reader_got: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def reader() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message["more_body"]:
                    reader_got.append(message["type"])
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.sleep(1)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["path"].encode()})

    caplog.set_level(logging.DEBUG, logger="trioserve")
    async with hosted(app) as handler:
        server = trioserve.Server(handler)
        async with open_connection(server) as stream:
            await stream.send_all(
                b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345"
            )
            await trio.sleep(5)
            await stream.send_all(b"67890" + CLOSE_GET)
            responses = parse_responses(await receive_all(stream))
    assert [r.body for r in responses] == [b"/first", b"/second"]
    assert reader_got == ["http.disconnect", "http.request"]  # /first, then /second
    assert errors(caplog) == []
    assert server.statistics().connections_aborted == 0


async def test_100_continue_from_the_app_task_goes_out_before_the_response_head(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The app starts a streamed response and then reads its body: its receive() owes
    # a 100 Continue while the connection task writes the head. Both once raced for
    # the stream (BusyResourceError in about half the runs); trio's scheduler shuffles
    # the order of ready tasks, so this runs often enough to see a race.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"progress;", "more_body": True})
        message = await receive()
        await send({"type": "http.response.body", "body": b"got " + message["body"]})

    caplog.set_level(logging.ERROR, logger="trioserve")
    async with hosted(app) as handler:
        for _ in range(30):
            async with open_connection(handler) as stream:
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while b"100 Continue" not in answer:
                    with trio.fail_after(10):
                        piece = await stream.receive_some()
                    assert piece, answer
                    answer += piece
                assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
                await stream.send_all(b"hello")
                answer += await receive_all(stream)
            [response] = parse_responses(answer[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
            assert response.body == b"progress;got hello"
    assert errors(caplog) == []


async def test_a_native_handler_may_read_its_body_from_a_task_of_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        got: list[bytes] = []

        async def read() -> None:
            got.append(await request.body())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
        return trioserve.Response(200, body=got[0])

    assert await post_with_late_body(handler) == BODY


async def test_two_app_tasks_reading_at_once_share_one_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pieces: list[bytes] = []

        async def read() -> None:
            message = await receive()
            pieces.append(message.get("body", b""))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(read)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"".join(sorted(pieces))})

    async with hosted(app) as handler:
        assert await post_with_late_body(handler) == BODY


# --- An application's errors stay in its exchange -------------------------------------


async def test_an_app_whose_cleanup_raises_while_cancelled_does_not_take_the_server_down(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Cancelled at the abandon grace, the app's nursery ends with a group of
    # [Cancelled, RuntimeError]; the group once escaped into the host nursery, which
    # cancelled every other request and ended serve().
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/fragile":

            async def worker() -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    raise RuntimeError("cleanup failed")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker)
                await receive()  # http.request
                await receive()  # http.disconnect, once the client has left...
                await trio.sleep_forever()  # ...which this app ignores
        await trio.sleep(20)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"innocent"})

    caplog.set_level(logging.DEBUG, logger="trioserve")
    async with hosted(app) as handler:
        server = trioserve.Server(handler)
        innocent: list[bytes] = []

        async def innocent_client() -> None:
            async with open_connection(server) as stream:
                await stream.send_all(CLOSE_GET)
                innocent.append(await receive_all(stream))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(innocent_client)
            async with open_connection(server) as stream:
                await stream.send_all(b"GET /fragile HTTP/1.1\r\nHost: x\r\n\r\n")
                await trio.sleep(1)
    [response] = parse_responses(innocent[0])
    assert response.body == b"innocent"
    assert trio.current_time() == 20  # the fragile app was cancelled at 1 + 5, quietly
    assert errors(caplog) == []


async def test_an_app_raising_a_group_before_responding_gets_a_500() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def fail() -> None:
            raise ValueError("one")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
            nursery.start_soon(fail)

    async with hosted(app) as handler, open_connection(handler) as stream:
        await stream.send_all(CLOSE_GET)
        [response] = parse_responses(await receive_all(stream))
    assert response.status == 500


# --- Cleanup after a complete response --------------------------------------------------


class _BodyFailingToClose:
    def __init__(self) -> None:
        self.sent = False

    def __aiter__(self) -> _BodyFailingToClose:
        return self

    async def __anext__(self) -> bytes:
        if self.sent:
            raise StopAsyncIteration
        self.sent = True
        return b"complete body"

    async def aclose(self) -> None:
        raise RuntimeError("returning the pooled cursor failed")


async def test_a_body_that_fails_to_close_after_a_complete_response_is_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        if request.path == "/stream":
            return trioserve.Response(200, body=_BodyFailingToClose())
        return trioserve.Response(200, body=b"second")

    caplog.set_level(logging.INFO, logger="trioserve")
    server = trioserve.Server(handler)
    async with open_connection(server) as stream:
        await stream.send_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n" + CLOSE_GET)
        responses = parse_responses(await receive_all(stream))
    assert [r.body for r in responses] == [b"complete body", b"second"]
    stats = server.statistics()
    assert (stats.requests_served, stats.handler_errors, stats.connections_aborted) == (2, 1, 0)
    access = [r.getMessage() for r in caplog.records if r.name == "trioserve.access"]
    assert len(access) == 2
    assert errors(caplog) == [
        "closing the response body of <Request GET /stream HTTP/1.1> failed after the "
        "response was complete"
    ]


# --- Found by the second adversarial read -----------------------------------------------

FILL = b"x" * 3000
FILL_THEN_EXPECT = (
    b"GET /fill HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
)


async def _asgi_fill_or_echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/fill":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": FILL})
        return
    message = await receive()
    if message["type"] != "http.request":
        return  # http.disconnect: the app stops, as ASGI asks
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"got " + message["body"]})


async def _native_fill_or_echo(request: trioserve.Request) -> trioserve.Response:
    if request.path == "/fill":
        return trioserve.Response(200, body=FILL)
    try:
        body = await request.body()
    except trioserve.ClientDisconnected:
        return trioserve.Response(400, body=b"body unreadable")  # a framework's error page
    return trioserve.Response(200, body=b"got " + body)


@pytest.mark.parametrize("kind", ["asgi", "native"])
async def test_a_100_continue_the_client_does_not_read_ends_the_connection(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    # The first answer fills the client's buffer, so the 100 Continue cannot be
    # written: it once left an ASGI connection open forever, and a native handler's
    # answer written over a broken h11 state ("internal error serving").
    caplog.set_level(logging.ERROR, logger="trioserve")
    async with hosted(_asgi_fill_or_echo) as asgi_handler:
        handler: Handler = asgi_handler if kind == "asgi" else _native_fill_or_echo
        server = trioserve.Server(handler)
        async with open_connection(server, buffer_size=3100) as stream:
            await stream.send_all(FILL_THEN_EXPECT)
            await trio.sleep(60)  # reads nothing for longer than write_timeout
            with trio.fail_after(60):
                answer = await receive_all(stream)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"got" not in answer
    stats = server.statistics()
    assert (stats.write_timeouts, stats.connections_aborted) == (1, 1)
    assert errors(caplog) == []


async def test_a_slow_body_while_an_asgi_app_streams_is_not_the_apps_fault(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # receive() says http.disconnect and the app stops, as ASGI asks: it was then
    # logged at ERROR for "returning before its streamed response was complete".
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"receiving\n", "more_body": True})
        while (message := await receive())["type"] == "http.request":
            await send({"type": "http.response.body", "body": b".", "more_body": True})
            if not message["more_body"]:
                await send({"type": "http.response.body", "body": b"done\n"})
                return

    async with hosted(app) as handler:
        server = trioserve.Server(handler)
        async with open_connection(server) as stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            with trio.fail_after(100):
                answer = await receive_all(stream)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert not answer.endswith(b"0\r\n\r\n")  # cut off, never made to look complete
    stats = server.statistics()
    assert (stats.body_timeouts, stats.handler_errors) == (1, 0)
    assert errors(caplog) == []


async def test_a_native_handler_whose_cleanup_raises_while_cancelled_stays_in_its_exchange(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A group [Cancelled, ValueError] once reached the connection's catch-all for bugs
    # of ours ("internal error serving").
    async def handler(request: trioserve.Request) -> trioserve.Response:
        async def worker() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)
            await trio.sleep(1000)
        raise AssertionError("cancelled before this")

    caplog.set_level(logging.DEBUG, logger="trioserve")
    server = trioserve.Server(handler)
    async with open_connection(server) as stream:
        await stream.send_all(CLOSE_GET)
        await trio.sleep(1)
    await trio.testing.wait_all_tasks_blocked()
    stats = server.statistics()
    assert (stats.handler_errors, stats.client_disconnects) == (1, 1)
    assert errors(caplog) == []
    assert "raised while it was cancelled" in caplog.text


async def test_a_body_whose_cleanup_raises_on_an_abort_is_the_applications_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
                    await trio.sleep(0.1)
            finally:
                raise ValueError("pool release failed")

        return trioserve.Response(200, body=body())

    server = trioserve.Server(handler)
    async with open_connection(server) as stream:
        await stream.send_all(CLOSE_GET)
        await stream.receive_some()
    await trio.sleep(1)
    assert not [m for m in errors(caplog) if "internal error" in m]
    stats = server.statistics()
    assert (stats.handler_errors, stats.client_disconnects) == (1, 1)


async def test_starlette_is_disconnected_sees_a_client_that_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # is_disconnected() asks under a scope cancelled in advance; it was False forever.
    seen: dict[str, float] = {}

    async def long_poll(request: StarletteRequest) -> PlainTextResponse:
        for _ in range(120):
            if await request.is_disconnected():
                seen["disconnected_at"] = trio.current_time()
                return PlainTextResponse("gone", status_code=499)
            await trio.sleep(0.5)
        seen["ran_to_end_at"] = trio.current_time()
        return PlainTextResponse("timeout")

    app = Starlette(routes=[Route("/poll", long_poll)])
    async with hosted(app) as handler:
        async with open_connection(handler) as stream:
            await stream.send_all(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(1)
        await trio.sleep(70)
    assert seen == {"disconnected_at": 1.5}
