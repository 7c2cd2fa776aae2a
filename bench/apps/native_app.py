"""trioserve's native handler for the benchmark.

``GET`` (any path) answers ``Hello, world!``; ``POST`` (any path) echoes the
request body; a WebSocket (any path) is accepted and echoes every message, like
bench/apps/asgi_app.py. Logging is deliberately left unconfigured so that
trioserve writes no access log. WebSocket compression is off and keepalive pings
are never sent, as for the other servers in the benchmark.

Usage: ``python bench/apps/native_app.py --port 8000 [--keep-alive 120] [--http h11]``
"""

import argparse
import functools
import math

import trio

import trioserve

HELLO = b"Hello, world!"
TEXT_HEADERS = [("content-type", "text/plain")]
ECHO_HEADERS = [("content-type", "application/octet-stream")]


async def handler(request: trioserve.Request) -> trioserve.Response | None:
    if request.is_websocket:
        ws = await request.accept_websocket()
        async for message in ws:
            await ws.send(message)
        return None
    if request.method == "POST":
        return trioserve.Response(200, headers=ECHO_HEADERS, body=await request.body())
    return trioserve.Response(200, headers=TEXT_HEADERS, body=HELLO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keep-alive", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--http",
        choices=("auto", "h11", "h11-mypyc"),
        default="auto",
        help="the HTTP engine, Config(http=...) (default: auto)",
    )
    args = parser.parse_args()
    config = trioserve.Config(
        http=args.http,
        keep_alive_timeout=args.keep_alive,
        ws_per_message_deflate=False,
        ws_ping_interval=math.inf,
    )
    serve = functools.partial(trioserve.serve, handler, args.port, host="127.0.0.1", config=config)
    trio.run(serve)


if __name__ == "__main__":
    main()
