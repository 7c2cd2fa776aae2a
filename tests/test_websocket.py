"""WebSocket over a stream: messages, the closing handshake, deadlines and backpressure,
with wsproto's client on memory streams, in virtual time where deadlines matter."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.lowlevel
import trio.testing
from wsproto import WSConnection
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)

from trioserve import Config
from trioserve._websocket import WebSocket, WebSocketClosed, aborted, open_websocket
from trioserve._ws_protocol import WebSocketProtocol

from .ws_helpers import close_payload, frame, handshake, parse_server_frames

NO_PINGS = Config(ws_ping_interval=math.inf)

Handler = Callable[[WebSocket], Awaitable[None]]


class Client:
    """wsproto's client on one end of a stream; answers pings unless told not to."""

    def __init__(self, stream: trio.abc.Stream, conn: WSConnection) -> None:
        self.stream = stream
        self.conn = conn
        self.pending: deque[Event] = deque()
        self.answer_pings = True
        self.eof = False

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def next_event(self) -> Event | None:
        """The next event; ``None`` at the end of the stream."""
        while True:
            while self.pending:
                event = self.pending.popleft()
                if isinstance(event, Ping) and self.answer_pings:
                    await self.send(event.response())
                    continue
                return event
            if self.eof:
                return None
            data = await self.stream.receive_some(65536)
            if not data:
                self.eof = True
                continue
            self.conn.receive_data(bytes(data))
            self.pending.extend(self.conn.events())

    async def next_message(self) -> str | bytes:
        event = await self.next_event()
        assert isinstance(event, Message), event
        return bytes(event.data) if isinstance(event, BytesMessage) else event.data

    async def expect_close(self) -> CloseConnection:
        event = await self.next_event()
        assert isinstance(event, CloseConnection), event
        return event


async def serve(
    stream: trio.abc.Stream,
    protocol: WebSocketProtocol,
    config: Config,
    handler: Handler,
    done: list[WebSocket],
) -> None:
    async with open_websocket(stream, protocol, config) as ws:
        done.append(ws)
        await handler(ws)


async def echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


async def echo_until_closed(ws: WebSocket) -> None:
    with pytest.raises(WebSocketClosed):
        await echo(ws)


def pair(
    *, lockstep: bool = False, max_size: float = 1024 * 1024, deflate: bool = False
) -> tuple[Client, trio.abc.Stream, WebSocketProtocol]:
    conn, protocol, _ = handshake(max_size=max_size, deflate=deflate)
    streams: tuple[trio.abc.Stream, trio.abc.Stream] = (
        trio.testing.lockstep_stream_pair() if lockstep else trio.testing.memory_stream_pair()
    )
    client_stream, server_stream = streams
    return Client(client_stream, conn), server_stream, protocol


# --- Messages and the closing handshake ----------------------------------------------


@pytest.mark.parametrize("deflate", [False, True])
async def test_echo_then_the_client_closes(deflate: bool) -> None:
    client, stream, protocol = pair(deflate=deflate)
    done: list[WebSocket] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, echo, done)
        await client.send(TextMessage(data="hello"))
        assert await client.next_message() == "hello"
        await client.send(BytesMessage(data=b"\x00\x01"))
        assert await client.next_message() == b"\x00\x01"
        await client.send(TextMessage(data="frag", message_finished=False))
        await client.send(Ping(payload=b"between"))
        await client.send(TextMessage(data="ment", message_finished=True))
        client.answer_pings = False
        event = await client.next_event()
        assert isinstance(event, Pong)  # the server answered the ping
        assert event.payload == b"between"
        assert await client.next_message() == "fragment"
        await client.send(CloseConnection(code=1000, reason="bye"))
        close = await client.expect_close()
        assert close.code == 1000  # the server echoes the client's code
    [ws] = done
    assert ws.close_code == 1000
    assert not aborted(ws)
    with pytest.raises(WebSocketClosed) as caught:
        await ws.receive()
    assert (caught.value.code, caught.value.reason) == (1000, "bye")
    with pytest.raises(WebSocketClosed):
        await ws.send("after the close")


async def test_replies_to_messages_that_came_before_the_peers_close_are_sent(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Two messages and a close arrive in one read. The close must not close the
    # protocol while messages before it wait for the application: wsproto had parsed
    # it, and the reply to the first raised RuntimeError ("cannot send in state
    # REMOTE_CLOSING"; Autobahn 1.1.x with a fast client). Now the close frame is
    # parsed only once the messages before it are taken.
    client, stream, protocol = pair()
    done: list[WebSocket] = []

    async def slow_echo(ws: WebSocket) -> None:
        await trio.sleep(1)  # the messages wait for the application
        await ws.send(await ws.receive())
        with pytest.raises(WebSocketClosed) as closed:
            await ws.send(await ws.receive())  # the close is parsed while this is sent
        assert closed.value.code == 1000

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, slow_echo, done)
        data = b"".join(
            client.conn.send(event)
            for event in (TextMessage(data="one"), TextMessage(data="two"), CloseConnection(1000))
        )
        await client.stream.send_all(data)
        assert await client.next_message() == "one"
        assert (await client.expect_close()).code == 1000
    [ws] = done
    assert ws.close_code == 1000


async def test_a_message_before_a_bad_frame_is_answered_before_the_1002(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Autobahn 3.2: a good message, then a frame with a reserved bit, in one write. The
    # failure waits until the application asks for the next message, so the echo of
    # the good one goes first, then the close with 1002 (the reader had failed the
    # connection as the handler was about to answer).
    client, stream, protocol = pair()

    async def slow_echo(ws: WebSocket) -> None:
        message = await ws.receive()
        await trio.sleep(1)  # the bad frame is parsed meanwhile
        await ws.send(message)
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        assert closed.value.code == 1002

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, slow_echo, [])
        await client.stream.send_all(
            client.conn.send(TextMessage(data="Hello, world!")) + frame(0x1, b"x", rsv1=True)
        )
        assert await client.next_message() == "Hello, world!"
        assert (await client.expect_close()).code == 1002


async def test_a_client_close_with_another_code_ends_iteration_with_an_error() -> None:
    client, stream, protocol = pair()
    seen: list[BaseException] = []

    async def handler(ws: WebSocket) -> None:
        try:
            async for _ in ws:
                pass
        except WebSocketClosed as exc:
            seen.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, handler, [])
        await client.send(CloseConnection(code=4001, reason="custom"))
        assert (await client.expect_close()).code == 4001
    [closed] = seen
    assert isinstance(closed, WebSocketClosed)
    assert (closed.code, closed.reason) == (4001, "custom")


async def test_the_server_closes_and_the_client_answers(autojump_clock: trio.abc.Clock) -> None:
    client, stream, protocol = pair()
    done: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        await ws.send("last")
        await ws.close(4000, "done")
        assert trio.current_time() == 0  # the client answered at once

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, handler, done)
        assert await client.next_message() == "last"
        close = await client.expect_close()
        assert (close.code, close.reason) == (4000, "done")
        await client.send(close.response())
    [ws] = done
    assert ws.close_code == 4000
    assert not aborted(ws)


async def test_the_close_timeout(autojump_clock: trio.abc.Clock) -> None:
    client, stream, protocol = pair()
    config = NO_PINGS.replace(ws_close_timeout=7.0)
    done: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        await ws.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, config, handler, done)
        assert (await client.expect_close()).code == 1000
        # The client never answers: the server gives up after ws_close_timeout.
    assert trio.current_time() == 7.0
    assert done[0].close_code == 1000


async def returns(ws: WebSocket) -> None:
    await trio.lowlevel.checkpoint()


async def test_returning_closes_with_1000_raising_with_1011() -> None:
    client, stream, protocol = pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, returns, [])
        close = await client.expect_close()
        assert close.code == 1000
        await client.send(close.response())

    async def fails(ws: WebSocket) -> None:
        raise KeyError("the handler's bug")

    client, stream, protocol = pair()
    raised: list[BaseException] = []

    async def serve_failing() -> None:
        try:
            await serve(stream, protocol, NO_PINGS, fails, [])
        except BaseException as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_failing)
        close = await client.expect_close()
        assert close.code == 1011
        await client.send(close.response())
    [exc] = raised
    assert isinstance(exc, KeyError)  # as raised, not in an exception group


async def test_shutdown_closes_with_1001_and_wakes_a_pending_receive() -> None:
    client, stream, protocol = pair()
    seen: list[int] = []
    done: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.receive()
        except WebSocketClosed as exc:
            seen.append(exc.code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, handler, done)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(done[0].shutdown)
        close = await client.expect_close()
        assert close.code == 1001
        await client.send(close.response())
    assert seen == [1001]
    assert done[0].close_code == 1001


async def test_a_peer_that_vanishes_is_1006() -> None:
    client, stream, protocol = pair()
    seen: list[int] = []
    done: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.receive()
        except WebSocketClosed as exc:
            seen.append(exc.code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, handler, done)
        await client.stream.aclose()
    assert seen == [1006]
    assert aborted(done[0])


# --- Bad input gets its close code ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x1, b"hello", mask=False), 1002),
        (frame(0x1, b"\xff\xfe"), 1007),
        (frame(0x2, b"x" * 101), 1009),
        (frame(0x2, b"x" * 60, fin=False) + frame(0x0, b"x" * 41), 1009),
    ],
)
async def test_bad_input_gets_its_close_code(data: bytes, code: int) -> None:
    _, protocol, _ = handshake(max_size=100)
    client_stream, stream = trio.testing.memory_stream_pair()
    seen: list[int] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.receive()
        except WebSocketClosed as exc:
            seen.append(exc.code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, handler, [])
        await client_stream.send_all(data)
        frames = parse_server_frames(bytes(await client_stream.receive_some()))
        assert frames[0][0] == 0x8
        assert frames[0][1][:2] == close_payload(code)
    assert seen == [code]


async def test_a_deflate_bomb_is_closed_with_1009() -> None:
    client, stream, protocol = pair(deflate=True, max_size=1024 * 1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, echo_until_closed, [])
        await client.send(BytesMessage(data=bytes(32 * 1024 * 1024)))
        assert (await client.expect_close()).code == 1009


# --- Deadlines ------------------------------------------------------------------------


async def test_a_peer_that_never_pongs_is_closed_at_interval_plus_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, stream, protocol = pair()
    client.answer_pings = False
    config = Config(ws_ping_interval=20.0, ws_ping_timeout=15.0)
    done: list[WebSocket] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, config, echo_until_closed, done)
        ping = await client.next_event()
        assert isinstance(ping, Ping)
        assert trio.current_time() == 20.0
        close = await client.expect_close()
        assert close.code == 1011
        assert trio.current_time() == 35.0
    assert done[0].close_code == 1011
    assert aborted(done[0])


async def test_a_peer_that_pongs_stays(autojump_clock: trio.abc.Clock) -> None:
    client, stream, protocol = pair()
    config = Config(ws_ping_interval=20.0, ws_ping_timeout=15.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, config, echo, [])
        with trio.move_on_after(500):
            await client.next_event()  # pings are answered inside
        await client.send(TextMessage(data="still here"))
        assert await client.next_message() == "still here"
        await client.send(CloseConnection(code=1000))
        assert (await client.expect_close()).code == 1000


async def test_a_pong_behind_an_untaken_message_is_not_a_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    client, stream, protocol = pair()
    config = Config(ws_ping_interval=20.0, ws_ping_timeout=15.0)

    async def slow(ws: WebSocket) -> None:
        await trio.sleep(100)  # the reader holds one message and reads nothing more
        assert await ws.receive() == "first"
        await ws.send("taken")
        async for _ in ws:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, config, slow, [])
        await client.send(TextMessage(data="first"))
        assert await client.next_message() == "taken"  # answering each ping on the way
        assert trio.current_time() == 100
        await client.send(CloseConnection(code=1000))
        assert (await client.expect_close()).code == 1000


async def test_a_peer_that_does_not_read_is_aborted_at_write_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    _, stream, protocol = pair(lockstep=True)
    config = NO_PINGS.replace(write_timeout=12.0)
    seen: list[tuple[float, int]] = []
    done: list[WebSocket] = []

    async def handler(ws: WebSocket) -> None:
        try:
            await ws.send(b"x" * 1000)
        except WebSocketClosed as exc:
            seen.append((trio.current_time(), exc.code))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, config, handler, done)
    assert seen == [(12.0, 1006)]
    assert aborted(done[0])


# --- Backpressure ---------------------------------------------------------------------


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes the server took from it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.taken = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.taken += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_reader_does_not_read_ahead_more_than_one_message() -> None:
    client, inner, protocol = pair(max_size=1024 * 1024)
    stream = CountingStream(inner)
    size = 200_000
    taken: list[int] = []
    resume = trio.Event()

    async def handler(ws: WebSocket) -> None:
        await resume.wait()
        assert await ws.receive() == b"0" * size
        await trio.testing.wait_all_tasks_blocked()
        taken.append(stream.taken)
        for i in range(1, 10):
            assert await ws.receive() == str(i).encode() * size

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, handler, [])
        for i in range(10):
            await client.send(BytesMessage(data=str(i).encode() * size))
        await trio.testing.wait_all_tasks_blocked()
        # One message held for the application, and at most one read past it.
        assert size <= stream.taken < size + 65536 + 100
        taken.append(stream.taken)
        resume.set()
        await trio.testing.wait_all_tasks_blocked()
        await client.send(CloseConnection(code=1000))
        await client.expect_close()
    # Taking one message let the reader read about one more.
    assert taken[0] + size - 65536 <= taken[1] < taken[0] + size + 65536 + 100


async def test_bytes_read_past_the_handshake_are_the_first_frames() -> None:
    conn, protocol, _ = handshake()
    client_stream, stream = trio.testing.memory_stream_pair()
    client = Client(client_stream, conn)
    # The client sent its first message right behind the upgrade request: the HTTP
    # side read it along with the head and hands it over with the stream.
    early = conn.send(TextMessage(data="early")) + conn.send(
        TextMessage(data="ea", message_finished=False)
    )
    late = conn.send(TextMessage(data="rlier"))

    async def serve_early(ws_stream: trio.abc.Stream) -> None:
        async with open_websocket(ws_stream, protocol, NO_PINGS, received=early) as ws:
            assert await ws.receive() == "early"
            assert await ws.receive() == "earlier"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_early, stream)
        await client_stream.send_all(late)
        close = await client.expect_close()
        assert close.code == 1000
        await client.send(close.response())


async def test_close_refuses_codes_that_may_not_be_sent() -> None:
    client, stream, protocol = pair()

    async def handler(ws: WebSocket) -> None:
        with pytest.raises(ValueError, match="1006"):
            await ws.close(1006)
        assert ws.close_code is None
        with pytest.raises(TypeError):
            await ws.send(1)  # type: ignore[arg-type]  # on purpose

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, stream, protocol, NO_PINGS, handler, [])
        close = await client.expect_close()
        assert close.code == 1000
        await client.send(close.response())
