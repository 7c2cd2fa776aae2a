"""The server's view of its connections: who is idle, how many are open, shutdown.

Rules for this module:
1. Connection tasks report here and are told nothing else: a connection that waits
   for a request registers the cancel scope of that wait; the tracker cancels it to
   close the connection (eviction at ``max_connections``, or graceful shutdown).
2. Nothing here polls: shutdown and room for a new connection are events.
3. Graceful shutdown closes kept-alive connections at once, but gives a new one
   (accepted, its first request not yet read) :data:`NEW_CONNECTION_GRACE` to send
   it: its client did nothing wrong, and a close now would reset a request that may
   already be on its way (a rolling restart must not drop accepted connections).
"""

from __future__ import annotations

from typing import Final

import trio

from ._stats import Counters

__all__ = ["NEW_CONNECTION_GRACE", "ConnectionTracker"]

#: On graceful shutdown, seconds a new connection still gets to send its first request
#: (then served, with ``Connection: close``). Go's http.Server.Shutdown gives new
#: connections 5 s; a client sends its request at once after connecting, so 1 s.
NEW_CONNECTION_GRACE: Final = 1.0


class ConnectionTracker:
    """Shared by a server and its connection tasks."""

    __slots__ = (
        "_changed",
        "_evicted",
        "_idle",
        "counters",
        "evictions_pending",
        "going_away_code",
        "shutdown_event",
        "websocket_warned",
    )

    def __init__(self) -> None:
        self.counters = Counters()
        #: Set once graceful shutdown has begun.
        self.shutdown_event = trio.Event()
        # Scopes of connections waiting for a request, oldest wait first (dicts keep
        # insertion order): the first one is the longest idle.
        self._idle: dict[trio.CancelScope, bool] = {}  # to each, whether it is new
        # Idle scopes cancelled to make room, until their connection sees it.
        self._evicted: set[trio.CancelScope] = set()
        #: Connections evicted that have not closed yet: the accept loop counts them
        #: as gone, so that one new connection evicts one idle connection, not more.
        self.evictions_pending = 0
        #: The close code open WebSockets get at graceful shutdown: 1001 (going away),
        #: or 1012 (service restart) when the shutdown is a restart.
        self.going_away_code = 1001
        #: Whether an upgrade the handler did not take was logged (once per server).
        self.websocket_warned = False
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

    def enter_idle(self, scope: trio.CancelScope, *, new: bool = False) -> None:
        """Register the scope of a wait for a request; cancelled to close the connection.
        ``new``: a first request (or a handshake) is awaited (rule 3)."""
        if self.shutdown_event.is_set():
            _close_idle(scope, new)
        self._idle[scope] = new
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

    def begin_shutdown(self, *, restart: bool = False) -> None:
        """Start graceful shutdown: wake every idle connection at once. The first call
        decides whether it is a ``restart`` (WebSockets then get 1012)."""
        if not self.shutdown_event.is_set() and restart:
            self.going_away_code = 1012
        self.shutdown_event.set()
        for scope, new in self._idle.items():
            _close_idle(scope, new)


def _close_idle(scope: trio.CancelScope, new: bool) -> None:
    if new:
        scope.deadline = min(scope.deadline, trio.current_time() + NEW_CONNECTION_GRACE)
    else:
        scope.cancel()
