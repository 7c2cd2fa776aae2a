"""A server program for the signal tests: ``python lifecycle_app.py PORT [CONFIG=VALUE ...]``.

Serves ``/`` (hello), ``/slow`` (answers after 2 s), ``/forever`` (never answers) and
``/big`` (streams 64 MiB), with signals handled by ``trioserve.run``. Each handler
prints ``handling PATH`` to stderr as it starts, so a test knows the request is in
flight before it sends a signal.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import trio

import trioserve


async def handler(request: trioserve.Request) -> trioserve.Response:
    print(f"handling {request.path}", file=sys.stderr, flush=True)
    if request.path == "/slow":
        await trio.sleep(2)
        return trioserve.Response(200, body=b"slow done")
    if request.path == "/forever":
        await trio.sleep_forever()
    if request.path == "/big":
        return trioserve.Response(200, body=_big())
    return trioserve.Response(200, body=b"hello")


async def _big() -> AsyncIterator[bytes]:
    chunk = b"x" * 65536
    for _ in range(1024):
        yield chunk


def main() -> int:
    port = int(sys.argv[1])
    fields = dict(arg.split("=", 1) for arg in sys.argv[2:])
    config = trioserve.Config(**{name: float(value) for name, value in fields.items()})
    return trioserve.run(handler, port, host="127.0.0.1", config=config)


if __name__ == "__main__":
    raise SystemExit(main())
