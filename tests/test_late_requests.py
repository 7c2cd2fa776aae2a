"""A request whose bytes came as the idle wait ended is served, never dropped.

A client cannot tell that its request came a moment late: no FIN had gone out. A
kept-alive connection whose deadline passes, or that a graceful shutdown closes, while
the bytes of its next request are already in hand must answer that request; dropping
it is what made nginx answer 502 to POSTs it could not retry.
"""

from __future__ import annotations

import trio
import trio.testing

import trioserve
from trioserve.testing import MemoryListener, ResponseReader, open_connection, receive_all

POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
GET_PATH = b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n"


async def echo(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=await request.body())


async def test_a_request_delivered_before_the_keep_alive_deadline_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The whole request is in hand before keep_alive_timeout, but the server's task
    runs only after it: the request is served, and the connection stays kept alive."""
    server = trioserve.Server(echo, trioserve.Config(keep_alive_timeout=5.0))
    async with open_connection(server) as stream:
        reader = ResponseReader(stream)
        await stream.send_all(POST)
        assert (await reader.receive_response()).status == 200
        await trio.sleep(4.999)
        await stream.send_all(POST)  # delivered at 4.999 s
        autojump_clock.jump(0.01)  # the server's task runs at 5.009 s
        second = await reader.receive_response()
        assert (second.status, second.body) == (200, b"hi")
        assert "close" not in (second.headers.get("connection") or "")
        await stream.send_all(POST)  # kept alive: a third request is served too
        assert (await reader.receive_response()).status == 200
    assert server.statistics().keep_alive_timeouts == 0


async def test_a_late_first_request_with_a_whole_head_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first request's head, whole and in hand by header_timeout, is served."""
    async with open_connection(echo, trioserve.Config(header_timeout=10.0)) as stream:
        await trio.sleep(9.999)
        await stream.send_all(POST)
        autojump_clock.jump(0.01)
        response = await ResponseReader(stream).receive_response()
    assert (response.status, response.body) == (200, b"hi")


async def test_a_late_first_request_with_half_a_head_gets_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Half a head by header_timeout is still too late: 408, as if it came in time."""
    async with open_connection(echo, trioserve.Config(header_timeout=10.0)) as stream:
        await trio.sleep(9.999)
        await stream.send_all(b"GET / HTTP/1.1\r\n")
        autojump_clock.jump(0.01)
        rest = await receive_all(stream)
    assert rest.startswith(b"HTTP/1.1 408 ")


async def test_a_request_in_hand_when_shutdown_begins_is_served_with_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Graceful shutdown closes idle connections; one whose request bytes were
    delivered before the shutdown began is not idle: it is answered, with close."""
    server = trioserve.Server(echo)
    receive_end = trio.testing.MemoryReceiveStream()
    send_end = trio.testing.MemorySendStream()
    served = trio.StapledStream(send_end, receive_end)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_connection, served)
            await trio.testing.wait_all_tasks_blocked()  # idle, waiting for a request
            # Delivered, then the shutdown begun, with no checkpoint between: the
            # connection task wakes to find both. (_begin_shutdown is the synchronous
            # first step of shutdown(); a task started for it could run too late.)
            receive_end.put_data(POST)
            server._begin_shutdown()
            await server.shutdown()
        sent = send_end.get_data_nowait()
    assert sent.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nconnection: close\r\n" in sent.lower()
    assert sent.endswith(b"\r\n\r\nhi")


async def test_an_evicted_connection_serving_a_late_request_is_not_counted_as_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """max_connections=2: A is evicted for a new client C just as A's next request
    comes (A serves it, then closes). B then goes idle: B is evicted for C, instead of
    C waiting for A's handler."""
    release_a = trio.Event()
    release_b = trio.Event()

    async def handler(request: trioserve.Request) -> trioserve.Response:
        if request.path == "/a-slow":
            await release_a.wait()
        if request.path == "/b":
            await release_b.wait()
        return trioserve.Response(200, body=b"ok")

    server = trioserve.Server(handler, trioserve.Config(max_connections=2))
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        # A: one request, then idle.
        a = await listener.connect()
        ra = ResponseReader(a)
        await a.send_all(GET_PATH % b"a")
        assert (await ra.receive_response()).status == 200
        # B: busy in its handler.
        b = await listener.connect()
        rb = ResponseReader(b)
        await b.send_all(GET_PATH % b"b")
        await trio.testing.wait_all_tasks_blocked()
        # A's next request arrives as the accept loop evicts A for C (same tick).
        await a.send_all(GET_PATH % b"a-slow")  # PipeStream: data now in A's buffer
        server._tracker.evict_oldest_idle()
        c = await listener.connect()
        await trio.testing.wait_all_tasks_blocked()
        # B finishes and idles: there is room to make for C now.
        release_b.set()
        assert (await rb.receive_response()).status == 200
        rc = ResponseReader(c)
        await c.send_all(GET_PATH % b"c")
        with trio.move_on_after(5) as waited:
            reply = await rc.receive_response()
        release_a.set()
        assert not waited.cancelled_caught, "C still waits 5 s later while B idles"
        assert reply.status == 200
        nursery.cancel_scope.cancel()
