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
from trioserve.testing import ResponseReader, open_connection, receive_all

POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"


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
