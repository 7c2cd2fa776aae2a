"""WebSocket through the engine: handshake check, accept, end codes, shutdown, clients."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import pytest
import trio
import trio.lowlevel
from websockets.sync.client import connect as sync_connect
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol

import trioserve
from trioserve.testing import (
    WebSocketRejected,
    open_connection,
    open_websocket,
    parse_responses,
    receive_all,
)
from trioserve.wsgi import WSGIHandler

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def echo(request: trioserve.Request) -> trioserve.Response | None:
    if not request.is_websocket:
        return trioserve.Response(200, body=b"plain")
    ws = await request.accept_websocket()
    async for message in ws:
        await ws.send(message)
    return None


async def test_echo_in_memory() -> None:
    async with open_websocket(echo, "/ws") as ws:
        await ws.send("hello")
        assert await ws.receive() == "hello"
        await ws.send(b"\x00\x01")
        assert await ws.receive() == b"\x00\x01"
        assert await ws.close() == 1000


async def test_echo_with_deflate_and_subprotocol() -> None:
    async def handler(request: trioserve.Request) -> None:
        ws = await request.accept_websocket("chat", headers=[("x-hello", "1")])
        assert ws.subprotocol == "chat"
        await ws.send(await ws.receive())

    async with open_websocket(handler, subprotocols=["chat"], deflate=True) as ws:
        assert ws.subprotocol == "chat"
        await ws.send("x" * 10000)
        assert await ws.receive() == "x" * 10000
        assert await ws.close() == 1000


@pytest.mark.parametrize(
    ("replace", "status"),
    [
        ((b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426),
        ((b"Sec-WebSocket-Key: " + KEY, b"Sec-WebSocket-Key: short"), 400),
        ((b"GET", b"POST"), 400),
    ],
)
async def test_bad_handshakes_are_answered_before_the_handler(
    replace: tuple[bytes, bytes], status: int
) -> None:
    called = False

    async def handler(request: trioserve.Request) -> trioserve.Response:
        nonlocal called
        called = True
        return trioserve.Response(200)

    async with open_connection(handler) as stream:
        await stream.send_all(HANDSHAKE.replace(*replace))
        [response] = parse_responses(await receive_all(stream))
    assert response.status == status
    assert not called
    if status == 426:
        assert response.headers.get("sec-websocket-version") == "13"


async def test_a_handler_refuses_with_403_and_the_connection_closes() -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        assert request.is_websocket
        return trioserve.Response(403, body=b"no")

    with pytest.raises(WebSocketRejected) as caught:
        async with open_websocket(handler):
            pass
    assert caught.value.status == 403
    assert caught.value.body == b"no"
    async with open_connection(handler) as stream:
        await stream.send_all(HANDSHAKE + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        responses = parse_responses(await receive_all(stream))
    assert [r.status for r in responses] == [403]
    assert responses[0].headers.get("connection") == "close"


async def test_return_closes_with_1000_and_raise_with_1011(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def returns(request: trioserve.Request) -> None:
        await request.accept_websocket()

    async def raises(request: trioserve.Request) -> None:
        await request.accept_websocket()
        raise RuntimeError("boom")

    async with open_websocket(returns) as ws:
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1000
    server = trioserve.Server(raises)
    async with open_websocket(server) as ws:
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1011
    assert server.statistics().handler_errors == 1
    assert "boom" in caplog.text


async def test_access_log_says_101(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="trioserve.access")
    async with open_websocket(echo, "/ws") as ws:
        await ws.send("a")
        await ws.receive()
    assert '"GET /ws HTTP/1.1" 101' in caplog.text


@pytest.mark.parametrize(("restart", "code"), [(False, 1001), (True, 1012)])
async def test_graceful_shutdown_closes_with_1001_or_1012_for_a_restart(
    restart: bool, code: int, autojump_clock: trio.abc.Clock
) -> None:
    config = trioserve.Config(shutdown_timeout=5)
    server = trioserve.Server(echo, config)
    listener = trioserve.testing.MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        stream = await listener.connect()
        conn = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(conn.send(Request(host="x", target="/ws")))
        conn.receive_data(await stream.receive_some())
        assert isinstance(next(conn.events()), AcceptConnection)
        start = trio.current_time()
        nursery.start_soon(functools.partial(server.shutdown, restart=restart))
        conn.receive_data(await stream.receive_some())
        [event] = conn.events()
        assert isinstance(event, CloseConnection)
        assert event.code == code
        await stream.send_all(conn.send(event.response()))
        assert await stream.receive_some() == b""
    assert trio.current_time() - start < 5
    assert server.statistics().shutdown_cutoffs == 0


async def test_ping_timeout_in_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: trioserve.Request) -> None:
        ws = await request.accept_websocket()
        await ws.receive()

    config = trioserve.Config(ws_ping_interval=20, ws_ping_timeout=20)
    async with open_websocket(handler, config=config) as ws:
        ws.answer_pings = False
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1011
        assert trio.current_time() == pytest.approx(40)


async def test_write_timeout_in_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    sent = trio.Event()
    failed: list[int] = []

    async def handler(request: trioserve.Request) -> None:
        ws = await request.accept_websocket()
        try:
            while True:
                await ws.send(b"x" * 65536)
        except trioserve.WebSocketClosed as exc:
            failed.append(exc.code)
            sent.set()

    config = trioserve.Config(write_timeout=7, ws_ping_interval=math.inf)
    server = trioserve.Server(handler, config)
    async with open_websocket(server, buffer_size=1024):
        await sent.wait()  # the client never reads
        assert trio.current_time() == pytest.approx(7)
    assert failed == [1006]
    assert server.statistics().connections_aborted == 1


async def test_bytes_pipelined_after_the_handshake_are_kept() -> None:
    conn = WSConnection(ConnectionType.CLIENT)
    data = conn.send(Request(host="x", target="/ws"))
    async with open_connection(echo) as stream:
        # The handshake and a message frame in one write: h11 holds the frame.
        await stream.send_all(data + _frame_for("early"))
        received = b""
        while b"early" not in received:
            received += await stream.receive_some()
    assert received.startswith(b"HTTP/1.1 101 ")


def _frame_for(text: str) -> bytes:
    # wsproto's connection frames only once the handshake is done: its framer does now.
    return FrameProtocol(client=True, extensions=[]).send_data(text, fin=True)


async def test_plain_requests_keep_alive_beside_websocket() -> None:
    async with trioserve.testing.open_client(echo) as client:
        first = await client.get("/")
        second = await client.get("/")
    assert (first.body, second.body) == (b"plain", b"plain")
    assert client.connections_opened == 1


async def test_a_non_websocket_upgrade_is_plain_http() -> None:
    async with open_connection(echo) as stream:
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        responses = parse_responses(await receive_all(stream))
    assert [r.body for r in responses] == [b"plain", b"plain"]


async def test_accept_outside_a_websocket_request_raises() -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        with pytest.raises(RuntimeError):
            await request.accept_websocket()
        return trioserve.Response(200)

    async with trioserve.testing.open_client(handler) as client:
        assert (await client.get("/")).status == 200


async def _serve_tcp(nursery: trio.Nursery) -> tuple[trioserve.Server, int]:
    server = trioserve.Server(echo)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(server.serve_listeners, listeners)
    return server, server.ports[0]


async def test_the_websockets_library_over_a_socket() -> None:
    def client(port: int) -> list[str | bytes]:
        with sync_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            ws.send("hi")
            first = ws.recv(timeout=5)
            ws.send(b"\x00" * 70000)
            second = ws.recv(timeout=5)
        return [first, second]

    async with trio.open_nursery() as nursery:
        server, port = await _serve_tcp(nursery)
        got = await trio.to_thread.run_sync(client, port)
        await server.shutdown()
    assert got == ["hi", b"\x00" * 70000]


async def test_wsproto_client_over_a_socket() -> None:
    async with trio.open_nursery() as nursery:
        server, port = await _serve_tcp(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(conn.send(Request(host="x", target="/ws")))
        events: list[object] = []
        while not any(isinstance(e, TextMessage) for e in events):
            if not events:
                conn.receive_data(await stream.receive_some())
                events.extend(conn.events())
                assert isinstance(events.pop(0), AcceptConnection)
                await stream.send_all(conn.send(TextMessage("via wsproto")))
            conn.receive_data(await stream.receive_some())
            events.extend(conn.events())
        assert [e.data for e in events if isinstance(e, TextMessage)] == ["via wsproto"]
        await stream.send_all(conn.send(CloseConnection(code=1000)))
        conn.receive_data(await stream.receive_some())
        assert any(isinstance(e, CloseConnection) for e in conn.events())
        await stream.aclose()
        await server.shutdown()


# --- Handlers that do not take the upgrade: logged once ------------------------------


def _wsgi_app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such page"]


async def _plain_ok(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=b"a page, not a WebSocket")


async def _refuses(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(403, body=b"no")


@pytest.mark.parametrize(
    ("handler", "status", "logged"),
    [
        (WSGIHandler(_wsgi_app), 404, "has no WebSocket support"),
        (_plain_ok, 200, "answered with 200 instead of accepting it"),
        (_refuses, 403, None),
    ],
    ids=["wsgi", "ignores-is_websocket", "refuses"],
)
async def test_an_upgrade_the_handler_does_not_take_is_logged_once(
    handler: trioserve.Handler, status: int, logged: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    server = trioserve.Server(handler)
    for _ in range(2):
        with pytest.raises(WebSocketRejected) as rejected:
            async with open_websocket(server, "/ws"):
                pass
        assert rejected.value.status == status
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    if logged is None:
        assert warnings == []
    else:
        [warning] = warnings
        assert logged in warning.getMessage()
        assert "GET /ws" in warning.getMessage()


async def test_a_cancelled_write_aborts_the_websocket(autojump_clock: trio.abc.Clock) -> None:
    # A send cut off by the handler's own timeout may have written part of a frame:
    # the WebSocket cannot go on, so it is aborted (1006), never left half-framed.
    after: list[int] = []
    done = trio.Event()

    async def handler(request: trioserve.Request) -> None:
        ws = await request.accept_websocket()
        with trio.move_on_after(1):
            await ws.send(b"x" * 1_000_000)  # the client does not read
        assert ws.close_code == 1006
        with pytest.raises(trioserve.WebSocketClosed) as closed:
            await ws.send("more")
        after.append(closed.value.code)
        done.set()

    server = trioserve.Server(handler)
    async with open_websocket(server, buffer_size=1024):
        await done.wait()
    assert after == [1006]
    assert server.statistics().connections_aborted == 1


# --- The testing client's faults ----------------------------------------------------


async def test_a_peer_stalled_mid_frame_is_closed_by_the_keepalive(
    autojump_clock: trio.abc.Clock,
) -> None:
    ended: list[tuple[int, float]] = []

    async def handler(request: trioserve.Request) -> None:
        ws = await request.accept_websocket()
        try:
            await ws.receive()
        except trioserve.WebSocketClosed as closed:
            ended.append((closed.code, trio.current_time()))

    config = trioserve.Config(ws_ping_interval=20, ws_ping_timeout=20)
    async with open_websocket(handler, config=config) as ws:
        # Not reading while stalled, it answers no ping: dead, at interval + timeout.
        await ws.send_stalled("x" * 1000, after=3, duration=3600)
    assert ended == [(1011, pytest.approx(40))]


async def test_a_peer_that_resets_is_1006_for_the_handler() -> None:
    ended: list[int] = []
    accepted = trio.Event()

    async def handler(request: trioserve.Request) -> None:
        ws = await request.accept_websocket()
        accepted.set()
        try:
            await ws.receive()
        except trioserve.WebSocketClosed as closed:
            ended.append(closed.code)

    server = trioserve.Server(handler)
    async with open_websocket(server) as ws:
        await accepted.wait()
        ws.reset()
    assert ended == [1006]
    assert server.statistics().connections_aborted == 1


# --- The example ------------------------------------------------------------------------


async def test_the_chat_example_broadcasts_and_drops_a_member_that_falls_behind() -> None:
    from examples import websocket_chat

    websocket_chat.room.members.clear()
    server = trioserve.Server(websocket_chat.handler)
    total = websocket_chat.BACKLOG * 4
    async with (
        open_websocket(server, "/chat") as alice,
        open_websocket(server, "/chat", buffer_size=1024) as bob,
    ):
        while len(websocket_chat.room.members) < 2:
            await trio.lowlevel.checkpoint()
        await alice.send("hello")
        assert await alice.receive() == "hello"
        assert await bob.receive() == "hello"
        # Bob stops reading: once his socket buffer and his BACKLOG are full, he is
        # dropped from the room and closed with 1008; Alice goes on.
        for n in range(total):
            await alice.send(f"{n:04d}" + "x" * 96)
            assert (await alice.receive())[:4] == f"{n:04d}"
        received = []
        while bob.close_code is None:
            with contextlib.suppress(trioserve.WebSocketClosed):
                received.append(await bob.receive())
        assert bob.close_code == 1008
        assert 0 < len(received) < total
        assert len(websocket_chat.room.members) == 1
    with pytest.raises(WebSocketRejected) as rejected:
        async with open_websocket(server, "/elsewhere"):
            pass
    assert rejected.value.status == 404
