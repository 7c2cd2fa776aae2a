"""A native app for the worker-process tests: ``tests.programs.workers_app:app``.

Every answer's body is the pid of the worker that served it, so a test sees which
process answered. ``/slow`` answers after 1 s and ``/sleep30`` after 30 s (both
asynchronously: the worker goes on serving); ``/block`` blocks the worker's event
loop for 5 s with ``time.sleep`` (no heartbeat, no accept); ``/hold`` blocks it for
20 ms, so that a worker busy with one connection leaves the next ones to its
siblings. Each handler but ``/`` and ``/hold`` prints ``handling PATH in PID`` to
stderr as it starts, so a test knows the request is inside a worker. A WebSocket
request (any path) gets an echo, and prints ``websocket in PID`` once accepted.
"""

from __future__ import annotations

import os
import sys
import time

import trio

import trioserve

PID = str(os.getpid()).encode()
SLEEPS = {"/slow": 1.0, "/sleep30": 30.0}


async def app(request: trioserve.Request) -> trioserve.Response | None:
    path = request.path
    if request.is_websocket:  # an echo, until the client or the server closes
        ws = await request.accept_websocket()
        print(f"websocket in {os.getpid()}", file=sys.stderr, flush=True)
        async for message in ws:
            await ws.send(message)
        return None
    if path == "/hold":
        time.sleep(0.02)  # noqa: ASYNC251  # on purpose: blocks this worker
    elif path != "/":
        print(f"handling {path} in {os.getpid()}", file=sys.stderr, flush=True)
        if path == "/block":
            time.sleep(5)  # noqa: ASYNC251  # on purpose: the heartbeat test
        elif path in SLEEPS:
            await trio.sleep(SLEEPS[path])
        else:
            return trioserve.Response(404)
    return trioserve.Response(200, headers=[("content-type", "text/plain")], body=PID)
