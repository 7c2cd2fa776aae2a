"""Run trioserve inside your own trio program, beside your own tasks.

The program starts the server with ``nursery.start`` (which returns once the port is
bound), keeps a background task of its own running, and shuts the server down
gracefully when a client asks for ``/quit``: ``await server.shutdown()`` stops
accepting, lets requests in flight finish, and returns.

Run it with ``python examples/embed.py`` (``--port N`` to choose the port, ``0`` for
any free one), then::

    curl http://127.0.0.1:8000/       # how many ticks the background task has made
    curl http://127.0.0.1:8000/quit   # shut down and exit
"""

from __future__ import annotations

import argparse
import functools

import trio

import trioserve


class App:
    """The application's state, shared by its handler and its own background task."""

    def __init__(self) -> None:
        self.ticks = 0
        self.quit = trio.Event()

    async def tick(self) -> None:
        """The application's own work: here, counting seconds."""
        while True:
            await trio.sleep(1)
            self.ticks += 1

    async def handler(self, request: trioserve.Request) -> trioserve.Response:
        """``/quit`` asks the program to shut down; anything else reports the ticks."""
        if request.path == "/quit":
            self.quit.set()
            return trioserve.Response(200, body="shutting down\n")
        return trioserve.Response(200, body=f"ticks so far: {self.ticks}\n")


async def main(port: int) -> None:
    app = App()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app.tick)
        server: trioserve.Server = await nursery.start(
            functools.partial(trioserve.serve, app.handler, port, host="127.0.0.1")
        )
        for url in server.urls:
            print(f"Serving on {url} (GET /quit to stop)", flush=True)
        await app.quit.wait()
        # Graceful: the /quit response is finished and sent before this returns.
        await server.shutdown()
        print("server stopped", flush=True)
        nursery.cancel_scope.cancel()  # stop the application's own task too


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    trio.run(main, parser.parse_args().port)
