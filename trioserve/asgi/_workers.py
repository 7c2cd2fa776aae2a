"""The tasks that run the application's ``http`` calls, kept and reused from call to
call.

Rules for this module:
1. Every call runs in a task of the host's nursery, never in the connection task
   (``_http`` rule 1). A task whose call has ended waits for the next call instead of
   exiting: spawning a trio task and entering a cancel scope for each request cost
   more than all the rest of the adapter's work for a small response (measured with
   bench/inprocess.py).
2. A call runs in a fresh copy of the caller's context (the connection task's), as a
   task spawned for it would: a context variable one call sets is never seen by the
   next call in the same worker.
3. A worker's cancel scope is the ``app_scope`` of the call it runs, so ``abandon``
   cancels that call alone. A worker whose scope was given a deadline retires after
   its call (the scope is spent), so no later call inherits the deadline.
4. At most ``MAX_IDLE_WORKERS`` wait; once the host drains (``close``), idle workers
   exit at once and busy ones after their call, so the host's nursery waits only for
   calls still running.
"""

from __future__ import annotations

import contextvars
import math
import types
from collections.abc import Coroutine, Generator
from typing import Final

import trio

from ._http import HTTPCycle, abandon
from ._types import ASGIApp

__all__ = ["MAX_IDLE_WORKERS", "Workers"]

#: Idle workers kept for the next calls; more exit when their call ends. Enough for
#: the calls of a busy batch of connections, and a small fixed cost (a few KiB each).
MAX_IDLE_WORKERS: Final = 128


class _Worker:
    """One worker task, and the call it is handed while it waits."""

    __slots__ = ("call", "context", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.call: HTTPCycle | None = None
        self.context: contextvars.Context | None = None


class Workers:
    """The host's application calls: :meth:`start` runs one in an idle worker, or in
    a new one. ``nursery`` is the host's nursery for the application's tasks."""

    __slots__ = ("_app", "_closed", "_idle", "nursery")

    def __init__(self, nursery: trio.Nursery, app: ASGIApp) -> None:
        self.nursery = nursery
        self._app = app
        self._idle: list[_Worker] = []
        self._closed = False

    def start(self, call: HTTPCycle) -> None:
        """Run ``call.run(app)`` in a worker, in a copy of the current context."""
        context = contextvars.copy_context()
        if self._idle:
            worker = self._idle.pop()  # the last to finish: the warmest
            worker.call = call
            worker.context = context
            trio.lowlevel.reschedule(worker.task)
        else:
            self.nursery.start_soon(self._work, call, context, name="trioserve.asgi.worker")

    def close(self) -> int:
        """No more calls: idle workers exit, busy ones once their call ends. Returns
        how many idle workers were told to exit (they are still in the nursery)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for worker in idle:
            trio.lowlevel.reschedule(worker.task)  # with no call: it exits
        return len(idle)

    async def _work(self, call: HTTPCycle, context: contextvars.Context) -> None:
        worker = _Worker(trio.lowlevel.current_task())
        with trio.CancelScope() as scope:
            while True:
                call.app_scope = scope
                if call.aborted:
                    abandon(scope)  # aborted before it ran
                await _in_context(call.run(self._app), context)
                # Rule 3: a deadline on the scope is the last call's; rule 4.
                if scope.deadline != math.inf or self._closed:
                    return
                if len(self._idle) >= MAX_IDLE_WORKERS:
                    return
                next_call = await self._wait(worker)
                if next_call is None:
                    return
                call, context = next_call
        if scope.cancelled_caught:
            call.app_cancelled()

    async def _wait(self, worker: _Worker) -> tuple[HTTPCycle, contextvars.Context] | None:
        """Wait idle for the next call; None: exit (the host drains)."""
        self._idle.append(worker)

        def unpark(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            # Cancelled from outside while idle (the host is cancelled).
            self._idle.remove(worker)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(unpark)
        call, context = worker.call, worker.context
        worker.call = worker.context = None
        if call is None or context is None:
            return None
        return call, context


@types.coroutine
def _in_context(
    coro: Coroutine[object, object, None], context: contextvars.Context
) -> Generator[object, object, None]:
    """``await coro`` with each of its steps run in ``context`` (rule 2), as trio runs
    a task's steps in the task's context. Values and exceptions pass unchanged."""
    to_send: object = None
    to_throw: BaseException | None = None
    while True:
        try:
            if to_throw is None:
                yielded = context.run(coro.send, to_send)
            else:
                yielded, to_throw = context.run(coro.throw, to_throw), None
        except StopIteration:
            return
        try:
            to_send = yield yielded
        except GeneratorExit:
            context.run(coro.close)
            raise
        except BaseException as exc:
            to_throw = exc
