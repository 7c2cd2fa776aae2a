"""trioserve's native handler for the benchmark: ``Hello, world!``, or an echo.

A request with a body is echoed; one without (every ``GET``) gets
``Hello, world!``. Logging is deliberately left unconfigured so that trioserve
writes no access log.

Usage: ``python bench/apps/native_app.py --port 8000``
"""

from __future__ import annotations

import argparse
import functools

import trio

import trioserve

HELLO = b"Hello, world!"


async def handler(request: trioserve.Request) -> trioserve.Response:
    body = await request.body()
    if body:
        headers = [("content-type", "application/octet-stream")]
        return trioserve.Response(200, headers=headers, body=body)
    return trioserve.Response(200, headers=[("content-type", "text/plain")], body=HELLO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    trio.run(functools.partial(trioserve.serve, handler, args.port, host="127.0.0.1"))


if __name__ == "__main__":
    main()
