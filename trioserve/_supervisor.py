"""The supervisor: one process that binds the listeners and keeps N workers serving them.

Rules for this module:
1. The supervisor binds every listener once and passes the sockets (never addresses,
   but for ``--reuse-port``) to workers it starts by exec (``python -m trioserve``
   with the same command line and a ``WorkerPlan``), in sessions of their own: a
   Ctrl+C reaches the supervisor only, which says what the workers must do. It never
   imports the application.
2. A worker that exits before it says it serves failed at startup: the whole server
   stops with status 1 (no restart loop), except where old workers still serve (a
   rolling restart, a reload), which go on. A worker that dies later is replaced, with
   a back-off while it keeps dying young; one that misses its heartbeat is killed.
3. Signal handlers only record (trio's receiver); everything happens in one loop that
   waits on a channel of events (signals, worker exits, recycle requests, file
   changes): no sleep-and-check anywhere but the back-off itself.
4. Replacing never leaves fewer workers serving: the new one serves before the old one
   is asked to stop (rolling restart on SIGHUP, ``--limit-max-requests``,
   ``--reload``). Stopping is graceful (SIGTERM: the worker drains); a second signal
   forces it (SIGINT to every worker).
"""

from __future__ import annotations

import enum
import math
import os
import random
import signal
import socket as stdlib_socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from ._logging import error_logger
from ._run import announce_urls
from ._watch import WatchSpec, syntax_error, watch_changes
from ._worker import ENV, READY, RECYCLE, RESTART, WorkerPlan

__all__ = ["STARTUP_FAILED", "Supervisor", "WorkerSettings"]

#: A worker that lived less than this many seconds died young: back off before the next.
YOUNG: Final = 10.0
#: Back-off before replacing a worker that died young: doubles per death, up to the max.
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 10.0
#: Seconds a new worker gets to import the application and run its startup before it
#: is killed (as failed to start). gunicorn's timeout (30 s) covers a boot too; a
#: minute leaves room for a slow import and a lifespan that opens pools.
STARTUP_TIMEOUT: Final = 60.0
#: Exit status when interrupted before the workers served (128 + SIGINT, as shells).
INTERRUPTED: Final = 130
#: Seconds after shutdown_timeout that a stopping worker gets before SIGKILL.
STOP_GRACE: Final = 5.0
#: Exit status when a worker could not start, or the shutdown was not clean.
STARTUP_FAILED: Final = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSettings:
    """How many workers, and how they are watched, recycled and reloaded."""

    workers: int
    healthcheck: float
    max_requests: int | None
    reuse_port: tuple[str, int] | None  # the address each worker binds itself
    shutdown_timeout: float
    reload: WatchSpec | None = None


class _Event(enum.Enum):
    SIGNAL = "signal"
    RECYCLE = "recycle"
    EXITED = "exited"
    CHANGED = "changed"
    STOPPING = "stopping"  # nothing to do but see whether the loop is done


@dataclass(eq=False)
class _Worker:
    process: trio.Process
    control: trio.socket.SocketType
    started: float
    ready: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    stopping: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


class Supervisor:
    """Starts the workers and keeps them serving; see the module's rules.

    Args:
        argv: the command line a worker runs (after ``python -m trioserve``).
        fds: the listening sockets' descriptors, passed to every worker.
        settings: counts, health check, recycling, reload.
        urls: announced (``Serving on ...``) once the first workers serve.
    """

    def __init__(
        self,
        argv: Sequence[str],
        fds: Sequence[int],
        settings: WorkerSettings,
        urls: Sequence[str] = (),
    ) -> None:
        self._urls = tuple(urls)
        self._argv = list(argv)
        self._fds = tuple(fds)
        self._settings = settings
        self._target = settings.workers
        self._workers: list[_Worker] = []
        self._send, self._events = trio.open_memory_channel[tuple[_Event, object]](math.inf)
        self._deaths = 0  # workers in a row that died young
        self._signals = 0  # stopping signals received
        self._status = 0
        self._restarting = False
        self._restart_again = False
        self._started = trio.Event()  # the first workers served
        self._adding = 0  # replacements on their way (a back-off, a start)
        self._nursery: trio.Nursery | None = None

    async def run(self) -> int:
        """Serve until stopped; return the exit status (0 after a clean drain)."""
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        with trio.open_signal_receiver(*sigs) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._record_signals, signals)
                if self._settings.reload is not None:  # an edit during startup counts
                    nursery.start_soon(self._watch, self._settings.reload)
                try:
                    started = [await self._spawn() for _ in range(self._target)]
                except OSError as exc:
                    error_logger.error("cannot start a worker: %s", exc)
                    self._status = STARTUP_FAILED
                    self._signals = 1
                    started = []
                for worker in started:
                    self._stop_if_stopping(worker)
                # Waited for beside the loop: a signal during a slow startup stops it.
                nursery.start_soon(self._wait_started, started)
                await self._loop()
                nursery.cancel_scope.cancel()
        return self._status

    async def _wait_started(self, started: Sequence[_Worker]) -> None:
        for worker in started:
            if not await _wait_ready(worker):
                if not self._signals:
                    self._startup_failed(worker)
                return
        self._started.set()
        announce_urls(self._urls)  # true now: the workers serve
        pids = ", ".join(str(worker.pid) for worker in started)
        error_logger.info("%s serving: %s", _workers(len(started)), pids)
        self._balance()  # a SIGTTIN or SIGTTOU during the startup

    async def _spawn(self) -> _Worker:
        """Start a worker; a task of ours tends it (control socket, exit)."""
        ours, theirs = stdlib_socket.socketpair()
        settings = self._settings
        max_requests = settings.max_requests
        if max_requests is not None:  # jitter: workers started together recycle apart
            max_requests += random.randint(0, max_requests // 10)
        plan = WorkerPlan(
            control=theirs.fileno(),
            fds=self._fds,
            reuse_port=settings.reuse_port,
            healthcheck=settings.healthcheck,
            max_requests=max_requests,
        )
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trioserve", *self._argv],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(), *self._fds),
                env={**os.environ, ENV: plan.to_env()},
                start_new_session=True,  # our Ctrl+C is not theirs: we tell them
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker = _Worker(process, trio.socket.from_stdlib_socket(ours), trio.current_time())
        self._workers.append(worker)
        self._tasks.start_soon(self._tend, worker)
        return worker

    def _stop_if_stopping(self, worker: _Worker) -> None:
        if self._signals:  # stopped while it started
            self._stop(worker)

    async def _tend(self, worker: _Worker) -> None:
        """Read the worker's reports under the heartbeat deadline, then wait for its exit."""
        healthcheck = self._settings.healthcheck
        with worker.control:
            while True:
                # Before it serves, no heartbeat is owed: it has STARTUP_TIMEOUT in all.
                ready = worker.ready.is_set()
                timeout = healthcheck if ready else STARTUP_TIMEOUT
                with trio.move_on_after(timeout) as timer:
                    try:
                        data = await worker.control.recv(64)
                    except OSError:
                        data = b""
                if timer.cancelled_caught:
                    what = "sent no heartbeat" if ready else "did not start"
                    error_logger.error(
                        "worker %d %s within %.4g s: killing it", worker.pid, what, timeout
                    )
                    worker.process.kill()
                    break
                if not data:
                    break
                if READY in data:
                    worker.ready.set()
                if RECYCLE in data:
                    self._send.send_nowait((_Event.RECYCLE, worker))
        await worker.process.wait()
        worker.exited.set()
        self._send.send_nowait((_Event.EXITED, worker))

    def _stop(self, worker: _Worker, *, restart: bool = False) -> None:
        """Ask ``worker`` to drain and exit: SIGTERM, or for a ``restart`` (it is being
        replaced) ``RESTART`` on its control socket, which closes its WebSockets with
        1012 instead of 1001; SIGKILL if it overstays."""
        if worker.stopping or worker.exited.is_set():
            return
        worker.stopping = True
        if restart:
            self._tasks.start_soon(self._ask_to_restart, worker)
        else:
            _signal(worker, signal.SIGTERM)
        self._tasks.start_soon(self._kill_if_it_overstays, worker)

    async def _ask_to_restart(self, worker: _Worker) -> None:
        try:
            await worker.control.send(RESTART)
        except OSError:  # its end is gone: a signal still reaches it, if it lives
            _signal(worker, signal.SIGTERM)

    async def _kill_if_it_overstays(self, worker: _Worker) -> None:
        grace = self._settings.shutdown_timeout + STOP_GRACE
        with trio.move_on_after(grace):
            await worker.exited.wait()
            return
        error_logger.error(
            "worker %d still runs %.4g s after it was asked to stop: killing it",
            worker.pid,
            grace,
        )
        worker.process.kill()

    def _startup_failed(self, worker: _Worker) -> None:
        error_logger.error(
            "worker %d failed to start (%s): stopping", worker.pid, _status(worker.process)
        )
        self._status = STARTUP_FAILED
        self._signals = max(self._signals, 1)
        for other in self._workers:
            self._stop(other)
        self._send.send_nowait((_Event.STOPPING, None))  # its exit may be seen already

    async def _replace(self, old: _Worker) -> bool:
        """Start a worker; once it serves, stop ``old``. False if it failed to start."""
        try:
            new = await self._spawn()
        except OSError as exc:
            error_logger.error("cannot start a worker: %s", exc)
            return False
        self._stop_if_stopping(new)
        if not await _wait_ready(new):
            return False
        self._stop(old, restart=True)
        return True

    def _serving(self) -> list[_Worker]:
        return [worker for worker in self._workers if not worker.stopping]

    # --- The loop --------------------------------------------------------------------

    async def _loop(self) -> None:
        while self._workers or not self._signals:
            kind, value = await self._events.receive()
            if kind is _Event.SIGNAL:
                assert isinstance(value, int)
                self._on_signal(signal.Signals(value))
            elif kind is _Event.EXITED:
                assert isinstance(value, _Worker)
                self._on_exit(value)
            elif kind is _Event.RECYCLE and not self._signals:
                assert isinstance(value, _Worker)
                self._tasks.start_soon(self._recycle, value)
            elif kind is _Event.CHANGED and not self._signals:
                assert isinstance(value, frozenset)
                self._on_change(value)

    def _on_signal(self, signum: signal.Signals) -> None:
        serving = self._serving()
        if signum in (signal.SIGINT, signal.SIGTERM):
            self._signals += 1
            if self._signals == 1:
                if not self._started.is_set() and self._status == 0:
                    self._status = INTERRUPTED  # as a single process stopped before serving
                error_logger.info("%s received: stopping %s", signum.name, _workers(len(serving)))
                for worker in self._workers:
                    self._stop(worker)
            else:
                error_logger.warning("%s received again: forcing shutdown", signum.name)
                self._status = STARTUP_FAILED
                for worker in self._workers:
                    _signal(worker, signal.SIGINT)  # a worker's second signal forces
        elif self._signals:
            error_logger.info("%s received while stopping: ignored", signum.name)
        elif signum == signal.SIGHUP:
            error_logger.info("SIGHUP received: restarting the workers one at a time")
            self._restart()
        elif signum == signal.SIGTTIN:
            self._target += 1
            error_logger.info("SIGTTIN received: adding a worker (%d)", self._target)
            self._schedule_add()
        elif signum == signal.SIGTTOU and self._target > 1:
            self._target -= 1
            error_logger.info("SIGTTOU received: removing a worker (%d)", self._target)
            self._balance()

    def _balance(self) -> None:
        """Bring the workers to the target: stop the oldest serving ones above it, or
        start more below it. Replacements on their way count: one that finds the
        target reached does not start (so a SIGTTOU never leaves fewer than one
        serving while a replacement waits out its back-off)."""
        serving = self._serving()
        excess = len(serving) + self._adding - self._target
        ready = [worker for worker in serving if worker.ready.is_set()]
        for worker in ready[: max(excess - self._adding, 0)]:
            self._stop(worker)
        for _ in range(-excess):
            self._schedule_add()

    def _on_exit(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        returncode = worker.process.returncode
        if worker.stopping or self._signals:
            if returncode != 0 and worker.ready.is_set():  # else said as it failed
                error_logger.warning("worker %d ended: %s", worker.pid, _status(worker.process))
                if self._signals:  # the final drain was not clean
                    self._status = self._status or STARTUP_FAILED
            return
        if not worker.ready.is_set():
            return  # failed to start: whoever started it decides
        lived = trio.current_time() - worker.started
        self._deaths = self._deaths + 1 if lived < YOUNG else 0
        delay = self._backoff()
        error_logger.error(
            "worker %d died (%s) after %.1f s: replacing it%s",
            worker.pid,
            _status(worker.process),
            lived,
            f" in {delay:.4g} s" if delay else "",
        )
        self._schedule_add(delay)

    def _on_change(self, changes: frozenset[Path]) -> None:
        names = ", ".join(sorted(os.path.relpath(path) for path in changes)[:3])
        error = syntax_error(changes)
        if error is not None:
            error_logger.error("reload: %s (the running worker goes on)", error)
            return
        error_logger.info("reload: %s changed: restarting", names)
        self._restart()

    def _restart(self) -> None:
        """A rolling restart; one asked for during another runs again after it."""
        if self._restarting:
            self._restart_again = True
        else:
            self._tasks.start_soon(self._rolling_restart)

    @property
    def _stopping_all(self) -> bool:
        return self._signals > 0  # (a property: read anew after each await)

    def _backoff(self) -> float:
        """0 after a worker that lived; 0.1 s doubling to 10 s while they die young."""
        if not self._deaths:
            return 0.0
        return float(min(BACKOFF_FIRST * 2 ** (self._deaths - 1), BACKOFF_MAX))

    @property
    def _tasks(self) -> trio.Nursery:
        assert self._nursery is not None  # run() opened it
        return self._nursery

    # --- Tasks the loop starts --------------------------------------------------------

    async def _record_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            self._send.send_nowait((_Event.SIGNAL, signum))

    async def _watch(self, spec: WatchSpec) -> None:
        async for changes in watch_changes(spec):
            self._send.send_nowait((_Event.CHANGED, changes))

    def _schedule_add(self, delay: float = 0.0) -> None:
        self._adding += 1  # counted from now: _balance sees it at once
        self._tasks.start_soon(self._add, delay)

    async def _add(self, delay: float) -> None:
        try:
            await trio.sleep(delay)  # the back-off: a worker that keeps dying young
            if self._signals or len(self._serving()) >= self._target:
                return  # stopping, or a SIGTTOU took this slot meanwhile
            try:
                new = await self._spawn()
            except OSError as exc:  # out of processes or descriptors: try again later
                error_logger.error("cannot start a worker: %s", exc)
                self._deaths += 1
                self._schedule_add(self._backoff())
                return
        finally:
            self._adding -= 1
        self._stop_if_stopping(new)
        if not await _wait_ready(new) and not self._signals:
            self._startup_failed(new)

    async def _recycle(self, old: _Worker) -> None:
        if old.stopping or self._restarting:
            return
        if not await self._replace(old) and not self._signals:
            error_logger.error("worker %d stays: its replacement failed to start", old.pid)

    async def _rolling_restart(self) -> None:
        if self._restarting:
            return
        self._restarting = True
        try:
            # A change during the startup waits for it: replacing a worker that has not
            # served yet would read as its failure to start.
            await self._started.wait()
            while True:
                self._restart_again = False
                for old in self._serving():
                    if self._signals:
                        return
                    if old.stopping or old.exited.is_set():
                        continue  # replaced meanwhile (it died, or a SIGTTOU took it)
                    if not await self._replace(old):
                        if self._stopping_all:
                            return
                        error_logger.error(
                            "restart abandoned: a new worker failed to start; "
                            "the running workers go on"
                        )
                        if not self._restart_again:  # else a fix came meanwhile: again
                            return
                        break
                    self._balance()  # a worker died or a SIGTTOU came meanwhile
                else:
                    if not self._restart_again:
                        error_logger.info("restart done")
                        return
        finally:
            self._restarting = False


async def _wait_ready(worker: _Worker) -> bool:
    """True once ``worker`` serves; False if it exited first."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_on, worker.exited, nursery.cancel_scope)
        await worker.ready.wait()
        nursery.cancel_scope.cancel()
    return worker.ready.is_set()


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _workers(count: int) -> str:
    return "1 worker" if count == 1 else f"{count} workers"


def _signal(worker: _Worker, signum: signal.Signals) -> None:
    try:
        worker.process.send_signal(signum)
    except ProcessLookupError:  # already gone: its exit is on its way
        pass


def _status(process: trio.Process) -> str:
    code = process.returncode
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
