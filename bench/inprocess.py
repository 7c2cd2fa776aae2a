"""trioserve's own cost per request, in process: no sockets, no client, no wrk.

One keep-alive connection is served from a scripted stream that hands the server
one ``GET /`` per read (the bytes wrk sends) and throws away what it writes, so
what is timed is the server's work alone: the engine, the adapter, the app. Each
door serves the apps of the socket benchmark (bench/apps): ``native``
(native_app.handler), ``asgi`` (asgi_app.app through ``ASGIHandler``, hosted by
its lifespan as ``python -m trioserve`` hosts it), and ``h11-loop`` (the plain
trio + h11 loop of h11_loop.py, the least a trio + h11 server does).

It prints microseconds of CPU time per request (the thread's, so that other
processes on a shared machine do not count; best of the repetitions, as noise only
ever slows a run down) and the ratios between doors. It never asserts a speed; it
fails only if a door does not answer every request with a 200.

Usage::

    python bench/inprocess.py                       # 5 repetitions of 5,000 requests
    python bench/inprocess.py --h11 mypyc           # h11-mypyc's compiled h11, every door
    python bench/inprocess.py --profile asgi        # cProfile one door, top functions

The ratios are larger than the socket benchmark's: there, every door also pays
the kernel's loopback and trio's socket I/O per request, which this leaves out.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import importlib
import pstats
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
STATUS_LINE = b"HTTP/1.1 200 "
DOORS = ("native", "asgi", "h11-loop")
ADDRESS = ("127.0.0.1", 8000)


def _import_modules(h11_build: str) -> None:
    """Put this checkout's trioserve and bench/apps first on the path; with
    ``mypyc``, every ``import h11`` gets h11-mypyc's build (same API)."""
    sys.path[:0] = [str(HERE.parent), str(HERE / "apps")]
    if h11_build == "mypyc":
        sys.modules["h11"] = importlib.import_module("h11_mypyc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="per repetition and door")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument(
        "--connections", type=int, default=1, help="served at once, sharing the requests"
    )
    parser.add_argument("--doors", nargs="+", choices=DOORS, default=list(DOORS))
    parser.add_argument("--h11", choices=("h11", "mypyc"), default="h11", dest="h11_build")
    parser.add_argument("--profile", choices=DOORS, help="profile this door instead")
    parser.add_argument("--top", type=int, default=30, help="functions listed by --profile")
    args = parser.parse_args()
    _import_modules(args.h11_build)
    import trioserve

    if args.profile:
        profile = cProfile.Profile()
        trio.run(_time_door, args.profile, args.requests, args.connections, profile)
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(args.top)
        return
    best: dict[str, float] = {}
    for _ in range(args.repetitions):
        for door in args.doors:  # interleaved: a noisy moment hits every door alike
            elapsed = trio.run(_time_door, door, args.requests, args.connections, None)
            per_request = elapsed / args.requests / 1000
            best[door] = min(best.get(door, per_request), per_request)
    h11 = sys.modules["h11"]
    print(
        f"trioserve {trioserve.__version__} ({Path(trioserve.__file__).parent}), "
        f"{h11.__name__} {h11.__version__}, {args.requests} requests on "
        f"{args.connections} connection(s) x {args.repetitions} repetitions, best per door"
    )
    for door, micros in best.items():
        print(f"  {door:<9} {micros:8.2f} us/request of CPU  {1e6 / micros:9,.0f} req/s")
    names = list(best)
    for i, door in enumerate(names):
        for other in names[i + 1 :]:
            print(f"  {door} / {other}: {best[door] / best[other]:.2f}x the time")


async def _time_door(
    door: str, requests: int, connections: int, profile: cProfile.Profile | None
) -> int:
    """Serve ``requests`` through ``door`` on ``connections`` connections at once;
    nanoseconds of this thread's CPU time taken."""
    streams = [ScriptedStream(requests // connections) for _ in range(connections)]
    async with _open_door(door) as serve:
        if profile is not None:
            profile.enable()
        started = time.thread_time_ns()
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(serve, stream)
        elapsed = time.thread_time_ns() - started
        if profile is not None:
            profile.disable()
    answered = sum(stream.responses for stream in streams)
    if answered != requests // connections * connections:
        raise SystemExit(f"{door}: {answered} responses with 200 to {requests} requests")
    return elapsed


@asynccontextmanager
async def _open_door(door: str) -> AsyncIterator[Callable[[ScriptedStream], Awaitable[None]]]:
    """What serves one connection through ``door`` (hosted, for ASGI, by its lifespan)."""
    import h11

    import trioserve

    if door == "h11-loop":
        import h11_loop

        async def plain_loop(stream: ScriptedStream) -> None:
            await h11_loop._serve_connection(stream, h11.Connection(h11.SERVER))  # type: ignore[arg-type]  # any Stream does
            await stream.aclose()

        yield plain_loop
        return
    # The doors run on the build of h11 that --h11 chose (trioserve's own default,
    # auto, would take h11-mypyc whenever it is installed).
    config = trioserve.Config(http="h11-mypyc" if h11.__name__ == "h11_mypyc" else "h11")
    if door == "native":
        import native_app

        server = trioserve.Server(native_app.handler, config=config)
        yield functools.partial(server.serve_connection, client=ADDRESS, server=ADDRESS)
        return
    import asgi_app

    from trioserve.asgi import ASGIHandler

    handler = ASGIHandler(asgi_app.app)
    server = trioserve.Server(handler, config=config)
    async with handler.lifespan():
        yield functools.partial(server.serve_connection, client=ADDRESS, server=ADDRESS)


class ScriptedStream(trio.abc.HalfCloseableStream):
    """The server's end of a connection whose client sends ``requests`` GETs, one per
    read (as a client waiting for each response does), then EOF; what the server
    writes is counted (its 200 status lines) and thrown away. Every call is a
    checkpoint, as a socket's is."""

    def __init__(self, requests: int) -> None:
        self.left = requests
        self.responses = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.left <= 0:
            return b""
        self.left -= 1
        return REQUEST

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.responses += bytes(data).count(STATUS_LINE)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


if __name__ == "__main__":
    main()
