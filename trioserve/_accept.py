"""Accepting: from listeners into the connection nursery, under ``max_connections``.

Rules for this module:
1. A listener is a value: anything that yields a ``trio.abc.Stream`` (TCP, Unix
   sockets, inherited sockets; TLS is the server's wrapping of each accepted stream,
   or a ``trio.SSLListener`` given by hand). Socket listeners get the fast path that
   drains the kernel backlog on each readiness (bounded per pass) instead of taking
   one connection per scheduler pass as ``trio.serve_tcp`` does: a burst of 1000
   connections otherwise waits seconds for the last accept.
2. ``max_connections`` is backpressure: at the cap nothing is accepted (the kernel
   backlog holds new clients) until a connection closes, or the longest-idle one is
   closed for a client known to wait.
3. Out of file descriptors or memory, accepting backs off and retries (as trio's
   ``serve_listeners``); other accept errors propagate.
"""

from __future__ import annotations

import errno
import socket as stdlib_socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from ._config import Config
from ._listeners import UnixSocketListener
from ._logging import error_logger
from ._tracker import ConnectionTracker

if TYPE_CHECKING:
    from ._connection import HTTPConnection

__all__ = ["ACCEPT_BACKOFF", "ACCEPT_BATCH", "Acceptor"]

#: Connections taken from the backlog per readiness before yielding to the scheduler.
#: Each scheduler pass serves every connection already accepted, so a burst taken 64
#: at a time waited 16 passes for its last accept: wrk with 1000 connections measured
#: p99 594-774 ms at 64 and about 405 ms at 1024 (a pass of accepting costs ~20 ms).
ACCEPT_BATCH: Final = 1024
#: Out of file descriptors or memory: wait this long before accepting again (as trio).
ACCEPT_BACKOFF: Final = 0.1
_RESOURCE_ERRORS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class Acceptor:
    """Accepts connections for one server and starts a task for each.

    Args:
        config: for ``max_connections``.
        tracker: the server's view of its connections (open, idle, evictable).
        connections: the nursery every connection task runs in.
        connection: makes the connection for an accepted stream (counted open at once),
            whose ``serve`` serves it until it closes.
    """

    __slots__ = ("_config", "_connection", "_connections", "_tracker")

    def __init__(
        self,
        config: Config,
        tracker: ConnectionTracker,
        connections: trio.Nursery,
        connection: Callable[[trio.abc.Stream], HTTPConnection],
    ) -> None:
        self._config = config
        self._tracker = tracker
        self._connections = connections
        self._connection = connection

    async def serve_listener(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        """Accept from ``listener`` until cancelled, each connection into the nursery."""
        if isinstance(listener, (trio.SocketListener, UnixSocketListener)):
            await self._accept_from_socket(listener.socket)
            return
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                await _accept_failed(exc)
                continue
            # A Listener cannot say whether a client waits without accepting it, so
            # room is made after the accept: evicting first would close an idle
            # connection for a client that may never come.
            try:
                await self._wait_for_room()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._start_connection(stream)

    async def _accept_from_socket(self, sock: trio.socket.SocketType) -> None:
        """Drain the backlog on each readiness, up to ACCEPT_BATCH per pass."""
        # A duplicate of the listening descriptor, so accept() can run synchronously in
        # a loop; it shares the kernel socket (and its non-blocking flag).
        raw = stdlib_socket.socket(fileno=sock.dup().detach())
        try:
            limit = self._config.max_connections
            while True:
                await trio.lowlevel.wait_readable(raw)
                # A client waits in the backlog: make room for it at the cap (evict
                # the longest-idle connection, or wait until one is idle or closes).
                # Only a known waiting client evicts anyone.
                await self._wait_for_room()
                for _ in range(ACCEPT_BATCH):
                    try:
                        accepted, _ = raw.accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        await _accept_failed(exc)
                        break
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
                    self._start_connection(stream)
                    if self._open_count() >= limit:
                        break  # more after the next readiness, and room
                await trio.lowlevel.checkpoint()
        finally:
            raw.close()

    def _start_connection(self, stream: trio.abc.Stream) -> None:
        # The task is the connection's serve(), no wrapper: a frame less for as long
        # as the connection lives. Its helper tasks run in the same nursery (_tasks).
        connections = self._connections
        connections.start_soon(self._connection(stream).serve, connections)

    def _open_count(self) -> int:
        return self._tracker.counters.connections_open

    async def _wait_for_room(self) -> None:
        """Return once a new connection fits under ``max_connections``.

        At the cap, closes the longest-idle connection (one per new connection: an
        eviction still closing counts as room), or waits until one is idle or
        closes; meanwhile the kernel backlog holds new clients (backpressure).
        """
        tracker = self._tracker
        limit = self._config.max_connections
        while self._open_count() >= limit:
            if self._open_count() - tracker.evictions_pending >= limit:
                tracker.evict_oldest_idle()
            await tracker.wait_changed()


async def _accept_failed(exc: OSError) -> None:
    if exc.errno in _RESOURCE_ERRORS:
        error_logger.error(
            "accept failed (%s); sleeping %.1f s",
            errno.errorcode[exc.errno],
            ACCEPT_BACKOFF,
        )
        await trio.sleep(ACCEPT_BACKOFF)
    elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
        raise exc
