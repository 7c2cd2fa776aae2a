"""A finished connection is freed at once by reference counting, never left to the cycle
collector: a burst of clients that reset mid-body once stayed in memory as cyclic
garbage (connection, exchange, request, body, and the tracebacks that tied them) until
a full collection, so dead bodies piled up on top of live ones."""

from __future__ import annotations

import collections
import functools
import gc
import socket as stdlib_socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

import trioserve
import trioserve.testing
from trioserve.asgi import ASGIHandler, Receive, Scope, Send

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
HALF_POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000


async def native(request: trioserve.Request) -> trioserve.Response | None:
    if request.is_websocket:
        ws = await request.accept_websocket()
        async for message in ws:
            await ws.send(message)
        return None
    if request.path == "/fail":
        raise RuntimeError("the handler's bug")
    if request.method == "POST":
        return trioserve.Response(200, body=await request.body())
    return trioserve.Response(200, body=b"hello")


async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while (message := await receive())["type"] == "http.request":
        body += message["body"]
        if not message["more_body"]:
            break
    else:
        return  # http.disconnect
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body or b"hello"})


@contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cyclic_garbage() -> collections.Counter[str]:
    """trioserve's objects that only the cycle collector would free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = [type(o) for o in gc.garbage]
        gc.garbage.clear()
    finally:
        gc.set_debug(0)
    return collections.Counter(
        t.__qualname__ for t in found if t.__module__.startswith("trioserve")
    )


@asynccontextmanager
async def serving(kind: str) -> AsyncIterator[trioserve.Server]:
    config = trioserve.Config(header_timeout=0.2)
    async with trio.open_nursery() as nursery:
        if kind == "asgi":
            handler = ASGIHandler(asgi)
            serve = functools.partial(trioserve.serve, handler, lifespan=handler.lifespan)
        else:
            serve = functools.partial(trioserve.serve, native)
        server: trioserve.Server = await nursery.start(
            functools.partial(serve, 0, host="127.0.0.1", config=config)
        )
        yield server
        with trio.fail_after(10):
            await server.shutdown()  # once every connection task has finished


async def exchange(port: int, data: bytes, answers: int = 1) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(data)
        received = b""
        while received.count(b"HTTP/1.1 ") < answers or not received.endswith((b"hello", b"\n")):
            chunk = await stream.receive_some()
            if not chunk:
                break
            received += chunk
        return received


async def reset_mid_body(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(HALF_POST)
    await trio.sleep(0.05)  # the handler is reading the body
    linger = struct.pack("ii", 1, 0)
    stream.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, linger)
    await stream.aclose()


@pytest.mark.parametrize("kind", ["native", "asgi"])
async def test_finished_connections_leave_no_cyclic_garbage(kind: str) -> None:
    with collector_off():
        async with serving(kind) as server:
            port = server.ports[0]
            assert b"200 OK" in await exchange(port, GET + POST + GET, answers=3)
            for _ in range(3):
                await reset_mid_body(port)
            await exchange(port, b"GET / HTTP/1.1\r\n")  # 408: the head never ends
            if kind == "native":
                assert b"500 " in await exchange(port, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
        assert server.statistics().requests_served >= 3
        garbage = cyclic_garbage()
        assert not garbage, sorted(garbage.items())


async def test_finished_websockets_leave_no_cyclic_garbage() -> None:
    server = trioserve.Server(native)
    with collector_off():
        async with trioserve.testing.open_websocket(server) as ws:
            await ws.send("echo")
            assert await ws.receive() == "echo"
        async with trioserve.testing.open_websocket(server) as ws:
            await ws.send("echo")
            assert await ws.receive() == "echo"
            ws.reset()
        assert server.statistics().connections_open == 0
        garbage = cyclic_garbage()
        assert not garbage, sorted(garbage.items())
