"""trioserve.asgi with plain ASGI applications: the http and lifespan scopes, and every
way an exchange can go wrong.

The tests serve the application in memory (``trioserve.testing``), in virtual time
where timing matters. Two smoke tests run it over real sockets (127.0.0.1, port 0):
one with httpx through ``serve(lifespan=...)``, one whose client hangs up mid-stream;
and two test ``serve()``'s own contract with a lifespan (its errors come out
unwrapped), which binds a port but sends nothing.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trio
import trio.testing

import trioserve
import trioserve.asgi._http
from tests.asgi_apps.serving import serve_asgi
from tests.loops import Signal
from trioserve.asgi import (
    ABANDON_GRACE,
    ASGIHandler,
    ClientDisconnectedError,
    LifespanFailure,
    Message,
    Receive,
    Scope,
    Send,
)
from trioserve.asgi._lifespan import SHUTDOWN_TIMEOUT
from trioserve.testing import (
    Client,
    open_client,
    open_connection,
    parse_responses,
    receive_all,
    stream_pair,
)

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def respond(send: Send, body: bytes = b"ok", status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def errors_above_debug(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trioserve.error" and r.levelno > logging.DEBUG]


@asynccontextmanager
async def hosted(app: object, **kwargs: object) -> AsyncIterator[ASGIHandler]:
    handler = ASGIHandler(app, **kwargs)  # type: ignore[arg-type]  # test apps are loosely typed
    async with handler.lifespan():
        yield handler


@asynccontextmanager
async def served(
    app: object, *, config: trioserve.Config | None = None, **kwargs: object
) -> AsyncIterator[Client]:
    """Serve ``app`` in memory with its lifespan, as ``serve(lifespan=...)`` would:
    on exit the connections end first, then the lifespan (its shutdown included)."""
    async with hosted(app, **kwargs) as handler, open_client(handler, config) as client:
        yield client


# --- The http scope --------------------------------------------------------------


async def test_scope_keys() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
            await respond(send)

    async with served(app, root_path="/api") as client:
        await client.get("/a%20b/%C3%A9?x=1&y=%20", headers=[("X-Custom", "Value")])
        await client.get("/again")
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/a b/é"
    assert scope["raw_path"] == b"/api/a%20b/%C3%A9"
    assert scope["query_string"] == b"x=1&y=%20"
    headers = scope["headers"]
    assert isinstance(headers, list)
    assert (b"x-custom", b"Value") in headers
    assert all(name == name.lower() for name, _ in headers)
    # In memory there are no addresses (ASGI: None); over a socket, see the smoke test.
    assert scope["client"] is None
    assert scope["server"] is None
    assert scope["state"] == {}
    assert scope["extensions"] == {"http.response.pathsend": {}}
    # Each request has its own scope and its own copy of the state.
    assert scopes[1]["state"] is not scope["state"]


async def test_request_body_messages(autojump_clock: trio.testing.MockClock) -> None:
    received: list[list[Message]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        messages = [await receive()]
        while messages[-1].get("more_body"):
            messages.append(await receive())
        received.append(messages)
        await respond(send, b"".join(m["body"] for m in messages))  # type: ignore[misc]

    async with hosted(app) as handler:
        async with open_client(handler) as client:
            assert (await client.get("/")).text == ""
            assert (await client.post("/", body=b"x" * 10)).text == "x" * 10
        async with open_connection(handler) as stream:
            # A chunked upload whose pieces come a moment apart.
            await stream.send_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n"
            )
            for piece in (b"one,", b"two,", b"three"):
                await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
                await trio.sleep(0.01)
            await stream.send_all(b"0\r\n\r\n")
            [response] = parse_responses(await receive_all(stream), method="POST")
        assert response.text == "one,two,three"
    no_body, with_length, with_chunks = received
    assert no_body == [{"type": "http.request", "body": b"", "more_body": False}]
    # A Content-Length body ends with its last piece: no empty message after it.
    assert with_length == [{"type": "http.request", "body": b"x" * 10, "more_body": False}]
    assert all(m["type"] == "http.request" for m in with_chunks)
    assert [m["more_body"] for m in with_chunks][-1] is False
    assert all(m["more_body"] for m in with_chunks[:-1])
    assert len(with_chunks) > 1  # each piece came as it arrived


async def test_streamed_response_and_declared_length() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"6")] if scope["path"] == "/length" else []
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        for piece in (b"ab", b"cd", b"ef"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with served(app) as client:
        response = await client.get("/chunked")
        assert (response.status, response.text) == (201, "abcdef")
        assert response.headers["transfer-encoding"] == "chunked"
        response = await client.get("/length")
        assert (response.status, response.text) == (201, "abcdef")
        assert response.headers["content-length"] == "6"


async def test_pathsend(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 1000)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    async with served(app) as client:
        response = await client.get("/")
    assert response.body == path.read_bytes()


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda path: None, FileNotFoundError),
        (lambda path: path.mkdir(), OSError),
        (lambda path: os.mkfifo(path), OSError),  # never opened blocking: no hang
    ],
)
async def test_pathsend_of_no_regular_file_raises_into_the_app(
    tmp_path: Path, make: Callable[[Path], object], error: type[OSError]
) -> None:
    path = tmp_path / "missing"
    make(path)
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": str(path)})
        except OSError as exc:
            raised.append(exc)
            raise

    async with served(app) as client:
        response = await client.get("/")
    assert response.status == 500
    [exc] = raised
    assert isinstance(exc, error)


async def test_pathsend_aborted_while_the_file_opens_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is cancelled (a hard stop, the shutdown cut-off) while the file
    is being opened in its thread: the file must be closed, not leaked, and send()
    must tell the application that the client is gone."""
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 10)
    release = threading.Event()
    opened: list[io.FileIO] = []
    real_open = trioserve.asgi._http._open_file

    def gated_open(file: str) -> tuple[io.FileIO, os.stat_result]:
        # An open that blocks (an NFS server), until the test has aborted the exchange.
        release.wait(5)
        handle, st = real_open(file)  # the adapter owns (and must close) it from here
        opened.append(handle)
        return handle, st

    monkeypatch.setattr(trioserve.asgi._http, "_open_file", gated_open)
    sending = Signal()
    done = Signal()
    outcome: list[BaseException | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        sending.set()
        try:
            await send({"type": "http.response.pathsend", "path": str(path)})
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)
            raise
        finally:
            done.set()

    async with hosted(app, lifespan="off") as handler:
        client, server_end = stream_pair()
        try:
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trioserve.Server(handler).serve_connection, server_end)
                    await client.send_all(GET)
                    await sending.wait()
                    nursery.cancel_scope.cancel()  # aborts the exchange mid-open
                release.set()
                await done.wait()
        finally:
            release.set()
    [exc] = outcome
    assert isinstance(exc, ClientDisconnectedError)
    [handle] = opened
    assert handle.closed


async def test_state_from_lifespan_is_copied_per_request() -> None:
    seen: list[object] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()
            state = scope["state"]
            assert isinstance(state, dict)
            state["pool"] = ["connection"]
            state["counter"] = 0
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        state = scope["state"]
        assert isinstance(state, dict)
        seen.append(state["counter"])
        state["counter"] = 99  # a shallow copy: the next request does not see this
        state["pool"].append("touched")  # ...but shares the objects in it
        await respond(send)

    async with served(app, lifespan="on") as client:
        await client.get("/")
        await client.get("/")
    assert seen == [0, 0]


async def test_receive_after_the_response_returns_disconnect() -> None:
    after: list[Message] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await respond(send)
        after.append(await receive())  # waits until the response has been sent
        done.set()

    async with served(app) as client:
        assert (await client.get("/")).text == "ok"
        with trio.fail_after(5):
            await done.wait()
    assert after == [{"type": "http.disconnect"}]


async def test_http_error_from_the_body_keeps_its_status() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        assert message == {"type": "http.disconnect"}
        await respond(send)  # too late: the 413 is the answer

    config = trioserve.Config(max_body_size=100)
    async with served(app, config=config) as client:
        response = await client.post("/", body=b"x" * 1000)
    assert response.status == 413


# --- Applications that fail ------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("return", "returned without a response"),
        ("return-after-start", "returned after http.response.start without a body"),
        ("raise", "boom"),
        ("raise-after-start", "boom"),
        ("body-first", "'http.response.body' sent before http.response.start"),
        ("unknown", "unexpected ASGI message 'http.response.nonsense'"),
        ("bad-status", "'status' must be an int"),
        ("bad-header", "must be bytes"),
        ("trailers", "trailers are not supported"),
    ],
)
async def test_failure_before_the_first_body_is_a_500(
    case: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        start: Message = {"type": "http.response.start", "status": 200, "headers": []}
        if case == "return":
            return
        if case == "raise":
            raise ValueError("boom")
        if case == "body-first":
            await send({"type": "http.response.body", "body": b"x"})
        if case == "unknown":
            await send({"type": "http.response.nonsense"})
        if case == "bad-status":
            start["status"] = "200"
        if case == "bad-header":
            start["headers"] = [("content-type", "text/plain")]
        if case == "trailers":
            start["trailers"] = True
        await send(start)
        if case == "raise-after-start":
            raise ValueError("boom")

    async with served(app) as client:
        response = await client.get("/")
        assert response.status == 500
        assert b"boom" not in response.body  # error pages carry no exception text
    [record] = errors_above_debug(caplog)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert message in str(record.exc_info[1])


@pytest.mark.parametrize("case", ["raise", "return", "start-again"])
async def test_failure_mid_stream_aborts_the_connection(
    case: str, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await trio.sleep(1)  # the head and the first piece are out by now
        if case == "raise":
            raise ValueError("mid-stream")
        if case == "start-again":
            await send({"type": "http.response.start", "status": 200, "headers": []})

    async with hosted(app, lifespan="off") as handler, open_connection(handler) as stream:
        await stream.send_all(GET)
        answer = await receive_all(stream)
    # The head and the first piece went out; the chunked body never ends.
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in answer
    with pytest.raises(ValueError, match="incomplete chunked read"):
        parse_responses(answer)
    [record] = errors_above_debug(caplog)
    assert record.levelno == logging.ERROR


async def test_failure_after_a_complete_response_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await respond(send)
        raise ValueError("after the fact")

    async with served(app) as client:
        assert (await client.get("/")).text == "ok"
    [record] = errors_above_debug(caplog)
    assert "after its response" in record.getMessage()


async def test_not_hosted_fails_clearly(caplog: pytest.LogCaptureFixture) -> None:
    # The mistake a test makes when it forgets `async with handler.lifespan()` (and a
    # program when it forgets serve(lifespan=handler.lifespan)).
    handler = ASGIHandler(lambda scope, receive, send: respond(send))
    async with open_client(handler) as client:
        response = await client.get("/")
    assert response.status == 500
    [record] = errors_above_debug(caplog)
    assert "lifespan=handler.lifespan" in str(record.exc_info[1])  # type: ignore[index]


# --- Clients that go away --------------------------------------------------------


async def test_client_gone_during_a_streamed_response(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    outcome: list[BaseException] = []
    stopped = Signal()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(10_000):  # about 100 s worth: it must stop long before
                await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
                await anyio.sleep(0.01)
        except OSError as exc:
            outcome.append(exc)
            raise
        finally:
            stopped.set()

    # A socket smoke test: the kernel's own close (and reset) reaches the application.
    async with serve_asgi(app, lifespan="off") as client:
        # A raw socket: read the head and a little body, then hang up mid-response.
        with trio.socket.socket() as sock:
            await sock.connect(("127.0.0.1", client.base_url.port))
            await sock.send(GET)
            assert (await sock.recv(4096)).startswith(b"HTTP/1.1 200 ")
        with trio.fail_after(5):
            await stopped.wait()
        assert errors_above_debug(caplog) == []  # (the shutdown logs at INFO)
    [exc] = outcome
    assert isinstance(exc, ClientDisconnectedError)
    assert isinstance(exc, trioserve.ClientDisconnected)


async def test_long_poll_sees_the_disconnect(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    messages: list[Message] = []
    send_failed = Signal()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        messages.append(await receive())  # the (empty) body
        messages.append(await receive())  # waits: the long poll
        try:
            await respond(send)
        except OSError:
            send_failed.set()
            raise

    async with hosted(app, lifespan="off") as handler:
        async with open_connection(handler) as stream:
            await stream.send_all(GET)
            await trio.sleep(60)  # the application waits all this time
            assert len(messages) == 1
        # Leaving the block closed the client's end.
        with trio.fail_after(1):
            await send_failed.wait()
    assert messages[1] == {"type": "http.disconnect"}
    assert errors_above_debug(caplog) == []


async def test_application_ignoring_the_disconnect_is_cancelled(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    disconnected = Signal()
    cancelled = Signal()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await receive()  # returns http.disconnect when the client goes...
        disconnected.set()
        try:
            await anyio.sleep_forever()  # ...which this application ignores
        finally:
            cancelled.set()

    async with hosted(app, lifespan="off") as handler:
        async with open_connection(handler) as stream:
            await stream.send_all(GET)
            await trio.sleep(1)
        with trio.fail_after(ABANDON_GRACE * 2):
            await cancelled.wait()
    [gone], [ended] = disconnected.times, cancelled.times
    assert ended - gone == pytest.approx(ABANDON_GRACE, abs=0.5)
    assert errors_above_debug(caplog) == []


# --- The lifespan scope ----------------------------------------------------------


def lifespan_app(events: list[str], *, fail: str | None = None) -> object:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            events.append("request")
            await respond(send)
            return
        assert scope["asgi"] == {"version": "3.0", "spec_version": "2.0"}
        assert (await receive())["type"] == "lifespan.startup"
        if fail == "startup":
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return
        events.append("startup")
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        events.append("shutdown")
        if fail == "shutdown":
            await send({"type": "lifespan.shutdown.failed", "message": "pool stuck"})
            return
        await send({"type": "lifespan.shutdown.complete"})

    return app


async def test_lifespan_runs_around_serving() -> None:
    events: list[str] = []
    async with served(lifespan_app(events), lifespan="on") as client:
        assert events == ["startup"]
        await client.get("/")
    assert events == ["startup", "request", "shutdown"]


async def test_lifespan_startup_failed_stops_serve() -> None:
    events: list[str] = []
    handler = ASGIHandler(lifespan_app(events, fail="startup"))  # type: ignore[arg-type]
    with pytest.raises(LifespanFailure) as info:
        await trioserve.serve(handler, 0, host="127.0.0.1", lifespan=handler.lifespan)
    assert info.value.message == "no database"
    assert "no database" in str(info.value)
    assert isinstance(info.value, trioserve.StartupError)
    assert events == []


async def test_lifespan_shutdown_failed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    async with hosted(lifespan_app(events, fail="shutdown")):
        pass
    [record] = errors_above_debug(caplog)
    assert "pool stuck" in record.getMessage()


async def test_lifespan_shutdown_that_never_answers_is_bounded(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await trio.sleep_forever()  # never answers

    handler = ASGIHandler(app, lifespan="on")
    async with handler.lifespan():
        started = trio.current_time()
    assert trio.current_time() - started == SHUTDOWN_TIMEOUT
    [record] = errors_above_debug(caplog)
    assert "lifespan.shutdown.complete" in record.getMessage()


async def test_lifespan_off_never_calls_the_app_with_it() -> None:
    events: list[str] = []
    async with served(lifespan_app(events), lifespan="off") as client:
        await client.get("/")
    assert events == ["request"]


async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"  # an application that knows nothing of lifespan
    await respond(send)


async def test_lifespan_unsupported_in_auto(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioserve")
    async with served(http_only) as client:
        assert (await client.get("/")).text == "ok"
    assert errors_above_debug(caplog)[0].levelno == logging.INFO
    assert "not supported" in errors_above_debug(caplog)[0].getMessage()


async def test_lifespan_unsupported_is_an_error_when_on() -> None:
    handler = ASGIHandler(http_only, lifespan="on")
    with pytest.raises(LifespanFailure, match="AssertionError"):
        async with handler.lifespan():
            pass  # pragma: no cover


async def test_errors_while_serving_pass_through_the_lifespan_unwrapped() -> None:
    handler = ASGIHandler(http_only, lifespan="off")
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await trioserve.serve(handler, port, host="127.0.0.1", lifespan=handler.lifespan)


def test_lifespan_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        ASGIHandler(http_only, lifespan="yes")  # type: ignore[arg-type]


# --- Over a real socket ------------------------------------------------------------------


async def test_smoke_over_a_socket_with_httpx() -> None:
    """serve(lifespan=handler.lifespan) on 127.0.0.1 with a real HTTP client: the
    lifespan around serving, the socket's addresses in the scope, a request body in
    and a streamed response out."""
    events: list[str] = []
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            events.append("startup")
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        scopes.append(scope)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message["body"]  # type: ignore[operator]  # bytes, per the spec
            more = bool(message.get("more_body"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (body[:5], body[5:]):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with serve_asgi(app, lifespan="on") as client:
        assert events == ["startup"]
        response = await client.post("/echo", content=b"hello over a socket")
    assert events == ["startup", "shutdown"]
    assert response.status_code == 200
    assert response.text == "hello over a socket"
    assert response.headers["transfer-encoding"] == "chunked"
    [scope] = scopes
    client_addr, server_addr = scope["client"], scope["server"]
    assert isinstance(client_addr, tuple)
    assert isinstance(server_addr, tuple)
    assert client_addr[0] == server_addr[0] == "127.0.0.1"
    assert server_addr[1] == client.base_url.port
