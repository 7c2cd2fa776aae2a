"""trioserve in asyncio programs: the server runs as the trio guest of the running
asyncio loop (``trio.lowlevel.start_guest_run``), with every deadline, limit and the
graceful shutdown exactly as under trio; ASGI applications served from it run as
asyncio tasks on that loop, and native handlers reach asyncio with
:func:`run_asyncio`. See docs/asyncio.md.

Example::

    import asyncio, trioserve.asyncio

    async def main():
        server = await trioserve.asyncio.start_server(handler, 8000)
        print(server.urls)
        ...                                # the program's own asyncio tasks
        await server.shutdown()            # graceful: returns when every connection is done

    asyncio.run(main())

One trio run per thread: a loop serves one guest run, so serve several listeners
from one ``start_server`` (``uds=``, ``listeners=``) rather than starting two.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Sequence

import trio

from ._config import Config
from ._errors import single_leaf
from ._guest import run_as_guest, run_asyncio
from ._handler import Handler
from ._server import Lifespan, Server
from ._server import serve as trio_serve
from ._stats import ServerStatistics

__all__ = ["AsyncioServer", "run_asyncio", "serve", "start_server"]


class AsyncioServer:
    """A running trioserve server, seen from asyncio (see :func:`start_server`).

    ``ports`` and ``urls`` are the listening ones; :meth:`statistics` is
    ``Server.statistics()``. Cancelling the task that awaits :meth:`wait_closed`
    does not stop the server; :meth:`shutdown` does, and cancelling
    :func:`serve` is the hard stop.
    """

    def __init__(
        self, server: Server, token: trio.lowlevel.TrioToken, run: asyncio.Future[None]
    ) -> None:
        self._server = server
        self._token = token
        self._run = run

    @property
    def ports(self) -> list[int]:
        return self._server.ports

    @property
    def urls(self) -> list[str]:
        return self._server.urls

    def statistics(self) -> ServerStatistics:
        return self._server.statistics()

    async def shutdown(self, *, force: bool = False, restart: bool = False) -> None:
        """``Server.shutdown`` from asyncio: stop accepting, let the requests in flight
        finish (bounded by ``Config.shutdown_timeout``), and return once the server
        has finished. ``force`` and ``restart`` as there."""
        if not self._run.done():
            begin = functools.partial(self._server._begin_shutdown, force=force, restart=restart)
            self._token.run_sync_soon(begin)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Return once the server has finished (raise what it raised)."""
        await asyncio.shield(self._run)

    def cancel(self) -> None:
        """The hard stop: every connection is closed at once."""
        self._run.cancel()


async def start_server(
    handler: Handler,
    port: int | None = None,
    *,
    host: str | None = None,
    config: Config | None = None,
    ssl_context: ssl.SSLContext | None = None,
    uds: str | None = None,
    uds_permissions: int | None = None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    lifespan: Lifespan | None = None,
) -> AsyncioServer:
    """Start serving ``handler`` on the running asyncio loop; return once listening.

    The arguments are :func:`trioserve.serve`'s. An ASGI handler
    (``trioserve.asgi.ASGIHandler``, with ``lifespan=handler.lifespan``) calls its
    application as asyncio tasks on this loop.

    Raises:
        OSError: the port cannot be bound.
        StartupError: ``lifespan`` failed on entry.
        RuntimeError: a trio run (this function's, or another) already runs in this
            thread.
    """
    loop = asyncio.get_running_loop()
    started: asyncio.Future[tuple[Server, trio.lowlevel.TrioToken]] = loop.create_future()

    async def main() -> None:
        serve = functools.partial(
            trio_serve,
            handler,
            port,
            host=host,
            config=config,
            ssl_context=ssl_context,
            uds=uds,
            uds_permissions=uds_permissions,
            listeners=listeners,
            lifespan=lifespan,
        )
        try:
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(serve)
                started.set_result((server, trio.lowlevel.current_trio_token()))
        except BaseException as exc:
            raise single_leaf(exc) from None  # as itself: OSError, StartupError

    run = asyncio.ensure_future(run_as_guest(main))

    def ended(run: asyncio.Future[None]) -> None:
        if started.done():
            return
        if run.cancelled():
            started.cancel()
        else:  # a port in use, a failed startup
            started.set_exception(run.exception() or RuntimeError("the server ended early"))

    run.add_done_callback(ended)
    try:
        server, token = await started
    except asyncio.CancelledError:
        run.cancel()
        raise
    return AsyncioServer(server, token, run)


async def serve(
    handler: Handler,
    port: int | None = None,
    *,
    host: str | None = None,
    config: Config | None = None,
    ssl_context: ssl.SSLContext | None = None,
    uds: str | None = None,
    uds_permissions: int | None = None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    lifespan: Lifespan | None = None,
) -> None:
    """Serve ``handler`` on the running asyncio loop until shut down (the arguments
    are :func:`start_server`'s). Cancelling the awaiting task is the hard stop: every
    connection is closed at once, then ``CancelledError`` propagates."""
    server = await start_server(
        handler,
        port,
        host=host,
        config=config,
        ssl_context=ssl_context,
        uds=uds,
        uds_permissions=uds_permissions,
        listeners=listeners,
        lifespan=lifespan,
    )
    try:
        await server.wait_closed()
    except asyncio.CancelledError:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server._run
        raise
