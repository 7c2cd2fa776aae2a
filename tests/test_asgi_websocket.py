"""The ASGI ``websocket`` scope: handshake, messages, close codes, denial, failures,
and Starlette and FastAPI WebSocket routes, through the real engine in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
import trio
from fastapi import FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from fastapi import WebSocketDisconnect as FastAPIDisconnect
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket
from websockets.sync.client import connect as sync_connect

import trioserve
from trioserve.asgi import ASGIHandler, ClientDisconnectedError
from trioserve.asgi._types import ASGIApp, Message, Receive, Scope, Send
from trioserve.testing import WebSocketRejected, open_websocket


@asynccontextmanager
async def hosted(app: ASGIApp) -> AsyncIterator[ASGIHandler]:
    handler = ASGIHandler(app, lifespan="off")
    async with handler.lifespan():
        yield handler


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "websocket"
    assert await receive() == {"type": "websocket.connect"}
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def test_echo_text_and_bytes() -> None:
    async with hosted(echo_app) as handler, open_websocket(handler, "/ws") as ws:
        await ws.send("hello")
        assert await ws.receive() == "hello"
        await ws.send(b"\x00\xff")
        assert await ws.receive() == b"\x00\xff"
        assert await ws.close() == 1000


async def test_the_scope() -> None:
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await send({"type": "websocket.close"})

    async with hosted(app) as handler:
        with pytest.raises(WebSocketRejected):
            async with open_websocket(handler, "/chat/r%C3%A9?x=1", subprotocols=["a", "b"]):
                pass
    [scope] = scopes
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/chat/ré"
    assert scope["raw_path"] == b"/chat/r%C3%A9"
    assert scope["query_string"] == b"x=1"
    assert scope["subprotocols"] == ["a", "b"]
    assert "method" not in scope
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert (b"upgrade", b"websocket") in list(scope["headers"])  # type: ignore[call-overload]


async def test_accept_with_subprotocol_and_headers() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {"type": "websocket.accept", "subprotocol": "b", "headers": [(b"x-room", b"7")]}
        )
        await send({"type": "websocket.send", "text": "welcome"})

    async with hosted(app) as handler, open_websocket(handler, subprotocols=["a", "b"]) as ws:
        assert ws.subprotocol == "b"
        assert await ws.receive() == "welcome"
        # The application returned without closing: the server closes with 1000.
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1000


async def test_the_client_close_code_and_reason_arrive_as_sent() -> None:
    got: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        got.append(await receive())
        with pytest.raises(ClientDisconnectedError):
            await send({"type": "websocket.send", "text": "too late"})

    async with hosted(app) as handler, open_websocket(handler) as ws:
        assert await ws.close(4001, "custom") == 4001
    assert got == [{"type": "websocket.disconnect", "code": 4001, "reason": "custom"}]


async def test_the_application_closes_with_its_code_and_reason() -> None:
    after: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4003, "reason": "not allowed"})
        after.append(await receive())

    async with hosted(app) as handler, open_websocket(handler) as ws:
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.receive()
        assert (closed.value.code, closed.value.reason) == (4003, "not allowed")
    assert after == [{"type": "websocket.disconnect", "code": 4003, "reason": "not allowed"}]


async def test_a_close_code_that_may_not_be_sent_raises_into_the_application() -> None:
    raised: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await send({"type": "websocket.close", "code": 1006})
        except ValueError as exc:
            raised.append(exc)

    async with hosted(app) as handler, open_websocket(handler) as ws:
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1000
    assert len(raised) == 1


async def test_close_before_accept_is_a_403() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    async with hosted(app) as handler:
        with pytest.raises(WebSocketRejected) as rejected:
            async with open_websocket(handler):
                pass
    assert rejected.value.status == 403


async def test_a_denial_response_streamed_in_pieces() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"log ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"in first"})

    async with hosted(app) as handler:
        with pytest.raises(WebSocketRejected) as rejected:
            async with open_websocket(handler):
                pass
    assert rejected.value.status == 401
    assert rejected.value.body == b"log in first"
    assert (b"www-authenticate", b"Bearer") in rejected.value.headers


@pytest.mark.parametrize(
    ("behaviour", "status"),
    [("raise", 500), ("http-error", 404), ("return", 500), ("bad-subprotocol", 500)],
)
async def test_no_answer_to_the_handshake_is_an_http_error(
    behaviour: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if behaviour == "raise":
            raise KeyError("boom")
        if behaviour == "http-error":
            raise trioserve.HTTPError("no such room", status_code=404)
        if behaviour == "bad-subprotocol":
            await send({"type": "websocket.accept", "subprotocol": "never offered"})

    async with hosted(app) as handler:
        with pytest.raises(WebSocketRejected) as rejected:
            async with open_websocket(handler):
                pass
    assert rejected.value.status == status
    if status == 500:
        assert (
            "boom" in caplog.text
            or "without accepting" in caplog.text
            or "offered" in (caplog.text)
        )


async def test_raising_after_accept_closes_with_1011(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise KeyError("broken after accept")

    async with hosted(app) as handler, open_websocket(handler) as ws:
        await ws.send("go")
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1011
    assert "broken after accept" in caplog.text


async def test_messages_are_malformed_or_out_of_order() -> None:
    errors: list[BaseException] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        for message in (
            {"type": "websocket.send", "text": "before accept"},
            {"type": "websocket.http.response.body", "body": b""},
        ):
            try:
                await send(message)
            except RuntimeError as exc:
                errors.append(exc)
        await send({"type": "websocket.accept"})
        for message in (
            {"type": "websocket.send"},
            {"type": "websocket.send", "text": "a", "bytes": b"b"},
            {"type": "websocket.send", "text": 3},
            {"type": "websocket.accept"},
            {"type": "websocket.http.response.start", "status": 403},
            {"type": "http.response.start", "status": 200},
        ):
            try:
                await send(message)
            except (RuntimeError, TypeError, ValueError) as exc:
                errors.append(exc)
        await send({"type": "websocket.send", "text": "still open"})

    async with hosted(app) as handler, open_websocket(handler) as ws:
        assert await ws.receive() == "still open"
    assert len(errors) == 8


async def test_a_cancelled_receive_takes_no_message(autojump_clock: trio.abc.Clock) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        with anyio.move_on_after(1):
            await receive()  # nothing comes within the second
        message = await receive()
        await send({"type": "websocket.send", "text": f"got {message.get('text')}"})

    async with hosted(app) as handler, open_websocket(handler) as ws:
        await trio.sleep(2)
        await ws.send("the one")
        assert await ws.receive() == "got the one"


async def test_a_client_that_leaves_before_the_accept_ends_a_waiting_receive() -> None:
    seen: list[Message] = []
    done = trio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        seen.append(await receive())  # waits for a handshake nobody decides
        done.set()

    handler = ASGIHandler(app, lifespan="off")
    server = trioserve.Server(handler)
    async with handler.lifespan(), trio.open_nursery() as nursery:
        listener = trioserve.testing.MemoryListener()
        await nursery.start(server.serve_listeners, [listener])
        stream = await listener.connect()
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await trio.testing.wait_all_tasks_blocked()
        await stream.aclose()
        with trio.fail_after(5):
            await done.wait()
        await server.shutdown()
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


async def test_graceful_shutdown_says_1001_to_the_application(
    autojump_clock: trio.abc.Clock,
) -> None:
    seen: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())

    handler = ASGIHandler(app, lifespan="off")
    server = trioserve.Server(handler)
    async with handler.lifespan(), trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [trioserve.testing.MemoryListener()])
        async with open_websocket(server) as ws:
            nursery.start_soon(server.shutdown)
            with pytest.raises(trioserve.WebSocketClosed) as closed:
                await ws.receive()
            assert closed.value.code == 1001
    assert seen[0]["type"] == "websocket.disconnect"
    assert seen[0]["code"] == 1001


# --- Frameworks --------------------------------------------------------------------


async def starlette_echo(websocket: StarletteWebSocket) -> None:
    await websocket.accept(subprotocol=websocket.scope["subprotocols"][0])
    async for text in websocket.iter_text():
        await websocket.send_text(text.upper())


async def starlette_denies(websocket: StarletteWebSocket) -> None:
    await websocket.send_denial_response(PlainTextResponse("no entry", status_code=403))


starlette_app = Starlette(
    routes=[WebSocketRoute("/echo", starlette_echo), WebSocketRoute("/deny", starlette_denies)]
)


async def test_starlette_websocket_route() -> None:
    async with hosted(starlette_app) as handler:
        async with open_websocket(handler, "/echo", subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"
            await ws.send("hi")
            assert await ws.receive() == "HI"
        with pytest.raises(WebSocketRejected) as rejected:
            async with open_websocket(handler, "/deny"):
                pass
        assert (rejected.value.status, rejected.value.body) == (403, b"no entry")
        # No route: Starlette closes before accepting, which is a 403.
        with pytest.raises(WebSocketRejected) as rejected:
            async with open_websocket(handler, "/nowhere"):
                pass
        assert rejected.value.status == 403


fastapi_app = FastAPI()
fastapi_codes: list[int] = []


@fastapi_app.websocket("/items/{item}")
async def fastapi_items(websocket: FastAPIWebSocket, item: str) -> None:
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_json()
            await websocket.send_json({"item": item, "echo": data})
    except FastAPIDisconnect as disconnect:
        fastapi_codes.append(disconnect.code)


async def test_fastapi_websocket_route_in_memory_and_over_a_socket() -> None:
    fastapi_codes.clear()
    async with hosted(fastapi_app) as handler:
        async with open_websocket(handler, "/items/7") as ws:
            await ws.send('{"n": 1}')
            assert await ws.receive() == '{"item":"7","echo":{"n":1}}'
            assert await ws.close(4000) == 4000

        def client(port: int) -> str | bytes:
            with sync_connect(f"ws://127.0.0.1:{port}/items/x") as ws:
                ws.send('{"n": 2}')
                return ws.recv(timeout=5)

        async with trio.open_nursery() as nursery:
            server = trioserve.Server(handler)
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            await nursery.start(server.serve_listeners, listeners)
            got = await trio.to_thread.run_sync(client, server.ports[0])
            await server.shutdown()
    assert got == '{"item":"x","echo":{"n":2}}'
    assert fastapi_codes == [4000, 1000]
