"""A connection's helper tasks, run in a nursery that outlives the connection.

A connection starts a task of its own now and then: the reader that reads a body for
another task, the watcher that notices a vanished client, a WebSocket's reader. A
nursery per connection would hold them, but a nursery (its cancel scope, its cancel
status and their sets) is about a kilobyte that an idle keep-alive connection holds
the whole time, and opening one costs as much as serving a small request. So the
acceptor's nursery, which holds the connection tasks, holds their helpers too, and
``ConnectionTasks`` keeps them structured as a nursery would:

1. No helper outlives its connection: ``stop`` cancels the ones still running and
   waits until they have finished, before the connection closes its stream.
2. A helper's failure (a bug of ours) costs its connection, never the server: it is
   logged, and ``on_failure`` aborts the connection; it never reaches the shared
   nursery. Cancellation passes through as it would anywhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ._logging import error_logger

__all__ = ["ConnectionTasks", "Task"]

#: A helper: runs under ``scope`` (cancelled to stop it) and sets ``done`` when over.
Task = Callable[[trio.CancelScope, trio.Event], Awaitable[None]]


class ConnectionTasks:
    """The helper tasks of one connection (see the module's rules).

    Args:
        nursery: where they run; it outlives the connection.
        on_failure: called when a helper raised an exception (after it is logged).
    """

    __slots__ = ("_nursery", "_on_failure", "_running")

    def __init__(self, nursery: trio.Nursery, on_failure: Callable[[], None]) -> None:
        self._nursery = nursery
        self._on_failure = on_failure
        self._running: list[tuple[trio.CancelScope, trio.Event]] = []

    def start_soon(self, task: Task, scope: trio.CancelScope, done: trio.Event) -> None:
        """Start ``task(scope, done)``; it must set ``done`` however it ends."""
        self._running.append((scope, done))
        self._nursery.start_soon(self._run, task, scope, done)

    async def _run(self, task: Task, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            await task(scope, done)
        except Exception:
            error_logger.exception("internal error in a connection's task")
            self._on_failure()
        finally:
            done.set()
            self._running.remove((scope, done))

    async def stop(self) -> None:
        """Cancel the helpers still running and return once they have finished."""
        running = list(self._running)
        for scope, _ in running:
            scope.cancel()
        # Shielded as a nursery's exit is: the connection closes its stream only after.
        with trio.CancelScope(shield=True):
            for _, done in running:
                await done.wait()
