"""The server's view of its connections: who is idle, how many are open, shutdown.

Rules for this module:
1. Connection tasks report here and are told nothing else: a connection that waits
   for a request registers the cancel scope of that wait; the tracker cancels it to
   close the connection (eviction at ``max_connections``, or graceful shutdown).
2. Nothing here polls: shutdown and room for a new connection are events.
"""

from __future__ import annotations

import trio

from ._stats import Counters

__all__ = ["ConnectionTracker"]


class ConnectionTracker:
    """Shared by a server and its connection tasks."""

    __slots__ = (
        "_changed",
        "_evicted",
        "_idle",
        "counters",
        "evictions_pending",
        "shutdown_event",
    )

    def __init__(self) -> None:
        self.counters = Counters()
        #: Set once graceful shutdown has begun.
        self.shutdown_event = trio.Event()
        # Scopes of connections waiting for a request, oldest wait first (dicts keep
        # insertion order): the first one is the longest idle.
        self._idle: dict[trio.CancelScope, None] = {}
        # Idle scopes cancelled to make room, until their connection sees it.
        self._evicted: set[trio.CancelScope] = set()
        #: Connections evicted that have not closed yet: the accept loop counts them
        #: as gone, so that one new connection evicts one idle connection, not more.
        self.evictions_pending = 0
        # Woken when a connection closes or becomes idle (room may have appeared).
        self._changed = trio.lowlevel.ParkingLot()

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_event.is_set()

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def connection_opened(self) -> None:
        self.counters.connections_open += 1
        self.counters.connections_total += 1

    def connection_closed(self, *, evicted: bool = False) -> None:
        """Report a connection closed; ``evicted``: because :meth:`leave_idle` said so."""
        self.counters.connections_open -= 1
        if evicted:
            self.evictions_pending -= 1
        if self._changed:
            self._changed.unpark_all()

    def enter_idle(self, scope: trio.CancelScope) -> None:
        """Register the scope of a wait for a request; cancelled to close the connection."""
        if self.shutdown_event.is_set():
            scope.cancel()
        self._idle[scope] = None
        if self._changed:
            self._changed.unpark_all()

    def leave_idle(self, scope: trio.CancelScope) -> bool:
        """Unregister a wait. True if it was evicted: the connection must close now,
        even if a request's first bytes arrived at the same moment."""
        del self._idle[scope]
        if scope in self._evicted:
            self._evicted.remove(scope)
            return True
        return False

    def evict_oldest_idle(self) -> bool:
        """Close the longest-idle connection; False if none is idle."""
        for scope in self._idle:
            if not scope.cancel_called:
                scope.cancel()
                self._evicted.add(scope)
                self.evictions_pending += 1
                self.counters.connections_evicted += 1
                return True
        return False

    def eviction_declined(self) -> None:
        """An evicted connection serves a request that came as it was closed: it
        closes after that one, and is no longer counted as room on its way."""
        self.evictions_pending -= 1
        if self._changed:
            self._changed.unpark_all()

    async def wait_changed(self) -> None:
        """Wait until a connection closes or becomes idle."""
        await self._changed.park()

    def begin_shutdown(self) -> None:
        """Start graceful shutdown: wake every idle connection at once."""
        self.shutdown_event.set()
        for scope in self._idle:
            scope.cancel()
