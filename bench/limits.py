"""The two limits a trio + h11 server cannot beat.

* ``h11-cost``: h11 alone, in memory: parse one keep-alive ``GET`` and
  serialize one ``Hello, world!`` response, with no sockets; prints the cost
  per request in microseconds as JSON.
* ``serve-raw``: a raw trio socket loop that answers every request with a
  prebuilt response without parsing it; its throughput under wrk gives trio's
  own per-request cost.

Together, ``1e6 / (h11_us + trio_us)`` is "the trio + h11 limit" in req/s.

Usage: ``python bench/limits.py h11-cost`` or
``python bench/limits.py serve-raw --port 8000``
"""

import argparse
import functools
import json
import time

import h11
import trio

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
RAW_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!"
)
TERMINATOR = b"\r\n\r\n"
HOST = "127.0.0.1"
RECEIVE_SIZE = 65536


def h11_request_cycle(connection: h11.Connection) -> None:
    """Parse REQUEST and serialize a response on a keep-alive connection."""
    connection.receive_data(REQUEST)
    while not isinstance(connection.next_event(), h11.EndOfMessage):
        pass
    headers = [("content-type", "text/plain"), ("content-length", "13")]
    connection.send(h11.Response(status_code=200, headers=headers))
    connection.send(h11.Data(data=b"Hello, world!"))
    connection.send(h11.EndOfMessage())
    connection.start_next_cycle()


def h11_cost_us(requests: int) -> float:
    """Microseconds h11 spends per request cycle, averaged over ``requests``."""
    connection = h11.Connection(h11.SERVER)
    for _ in range(min(requests, 1000)):
        h11_request_cycle(connection)
    start = time.perf_counter()
    for _ in range(requests):
        h11_request_cycle(connection)
    return (time.perf_counter() - start) / requests * 1e6


async def raw_handle(stream: trio.SocketStream) -> None:
    """Answer each request head (counted by its blank line) with RAW_RESPONSE."""
    tail = b""
    try:
        while data := await stream.receive_some(RECEIVE_SIZE):
            buffer = tail + data
            count = buffer.count(TERMINATOR)
            if count:
                buffer = buffer[buffer.rfind(TERMINATOR) + len(TERMINATOR) :]
                await stream.send_all(RAW_RESPONSE * count)
            tail = buffer[-(len(TERMINATOR) - 1) :]
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cost = commands.add_parser("h11-cost", help="h11's in-memory cost per request")
    cost.add_argument("--requests", type=int, default=20000)
    raw = commands.add_parser("serve-raw", help="serve the raw trio socket loop")
    raw.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "h11-cost":
        print(json.dumps({"h11_us": h11_cost_us(args.requests)}))
    else:
        serve = functools.partial(trio.serve_tcp, raw_handle, args.port, host=HOST)
        trio.run(serve)


if __name__ == "__main__":
    main()
