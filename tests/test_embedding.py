"""trioserve inside a trio program: started with nursery.start, stopped by cancellation
or by ``server.shutdown()``, leaving no task, socket or warning behind. And the
examples, run as the programs they are.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import signal
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import trio
import trio.testing

import trioserve
from trioserve import Request, Response
from trioserve.testing import ResponseReader

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: No test here may take longer than this (real seconds).
BOUND = 20.0
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def load_example(name: str) -> types.ModuleType:
    """Import ``examples/<name>.py`` (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task in this run, found by walking the task tree from the root."""
    found: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None or task in found:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


async def assert_refused(port: int) -> None:
    """Nothing listens on ``port`` any more."""
    with trio.socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        await sock.connect(("127.0.0.1", port))


async def test_nursery_start_returns_a_listening_server(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> Response:
        return Response(200, body=f"{request.server} {request.client is not None}")

    server = await nursery.start(functools.partial(trioserve.serve, handler, 0, host="127.0.0.1"))
    assert isinstance(server, trioserve.Server)
    [port] = server.ports
    assert isinstance(port, int)
    assert port > 0
    assert server.urls == [f"http://127.0.0.1:{port}"]
    with trio.fail_after(BOUND):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(GET)
            reply = await ResponseReader(stream).receive_response()
    assert reply.body == f"('127.0.0.1', {port}) True".encode()


async def test_port_0_is_a_free_port_of_the_kernels_choosing(nursery: trio.Nursery) -> None:
    # Regression: port 0 read as "no port" and bound the default, 8000, so two servers
    # embedded with port 0 collided, and one failed wherever 8000 was taken.
    async def handler(request: Request) -> Response:
        return Response(200)

    serve = functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
    first = await nursery.start(serve)
    second = await nursery.start(serve)
    assert 8000 not in first.ports + second.ports  # the default port
    assert first.ports != second.ports


async def test_cancelling_the_surrounding_scope_stops_everything() -> None:
    handler_outcome: list[str] = []
    in_handler = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/wait":
            in_handler.set()
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                handler_outcome.append("cancelled")
                raise
        return Response(200, body=b"ok")

    tasks_before = all_tasks()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                server = await nursery.start(
                    functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
                )
                port = server.ports[0]
                # One idle keep-alive connection, one with a handler in flight.
                idle = await trio.open_tcp_stream("127.0.0.1", port)
                await idle.send_all(GET)
                assert (await ResponseReader(idle).receive_response()).body == b"ok"
                busy = await trio.open_tcp_stream("127.0.0.1", port)
                await busy.send_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
                await in_handler.wait()
                assert server.statistics().connections_open == 2
                nursery.cancel_scope.cancel()
            # Both connections were closed by the server: their clients read EOF.
            for stream in (idle, busy):
                async with stream:
                    assert await stream.receive_some(100) == b""
            await assert_refused(port)
        assert handler_outcome == ["cancelled"]
        assert server.statistics().connections_open == 0
        assert all_tasks() == tasks_before
        del server, idle, busy, stream
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_graceful_shutdown_finishes_requests_in_flight() -> None:
    release = trio.Event()

    async def handler(request: Request) -> Response:
        await release.wait()
        return Response(200, body=b"finished")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
            )
            port = server.ports[0]
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(GET)
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as inner:
                inner.start_soon(server.shutdown)
                await trio.testing.wait_all_tasks_blocked()
                # Listening stopped at once, while the request is still in flight.
                await assert_refused(port)
                release.set()
                reply = await ResponseReader(stream).receive_response()
                assert await stream.receive_some(100) == b""
                # shutdown() returns once the server has closed this connection,
                # after its lingering read sees the client's close.
                await stream.aclose()
            # serve() returned by itself: the nursery has nothing left to wait for.
    assert reply.body == b"finished"
    assert reply.headers.get("connection") == "close"
    assert server.shutting_down


async def test_serve_connection_on_a_memory_stream_pair(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> Response:
        return Response(200, body=f"{request.client} {request.server} {request.scheme}")

    server = trioserve.Server(handler)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, server_end)
        await client_end.send_all(GET + GET)
        reader = ResponseReader(client_end)
        first, second = await reader.receive_response(), await reader.receive_response()
        await client_end.aclose()
    assert first.body == second.body == b"None None http"
    assert server.statistics().connections_total == 1


# --- The examples, as programs -----------------------------------------------------------


async def start_example(name: str, *args: str) -> tuple[trio.Process, str, bytes]:
    """Start ``examples/<name>.py --port 0``; return it, its URL and what it printed."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    printed = b""
    while b"\n" not in printed:
        data = await process.stdout.receive_some(4096)
        assert data, printed
        printed += data
    url = printed.split(b"Serving on ", 1)[1].split()[0].decode("ascii")
    return process, url, printed


async def stop(process: trio.Process) -> None:
    """Kill ``process`` if it still runs, reap it and close its pipe."""
    if process.returncode is None:
        process.kill()
    await process.wait()
    if process.stdout is not None:
        await process.stdout.aclose()


async def http_get(url: str, path: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return (await ResponseReader(stream).receive_response()).body


async def test_hello_example_serves_and_stops_on_ctrl_c() -> None:
    with trio.fail_after(BOUND):
        process, url, printed = await start_example("hello")
        try:
            assert printed.startswith(b"Serving on http://127.0.0.1:")
            assert printed.endswith(b"(press CTRL+C to quit)\n")
            assert await http_get(url, "/") == b"Hello, world!\n"
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        finally:
            await stop(process)


async def test_embed_example_runs_beside_its_tasks_and_shuts_down() -> None:
    with trio.fail_after(BOUND):
        process, url, _ = await start_example("embed")
        try:
            assert (await http_get(url, "/")).startswith(b"ticks so far: ")
            assert await http_get(url, "/quit") == b"shutting down\n"
            assert await process.wait() == 0
            assert process.stdout is not None
            rest = await process.stdout.receive_some(4096)
            assert rest == b"server stopped\n"
        finally:
            await stop(process)
