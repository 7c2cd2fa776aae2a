"""The two costs a trio + h11 server cannot do without.

* ``h11-cost``: h11 alone, in memory: parse one keep-alive ``GET`` and
  serialize one ``Hello, world!`` response, with no sockets, on each build of
  h11 trioserve can run (``h11``, pure Python; ``h11-mypyc``, the same source
  compiled, when installed); prints the cost per request in microseconds of
  each, as JSON: ``{"h11": µs, "h11-mypyc": µs}``.
* ``serve-raw``: a raw trio socket loop that answers every request with a
  prebuilt response without parsing it; its throughput under wrk gives trio's
  own per-request cost.

Together, ``1e6 / (h11_us + trio_us)`` is "the trio + h11 limit" in req/s, one
per build: the limit of a server running that engine.

Usage: ``python bench/limits.py h11-cost [--http h11 h11-mypyc]`` or
``python bench/limits.py serve-raw --port 8000``
"""

import argparse
import functools
import importlib
import json
import sys
import time
from types import ModuleType
from typing import Any

import trio

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
RAW_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\nHello, world!"
)
TERMINATOR = b"\r\n\r\n"
HOST = "127.0.0.1"
RECEIVE_SIZE = 65536
#: The builds of h11, as ``--http`` names them, and the module each one imports.
BUILDS = {"h11": "h11", "h11-mypyc": "h11_mypyc"}


def h11_request_cycle(h11: ModuleType, connection: Any) -> None:
    """Parse REQUEST and serialize a response on a keep-alive connection of the
    build ``h11`` (``connection`` is that build's ``Connection``)."""
    connection.receive_data(REQUEST)
    while not isinstance(connection.next_event(), h11.EndOfMessage):
        pass
    headers = [("content-type", "text/plain"), ("content-length", "13")]
    connection.send(h11.Response(status_code=200, headers=headers))
    connection.send(h11.Data(data=b"Hello, world!"))
    connection.send(h11.EndOfMessage())
    connection.start_next_cycle()


def h11_cost_us(build: str, requests: int) -> float:
    """Microseconds the build of h11 named ``build`` spends per request cycle,
    averaged over ``requests``."""
    h11 = importlib.import_module(BUILDS[build])
    connection = h11.Connection(h11.SERVER)
    for _ in range(min(requests, 1000)):
        h11_request_cycle(h11, connection)
    start = time.perf_counter()
    for _ in range(requests):
        h11_request_cycle(h11, connection)
    return (time.perf_counter() - start) / requests * 1e6


def h11_costs_us(builds: list[str], requests: int, *, skip_missing: bool) -> dict[str, float]:
    """Each build's cost, in turn; with ``skip_missing``, a build that is not
    installed is left out (with a note on stderr) instead of failing."""
    costs = {}
    for build in builds:
        try:
            costs[build] = h11_cost_us(build, requests)
        except ImportError as error:
            if not skip_missing:
                raise
            print(f"{build} is not installed, not measured: {error}", file=sys.stderr)
    return costs


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
    cost.add_argument(
        "--http",
        nargs="+",
        choices=list(BUILDS),
        help="builds to measure (default: both, leaving out one not installed)",
    )
    raw = commands.add_parser("serve-raw", help="serve the raw trio socket loop")
    raw.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "h11-cost":
        builds = args.http or list(BUILDS)
        costs = h11_costs_us(builds, args.requests, skip_missing=args.http is None)
        print(json.dumps(costs))
    else:
        serve = functools.partial(trio.serve_tcp, raw_handle, args.port, host=HOST)
        trio.run(serve)


if __name__ == "__main__":
    main()
