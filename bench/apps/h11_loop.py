"""The plain trio + h11 loop: the least a trio + h11 server has to do.

One task per connection, one ``h11.Connection``, no routing, no headers beyond
what h11 adds. ``GET`` answers ``Hello, world!``; ``POST`` echoes the body.
It is the baseline that shows what a full server costs on top of trio + h11.

Usage: ``python bench/apps/h11_loop.py --port 8000``
"""

import argparse
import functools

import h11
import trio

HELLO = b"Hello, world!"
RECEIVE_SIZE = 65536


async def handle(stream: trio.SocketStream) -> None:
    connection = h11.Connection(h11.SERVER)
    try:
        await _serve_connection(stream, connection)
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def _serve_connection(stream: trio.SocketStream, connection: h11.Connection) -> None:
    body: list[bytes] = []
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(RECEIVE_SIZE))
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            await _respond(stream, connection, b"".join(body) or HELLO)
            if connection.our_state is not h11.DONE:
                return
            body.clear()
            connection.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return


async def _respond(stream: trio.SocketStream, connection: h11.Connection, body: bytes) -> None:
    headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
    events = [
        h11.Response(status_code=200, headers=headers),
        h11.Data(data=body),
        h11.EndOfMessage(),
    ]
    await stream.send_all(b"".join(connection.send(event) or b"" for event in events))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(functools.partial(trio.serve_tcp, handle, args.port, host="127.0.0.1"))


if __name__ == "__main__":
    main()
