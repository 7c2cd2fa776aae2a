"""trio as a guest of an asyncio event loop, and calls across the two.

Rules for this module:
1. The engine stays on trio. On an asyncio loop it runs as a trio *guest*
   (``trio.lowlevel.start_guest_run``): trio's scheduler steps run as callbacks of
   the asyncio loop, in its thread, so every deadline, limit and the graceful
   shutdown behave as under ``trio.run``. Only code that needs asyncio (an ASGI
   application, a native handler's call through :func:`run_asyncio`) runs as
   asyncio tasks on the host loop.
2. A call across is one future on each side, and nothing else: from trio,
   :func:`run_asyncio` runs a coroutine as an asyncio task and waits for it; from
   asyncio, :class:`TrioCalls` runs a trio function as a trio task and waits for it.
   Cancellation crosses too: a cancelled trio waiter cancels the asyncio task and
   waits for it to end; a cancelled asyncio waiter cancels the trio task and waits
   for it to end.
3. A call that completed as the caller was cancelled keeps its result for the next
   call of the same function (``keep_late_results``): an ASGI ``receive()`` cancelled
   by the application's own timeout loses no message (as on trio: ``_http`` rule 6).
4. Callbacks that asyncio runs are outside trio's run: they reach trio only through
   the run's ``TrioToken`` (``run_sync_soon``), and never raise there.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Final, Literal, ParamSpec, TypeVar

import outcome
import trio

__all__ = ["Loop", "TrioCalls", "host_loop", "run_as_guest", "run_asyncio", "run_on"]

T = TypeVar("T")

#: Seconds a cancelled asyncio task gets to end before run_asyncio() stops waiting
#: for it (it runs on, abandoned): as long as ASGI gives an abandoned application.
CANCEL_GRACE: Final = 5.0
P = ParamSpec("P")

#: The event loops the engine runs on: trio itself, or as a guest of asyncio's
#: (``uvloop``: asyncio's with uvloop's implementation).
Loop = Literal["trio", "asyncio", "uvloop"]


def host_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop this trio run is a guest of, or None under ``trio.run``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def run_on(loop: Loop, trio_fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``trio_fn`` to completion on ``loop``: ``trio.run``, or a guest run on a new
    asyncio (or uvloop) event loop. For programs, as ``trio.run`` is.

    Raises:
        RuntimeError: ``uvloop`` is asked for and not installed.
    """
    if loop == "trio":
        return trio.run(trio_fn)
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise RuntimeError("--loop uvloop needs uvloop: pip install uvloop") from None
        result: T = uvloop.run(run_as_guest(trio_fn))
        return result
    return asyncio.run(run_as_guest(trio_fn))


async def run_as_guest(
    trio_fn: Callable[[], Awaitable[T]],
    *,
    clock: trio.abc.Clock | None = None,
    instruments: Sequence[trio.abc.Instrument] = (),
) -> T:
    """Run ``trio_fn()`` as a trio guest of the running asyncio loop, and return
    what it returns (or raise what it raises).

    Cancelling the awaiting asyncio task cancels the trio run (the hard stop, as
    cancelling the scope around ``trio.run``'s function) and waits for it to end;
    then ``asyncio.CancelledError`` propagates.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[outcome.Outcome[T]] = loop.create_future()
    scope = trio.CancelScope()
    tokens: list[trio.lowlevel.TrioToken] = []  # the run's, once it has started

    async def guest() -> T:
        tokens.append(trio.lowlevel.current_trio_token())
        with scope:
            return await trio_fn()
        raise asyncio.CancelledError  # only the host's cancellation cancels the scope

    trio.lowlevel.start_guest_run(
        guest,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=done.set_result,
        host_uses_signal_set_wakeup_fd=True,
        clock=clock,
        instruments=instruments,
    )
    try:
        return (await asyncio.shield(done)).unwrap()
    except asyncio.CancelledError:
        if done.done():
            raise
        if tokens:
            tokens[0].run_sync_soon(scope.cancel)
        else:
            scope.cancel()  # not entered yet: it starts cancelled
        result = await _uncancellable(done)
        if not (
            isinstance(result, outcome.Error) and isinstance(result.error, asyncio.CancelledError)
        ):
            result.unwrap()  # what the run raised, or returned, while it was cancelled
        raise


async def _uncancellable(future: asyncio.Future[T]) -> T:
    """Wait for ``future`` even if the waiting task is cancelled again meanwhile."""
    while True:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                return future.result()


async def run_asyncio(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """From trio, on an asyncio host loop: run ``fn(*args)`` as an asyncio task and
    return its result (for a native handler that calls asyncio code).

    Cancelling the caller cancels the task and waits until it has ended. A task that
    asyncio cancels by itself (not through us) raises ``RuntimeError`` here, so that
    no ``asyncio.CancelledError`` travels through trio code.

    Raises:
        RuntimeError: the engine does not run on an asyncio loop (``--loop asyncio``,
            ``trioserve.asyncio.serve``), or the task was cancelled by asyncio.
    """
    loop = host_loop()
    if loop is None:
        raise RuntimeError(
            "run_asyncio() needs the server on an asyncio loop: --loop asyncio, or "
            "trioserve.asyncio.serve() from an asyncio program"
        )
    token = trio.lowlevel.current_trio_token()
    finished = trio.Event()
    task = asyncio.ensure_future(fn(*args, **kwargs), loop=loop)
    task.add_done_callback(lambda _: token.run_sync_soon(finished.set))
    try:
        await finished.wait()
    except BaseException:
        task.cancel()
        # Wait for the task to end, but not forever: a task that swallows its
        # CancelledError must not hold a trio task (and a shutdown) hostage.
        with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE):
            await finished.wait()
        raise
    if task.cancelled():
        raise RuntimeError(f"the asyncio task running {fn!r} was cancelled")
    return task.result()


class TrioCalls:
    """Trio functions made callable from asyncio tasks, while a trio task hosts them.

    ``async with TrioCalls() as calls:`` (in trio) opens the nursery the calls run
    in; ``calls.wrap(fn)`` gives an asyncio coroutine function that runs ``fn`` in
    it. Calls made once the block has exited raise ``RuntimeError``.
    """

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> TrioCalls:
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        nursery, self._nursery = self._nursery, None
        assert nursery is not None
        nursery.cancel_scope.cancel()  # calls still running: their callers are gone
        return await self._cm.__aexit__(*exc)  # type: ignore[arg-type]

    def wrap(
        self, fn: Callable[P, Awaitable[T]], *, keep_late_results: bool = False
    ) -> Callable[P, Coroutine[object, object, T]]:
        """``fn`` as an asyncio coroutine function (rule 2; rule 3 with
        ``keep_late_results``)."""
        late: list[T] = []  # a result that completed as its caller was cancelled

        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            if late:
                return late.pop()
            loop = asyncio.get_running_loop()
            future: asyncio.Future[outcome.Outcome[T]] = loop.create_future()
            scope = trio.CancelScope()
            start = functools.partial(fn, *args, **kwargs)
            self._token.run_sync_soon(self._start, start, future, scope)
            try:
                return (await asyncio.shield(future)).unwrap()
            except asyncio.CancelledError:
                if not future.done():
                    self._token.run_sync_soon(scope.cancel)
                result = await _uncancellable(future)
                if keep_late_results and isinstance(result, outcome.Value):
                    late.append(result.value)
                raise

        return call

    def _start(
        self,
        fn: Callable[[], Awaitable[T]],
        future: asyncio.Future[outcome.Outcome[T]],
        scope: trio.CancelScope,
    ) -> None:
        # In trio's context (run_sync_soon); never raises (rule 4).
        if self._nursery is None:
            future.set_result(outcome.Error(RuntimeError(f"{fn!r} called after its host ended")))
            return
        self._nursery.start_soon(self._run, fn, future, scope)

    @staticmethod
    async def _run(
        fn: Callable[[], Awaitable[T]],
        future: asyncio.Future[outcome.Outcome[T]],
        scope: trio.CancelScope,
    ) -> None:
        # Cancelled (by the asyncio caller through ``scope``, or with the host from
        # outside): asyncio's word for it is what the caller gets.
        result: outcome.Outcome[T] = outcome.Error(asyncio.CancelledError())
        try:
            with scope:
                result = outcome.Value(await fn())
        except trio.Cancelled:
            raise  # from outside: it goes on up (the finally tells the caller)
        except Exception as exc:
            result = outcome.Error(exc)
        finally:
            if not future.done():
                future.set_result(result)
