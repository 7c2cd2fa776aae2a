"""The server over real loopback sockets, with httpx and with raw trio streams.

A handful of tests only (STYLE 9): everything about the protocol is tested in memory;
these check that the same engine works through the kernel, under load and with a
client that vanishes. 127.0.0.1 and port 0 only; each test is bounded in time.
"""

from __future__ import annotations

import functools
import logging
import socket
import struct
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

import trioserve
from trioserve import Request, Response
from trioserve.testing import ResponseReader

from .test_protocol import client_hello

#: No test here may take longer than this (real seconds).
BOUND = 20.0
BIG = bytes(range(256)) * (10 * 1024 * 1024 // 256)  # 10 MiB


class App:
    """Routes for the tests, and what the handlers saw."""

    def __init__(self) -> None:
        self.upload_started = trio.Event()
        self.upload_outcome: str | None = None
        self.upload_ended = trio.Event()

    async def __call__(self, request: Request) -> Response:
        if request.path == "/echo":
            return Response(200, body=await request.body())
        if request.path == "/stream":
            return Response(200, headers=[("content-type", "text/plain")], body=count(50))
        if request.path == "/upload":
            return await self.upload(request)
        if request.path == "/fails-midway":
            return Response(200, body=fails_midway())
        return Response(200, headers=[("content-type", "text/plain")], body=b"Hello, world!")

    async def upload(self, request: Request) -> Response:
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                self.upload_started.set()
        except trioserve.ClientDisconnected:
            self.upload_outcome = f"disconnected after {received} bytes"
            raise
        finally:
            self.upload_ended.set()
        self.upload_outcome = "complete"
        return Response(200, body=str(received))


async def count(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield b"line %d\n" % i
        await trio.lowlevel.checkpoint()


async def fails_midway() -> AsyncIterator[bytes]:
    yield b"part 1 of 3;"
    await trio.sleep(0.05)
    raise RuntimeError("the database went away")


async def read_until_the_end(port: int, request: bytes) -> tuple[bytes, str]:
    """What the server sent, and how the connection ended: "EOF" or "reset"."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    chunks = []
    async with stream:
        await stream.send_all(request)
        try:
            while data := await stream.receive_some(65536):
                chunks.append(data)
        except trio.BrokenResourceError:
            return b"".join(chunks), "reset"
    return b"".join(chunks), "EOF"


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
async def server(nursery: trio.Nursery, app: App) -> trioserve.Server:
    server: trioserve.Server = await nursery.start(
        functools.partial(trioserve.serve, app, 0, host="127.0.0.1")
    )
    return server


@pytest.fixture
async def client(server: trioserve.Server) -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not intercept loopback.
    async with httpx.AsyncClient(base_url=server.urls[0], trust_env=False) as client:
        yield client


async def test_hello(server: trioserve.Server, client: httpx.AsyncClient) -> None:
    assert server.urls == [f"http://127.0.0.1:{server.ports[0]}"]
    with trio.fail_after(BOUND):
        response = await client.get("/")
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["server"] == "trioserve"
    assert "date" in response.headers
    assert response.http_version == "HTTP/1.1"


async def test_post_echo_of_10_mb(client: httpx.AsyncClient) -> None:
    with trio.fail_after(BOUND):
        response = await client.post("/echo", content=BIG)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(BIG))
    assert response.content == BIG


async def test_streamed_response(client: httpx.AsyncClient) -> None:
    lines = []
    with trio.fail_after(BOUND):
        async with client.stream("GET", "/stream") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            async for line in response.aiter_lines():
                lines.append(line)
    assert lines == [f"line {i}" for i in range(50)]


async def test_streamed_upload_echoed_by_the_example(nursery: trio.Nursery) -> None:
    from .test_embedding import load_example

    echo_stream = load_example("echo_stream")
    server: trioserve.Server = await nursery.start(
        functools.partial(trioserve.serve, echo_stream.handler, 0, host="127.0.0.1")
    )
    # The echo is full duplex: it sends back each piece before reading the next, so
    # the client must read while it sends (httpx sends the whole body first, and
    # would wait forever once both directions' buffers are full).
    head = b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Type: x/y\r\nContent-Length: %d\r\n\r\n"

    async def upload(stream: trio.SocketStream) -> None:
        await stream.send_all(head % len(BIG))
        for offset in range(0, len(BIG), 1 << 20):
            await stream.send_all(BIG[offset : offset + (1 << 20)])

    with trio.fail_after(BOUND):
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        async with stream, trio.open_nursery() as uploading:
            uploading.start_soon(upload, stream)
            reply = await ResponseReader(stream).receive_response("PUT")
    assert reply.body == BIG
    assert reply.headers.get("content-type") == "x/y"
    assert reply.headers.get("transfer-encoding") == "chunked"


async def test_keep_alive_reuses_one_connection(
    server: trioserve.Server, client: httpx.AsyncClient
) -> None:
    with trio.fail_after(BOUND):
        for _ in range(5):
            assert (await client.get("/")).status_code == 200
        assert (await client.post("/echo", content=b"x" * 1000)).content == b"x" * 1000
    stats = server.statistics()
    assert stats.connections_total == 1
    assert stats.requests_served == 6


async def raw_get(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        chunks = []
        while data := await stream.receive_some(65536):
            chunks.append(data)
    return b"".join(chunks)


async def test_200_concurrent_clients(server: trioserve.Server) -> None:
    answers: list[bytes] = []
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    async def one() -> None:
        answers.append(await raw_get(server.ports[0], request))

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(one)
    assert len(answers) == 200
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
    assert all(a.endswith(b"\r\n\r\nHello, world!") for a in answers)
    stats = server.statistics()
    assert (stats.connections_total, stats.requests_served) == (200, 200)


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_vanishing_mid_body_while_others_are_served(
    server: trioserve.Server,
    client: httpx.AsyncClient,
    app: App,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trioserve")
    with trio.fail_after(BOUND):
        vanishing = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await vanishing.send_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"u" * 5000
        )
        await app.upload_started.wait()
        # Others are served while the upload hangs half-done...
        for _ in range(3):
            assert (await client.get("/")).status_code == 200
        if how == "reset":
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            vanishing.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await vanishing.aclose()
        # ...and after it vanished.
        await app.upload_ended.wait()
        assert (await client.post("/echo", content=b"still here")).content == b"still here"
    assert app.upload_outcome == "disconnected after 5000 bytes"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    stats = server.statistics()
    assert stats.client_disconnects == 1
    assert stats.handler_errors == 0


async def test_http10_and_tls_on_the_plain_port(
    server: trioserve.Server, caplog: pytest.LogCaptureFixture
) -> None:
    port = server.ports[0]
    with trio.fail_after(BOUND):
        http10 = await raw_get(port, b"GET / HTTP/1.0\r\n\r\n")
        tls = await raw_get(port, client_hello())
    assert http10.startswith(b"HTTP/1.1 200 OK\r\n")
    assert http10.endswith(b"\r\n\r\nHello, world!")
    assert tls.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


async def test_an_aborted_close_delimited_body_ends_with_a_reset(
    server: trioserve.Server, caplog: pytest.LogCaptureFixture
) -> None:
    # HTTP/1.0 with no length: only the close says where the body ends, so a clean
    # close after a failure would pass a cut body off as complete.
    caplog.set_level(logging.CRITICAL, logger="trioserve")  # the failure is logged
    with trio.fail_after(BOUND):
        answer, ending = await read_until_the_end(
            server.ports[0], b"GET /fails-midway HTTP/1.0\r\n\r\n"
        )
    assert answer.endswith(b"\r\n\r\npart 1 of 3;")
    assert ending == "reset"
    assert server.statistics().connections_aborted == 1


async def test_the_shutdown_cut_off_of_a_close_delimited_body_is_a_reset(
    nursery: trio.Nursery,
) -> None:
    streaming = trio.Event()

    async def endless(request: Request) -> Response:
        async def lines() -> AsyncIterator[bytes]:
            while True:
                yield b"line\n"
                streaming.set()
                await trio.sleep(0.01)

        return Response(200, body=lines())

    config = trioserve.Config(shutdown_timeout=0.2)
    server: trioserve.Server = await nursery.start(
        functools.partial(trioserve.serve, endless, 0, host="127.0.0.1", config=config)
    )
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as inner:
            outcome: list[tuple[bytes, str]] = []

            async def read() -> None:
                outcome.append(
                    await read_until_the_end(server.ports[0], b"GET / HTTP/1.0\r\n\r\n")
                )

            inner.start_soon(read)
            await streaming.wait()
            await server.shutdown()
    [(answer, ending)] = outcome
    assert answer.endswith(b"line\n")
    assert ending == "reset"
    assert server.statistics().shutdown_cutoffs == 1
