"""Awaiting a coroutine with a hook on each of its suspensions.

The connection runs a handler in its own task and starts the disconnect watcher
only for a handler that actually waits (see ``_exchange``): ``run_inline`` is how it
knows, at no cost for one that returns without suspending.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine, Generator
from typing import TypeVar

__all__ = ["run_inline"]

T = TypeVar("T")


@types.coroutine
def run_inline(
    coro: Coroutine[object, object, T], on_suspend: Callable[[], None]
) -> Generator[object, object, T]:
    """Await ``coro``, calling ``on_suspend()`` each time it yields to trio.

    This is exactly ``await coro`` (every value and exception passes through
    unchanged, so cancellation and trio's checkpoints work as usual), plus a hook
    that lets the connection start its disconnect watcher only for handlers that
    actually wait: a handler that returns without suspending costs no extra task.
    """
    to_send: object = None
    to_throw: BaseException | None = None
    try:
        while True:
            try:
                if to_throw is None:
                    yielded = coro.send(to_send)
                else:
                    yielded, to_throw = coro.throw(to_throw), None
            except StopIteration as stop:
                result: T = stop.value
                return result
            on_suspend()
            try:
                to_send = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                to_throw = exc
    finally:
        # What trio sent last (a cancellation's outcome) must not stay in this frame:
        # the exception's traceback holds the frame, a cycle only the collector frees.
        to_send = to_throw = None
