"""A WebSocket chat room with the native API: ``python examples/websocket_chat.py``,
then connect two clients, for example ``python -m websockets ws://127.0.0.1:8000/chat``
in two terminals, and type. Every message goes to everyone in the room.

A plain ``GET /`` gets a line of text; any other path refuses the upgrade with 404,
as an ordinary response. Each member has a bounded queue: a member that does not
read fast enough is closed with 1008 rather than buffered without bound, and the
WebSocket's own write deadline (``Config.write_timeout``) and keepalive pings find
members that stopped reading or vanished. Ctrl+C closes every WebSocket with 1001.
"""

from __future__ import annotations

import argparse

import trio

import trioserve

#: Messages a member may fall behind by before it is dropped from the room.
BACKLOG = 64


class Room:
    """Everyone connected, each with a bounded queue of messages to send."""

    def __init__(self) -> None:
        self.members: set[trio.MemorySendChannel[str]] = set()

    def broadcast(self, message: str) -> None:
        for queue in list(self.members):
            try:
                queue.send_nowait(message)
            except trio.WouldBlock:  # a member too slow to keep up: dropped
                self.members.discard(queue)
                queue.close()


room = Room()


async def handler(request: trioserve.Request) -> trioserve.Response | None:
    if not request.is_websocket:
        return trioserve.Response(200, body="connect a WebSocket to /chat\n")
    if request.path != "/chat":
        return trioserve.Response(404, body="no such room\n")
    ws = await request.accept_websocket()
    send, receive = trio.open_memory_channel[str](BACKLOG)
    room.members.add(send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_forward, ws, receive)
        try:
            async for message in ws:  # ends when the client closes
                room.broadcast(message if isinstance(message, str) else message.hex())
        except trioserve.WebSocketClosed:
            pass  # dropped by the room (1008), or the client broke off
        finally:
            room.members.discard(send)
            send.close()  # _forward ends once it has sent what is queued
    return None


async def _forward(ws: trioserve.WebSocket, queue: trio.MemoryReceiveChannel[str]) -> None:
    """Send the member what the room says; close it with 1008 once it is dropped.
    (Not cancelled from outside: a send cut off mid-frame would abort the WebSocket.)"""
    async for message in queue:
        try:
            await ws.send(message)
        except trioserve.WebSocketClosed:
            return
    await ws.close(1008, "too slow")  # returns at once if it is closed already


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    args = parser.parse_args()
    return trioserve.run(handler, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
