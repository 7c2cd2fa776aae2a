"""Fault injectors that compose with :func:`open_connection` and :func:`stream_pair`.

Each one is a small coroutine acting as a misbehaving client; under
``trio.testing.MockClock(autojump_threshold=0)`` their sleeps take no real time.
"""

from __future__ import annotations

import trio

from ._streams import PipeStream

__all__ = [
    "receive_all",
    "receive_then_close",
    "reset",
    "send_then_close",
    "send_with_stall",
    "trickle",
]


async def trickle(
    stream: trio.abc.SendStream, data: bytes, *, size: int = 1, interval: float = 1.0
) -> None:
    """Send ``data`` ``size`` bytes at a time, sleeping ``interval`` seconds before each
    piece after the first (a slowloris client, at ``size=1``).

    Stops quietly if the server closes the connection meanwhile.
    """
    if size < 1:
        raise ValueError("size must be at least 1")
    try:
        for offset in range(0, len(data), size):
            if offset:
                await trio.sleep(interval)
            await stream.send_all(data[offset : offset + size])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def send_with_stall(
    stream: trio.abc.SendStream, data: bytes, *, after: int, duration: float
) -> None:
    """Send the first ``after`` bytes of ``data``, stall ``duration`` seconds, then send
    the rest (stops quietly if the server closes meanwhile)."""
    try:
        await stream.send_all(data[:after])
        await trio.sleep(duration)
        await stream.send_all(data[after:])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def send_then_close(stream: trio.abc.Stream, data: bytes) -> None:
    """Send ``data`` (for example half a request) and close the client end at once."""
    await stream.send_all(data)
    await stream.aclose()


async def receive_then_close(stream: trio.abc.Stream, nbytes: int) -> bytes:
    """Read the first ``nbytes`` of the answer, then close the client end: a client
    that goes away in the middle of a response.

    Returns:
        What was read (fewer bytes if the server closed first).
    """
    received = bytearray()
    try:
        while len(received) < nbytes:
            data = await stream.receive_some(nbytes - len(received))
            if not data:
                break
            received += data
    except trio.BrokenResourceError:
        pass
    await stream.aclose()
    return bytes(received)


async def reset(stream: PipeStream, data: bytes = b"") -> None:
    """Send ``data``, then reset the connection: the server's next send or receive
    raises ``trio.BrokenResourceError``, as after a TCP RST."""
    if data:
        await stream.send_all(data)
    stream.reset()
    await trio.lowlevel.checkpoint()


async def receive_all(stream: trio.abc.ReceiveStream, *, max_bytes: int = 2**26) -> bytes:
    """Read until the server closes its end (EOF or reset) and return every byte.

    Raises:
        ValueError: more than ``max_bytes`` arrived (a runaway response).
    """
    chunks = bytearray()
    while True:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not data:
            break
        chunks += data
        if len(chunks) > max_bytes:
            raise ValueError(f"more than {max_bytes} bytes received")
    return bytes(chunks)
