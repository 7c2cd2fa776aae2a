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


async def post_with_late_body(handler: Handler) -> bytes:
    """POST whose body follows its head 3 s later; the one response's body."""
    async with open_connection(handler) as stream:
        await stream.send_all(POST_HEAD)
        await trio.sleep(3)
        await stream.send_all(BODY)
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

    async with open_connection(handler) as stream:
        await stream.send_all(POST_HEAD + BODY[:5])
        await trio.sleep(3)
        await stream.send_all(BODY[5:])
        [response] = parse_responses(await receive_all(stream))
    assert response.body == BODY


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

    async with open_connection(handler) as stream:
        await stream.send_all(POST_HEAD + BODY[:5])
        await trio.sleep(3)
        await stream.send_all(BODY[5:])
        [response] = parse_responses(await receive_all(stream))
    assert response.body == BODY


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
        async with open_connection(handler, server=server) as stream:
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
            async with open_connection(handler, server=server) as stream:
                await stream.send_all(CLOSE_GET)
                innocent.append(await receive_all(stream))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(innocent_client)
            async with open_connection(handler, server=server) as stream:
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
    async with open_connection(handler, server=server) as stream:
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
