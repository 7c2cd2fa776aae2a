"""``--workers N``: a supervisor and its worker processes, tested with real processes.

Each test starts ``python -m trioserve tests.programs.workers_app:app --workers N``
(``supervising``): the app answers with the pid of the worker that served, so a test
sees which process answered. The supervisor's environment carries a mark of the
test's own, which its workers inherit: at the end of each test no process with that
mark, and no pid the test saw (the supervisor, every worker), may be left in the
process table (``/proc``). Nothing is ever killed by name: a test that fails kills
the supervisor and the workers it saw, by pid.

Every wait is bounded (``BOUND``, ``tests/processes.py``) and the tests wait for what
the processes print or for the process table, never for a fixed while, but where a
test checks that something does *not* happen.

The rolling-restart tests (``test_rolling_restart_*``) print their measured figures
(requests sent, retried, lost, duration): ``pytest -s`` shows them.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio

from .processes import BOUND, GET, SERVING, ChildProcess
from .test_nginx import running_nginx
from .test_unix_and_fd import SERVING_UNIX, exists, running_with

APP = "tests.programs.workers_app:app"
#: The environment variable that marks a test's supervisor and its workers.
MARK = "TRIOSERVE_TEST_MARK"

Connect = Callable[[], Awaitable[trio.abc.Stream]]


# --- The process table ------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    state: str
    ppid: int
    sid: int


def proc(pid: int) -> Proc | None:
    """``/proc/PID/stat``'s fields we need, or None once the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read().decode()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and ")"
    return Proc(pid, fields[0], int(fields[1]), int(fields[3]))


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def children_of(pid: int) -> set[int]:
    """The live (not zombie) children of ``pid``."""
    found = set()
    for other in all_pids():
        info = proc(other)
        if info is not None and info.ppid == pid and info.state != "Z":
            found.add(other)
    return found


def marked(mark: str) -> set[int]:
    """The processes whose environment holds ``MARK=mark`` (of this user; a zombie
    has no environment left, see ``left_behind``)."""
    entry = f"{MARK}={mark}".encode()
    found = set()
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                if entry in file.read().split(b"\0"):
                    found.add(pid)
        except OSError:
            continue
    return found


def left_behind(mark: str, pids: Iterable[int]) -> set[int]:
    """Processes of a test still in the table: marked ones, and the ``pids`` it saw
    (the supervisor and the workers), zombies included, or in a worker's session."""
    known = set(pids)
    left = marked(mark) | {pid for pid in known if proc(pid) is not None}
    for pid in all_pids():
        info = proc(pid)
        if info is not None and info.sid in known:
            left.add(pid)
    return left


async def wait_until(
    check: Callable[[], object], what: str, *, bound: float = BOUND, step: float = 0.02
) -> None:
    """Poll ``check()`` until it is true (for the process table, which has no event)."""
    with trio.move_on_after(bound):
        while not check():  # noqa: ASYNC110
            await trio.sleep(step)
        return
    pytest.fail(f"not within {bound} s: {what}")


# --- The supervisor -----------------------------------------------------------------------


@dataclass
class Supervised:
    """A running supervisor: its child process, and the worker pids seen so far."""

    child: ChildProcess
    mark: str
    seen: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.child.process.pid

    @property
    def stderr(self) -> str:
        return self.child.stderr.decode()

    @property
    def port(self) -> int:
        return self.child.port

    def workers(self) -> set[int]:
        """The supervisor's live children: its workers."""
        found = children_of(self.pid)
        self.seen |= found
        return found

    def signal(self, signum: int) -> None:
        self.child.process.send_signal(signum)

    async def wait_for(self, pattern: bytes) -> re.Match[bytes]:
        return await self.child.wait_for(pattern)

    async def wait_for_count(self, text: bytes, count: int) -> None:
        """Wait until ``text`` (a literal) shows ``count`` times in stderr."""
        await self.wait_for(rb"(?s)" + rb".*".join([re.escape(text)] * count))

    async def wait_for_workers(self, check: Callable[[set[int]], bool], what: str) -> set[int]:
        found: set[int] = set()

        def done() -> bool:
            nonlocal found
            found = self.workers()
            return check(found)

        await wait_until(done, f"{what} (workers now: {found}); stderr:\n{self.stderr}")
        return found

    async def exit_status(self, bound: float = BOUND) -> int:
        """The supervisor's exit status, once every process holding its stderr (its
        workers) has closed it."""
        with trio.fail_after(bound):
            return await self.child.wait()


def worker_command(*flags: str, app: str = APP) -> list[str]:
    return [sys.executable, "-m", "trioserve", app, "--no-access-log", *flags]


@asynccontextmanager
async def supervising(
    *flags: str,
    app: str = APP,
    ready: bytes | None = rb"\[supervisor\] \d+ workers? serving: [\d, ]+\n",
    check_left: bool = True,
) -> AsyncIterator[Supervised]:
    """Run ``python -m trioserve APP --no-access-log FLAGS`` (from the repository) with
    a mark of its own; yield once ``ready`` shows (the workers serve), with ``.port``
    from its ``Serving on`` line. The test stops it; on the way out nothing of it may
    be left (a failed test: the supervisor and its workers are killed, by pid)."""
    mark = uuid.uuid4().hex
    env = {**os.environ, MARK: mark}
    async with running_with(worker_command(*flags, app=app), env=env, ready=None) as child:
        supervised = Supervised(child, mark)
        ok = False
        try:
            if ready is not None:
                await child.wait_for(ready)
                serving = re.search(SERVING, child.stderr)
                if serving is not None:
                    child.port = int(serving.group(1))
                supervised.workers()
            yield supervised
            ok = True
        finally:
            supervised.seen |= {int(pid) for pid in re.findall(rb"\[worker (\d+)\]", child.stderr)}
            if child.process.returncode is None:
                supervised.workers()
                child.process.kill()
            if not ok:
                for pid in supervised.seen:
                    kill_session(pid)
    if ok and check_left:
        pids = {supervised.pid, *supervised.seen}
        await wait_until(
            lambda: not left_behind(mark, pids),
            f"no process left behind: {left_behind(mark, pids)}",
            bound=5,
        )


def kill_session(pid: int) -> None:
    """Kill a worker (its own session and process group: anything it started too)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- A client ---------------------------------------------------------------------------


def tcp(port: int, host: str = "127.0.0.1") -> Connect:
    async def connect() -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    return connect


def unix(path: str | Path) -> Connect:
    async def connect() -> trio.abc.Stream:
        return await trio.open_unix_socket(os.fspath(path))

    return connect


async def fetch(connect: Connect, target: bytes = b"/") -> tuple[int, int]:
    """``GET target`` on a new connection: the status, and the pid that answered."""
    with trio.fail_after(BOUND):
        stream = await connect()
        async with stream:
            await stream.send_all(GET % target)
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, int(body) if status == 200 else 0


async def fetch_again_if_unanswered(connect: Connect) -> tuple[int, int, int]:
    """``GET /`` on a new connection, sent again (up to 4 times) when the connection
    closes before any byte of the answer (RFC 9112, 9.3.1, as in ``Load``): the
    status, the pid, and how many times it was sent again."""
    for again in range(5):
        try:
            status, pid = await fetch(connect)
        except trio.BrokenResourceError:  # reset before any byte (else fetch's errors)
            continue
        except IndexError:  # closed before any byte: no status line
            continue
        return status, pid, again
    pytest.fail("closed before answering, 5 times")


async def answering(
    connect: Connect, until: Callable[[set[int]], bool], *, concurrency: int = 6
) -> tuple[set[int], int]:
    """Send rounds of concurrent ``/hold`` requests (each blocks its worker 20 ms, so a
    busy worker leaves the next connection to a sibling) until the pids that answered
    satisfy ``until``; every answer must be 200. The pids, and how many requests."""
    pids: set[int] = set()
    sent = 0

    async def one() -> None:
        nonlocal sent
        sent += 1
        status, pid = await fetch(connect, b"/hold")
        assert status == 200
        pids.add(pid)

    with trio.fail_after(BOUND):
        while not until(pids):
            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(one)
    return pids, sent


class ClosedBeforeAnswer(Exception):
    """The connection closed before any byte of the response arrived: the one case in
    which a client may send an idempotent request again (RFC 9112, 9.3.1)."""


@dataclass
class Load:
    """A bounded steady load: ``total`` GETs over ``connections`` concurrent
    connections, kept alive (or one request each with ``close_each``), at most
    ``rate`` requests per second, and what came of them."""

    connect: Connect
    total: int = 5000
    connections: int = 20
    rate: float = 700.0
    close_each: bool = False
    issued: int = 0
    answered: int = 0
    #: Sent again: the connection closed before any byte of the answer, after it had
    #: carried a request (the keep-alive race), or on its first request (the server
    #: accepted the connection, then closed it unread).
    retried_reused: int = 0
    retried_fresh: int = 0
    lost: int = 0
    reconnects: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    pids: Counter[int] = field(default_factory=Counter)
    #: (time answered, pid) of every answer, in order.
    answers: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started: float = 0.0
    duration: float = 0.0
    progress: trio.Event = field(default_factory=trio.Event)

    @property
    def retried(self) -> int:
        return self.retried_reused + self.retried_fresh

    async def run(self) -> None:
        self.started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(self.connections):
                nursery.start_soon(self._connection)
        self.duration = trio.current_time() - self.started

    def summary(self, name: str) -> str:
        kind = (
            "new connections (one request each)" if self.close_each else "keep-alive connections"
        )
        return (
            f"{name}: {self.total} requests sent by {self.connections} concurrent clients "
            f"over {kind} in {self.duration:.2f} s; answered {self.answered} "
            f"(statuses {dict(self.statuses)}); retried {self.retried} (closed before "
            f"any byte of the response: {self.retried_reused} on a kept-alive "
            f"connection, {self.retried_fresh} on a new one); lost {self.lost}; "
            f"{self.reconnects} reconnects; pids {sorted(self.pids)}"
        )

    async def _connection(self) -> None:
        stream: trio.abc.Stream | None = None
        connection = h11.Connection(h11.CLIENT)
        carried = 0  # requests the current connection answered
        try:
            while self.issued < self.total:
                index = self.issued
                self.issued += 1
                await trio.sleep_until(self.started + index / self.rate)
                for _attempt in range(5):
                    if stream is None:
                        try:
                            stream = await self.connect()
                        except OSError as exc:
                            self._lose(f"request {index}: connect failed: {exc!r}")
                            break
                        connection = h11.Connection(h11.CLIENT)
                        carried = 0
                    try:
                        with trio.fail_after(BOUND):
                            status, body = await _exchange(stream, connection, self.close_each)
                    except ClosedBeforeAnswer:
                        if carried:
                            self.retried_reused += 1
                        else:
                            self.retried_fresh += 1
                        await trio.aclose_forcefully(stream)
                        stream = None
                        self.reconnects += 1
                        continue
                    except Exception as exc:  # anything else loses it
                        self._lose(f"request {index}: {exc!r}")
                        await trio.aclose_forcefully(stream)
                        stream = None
                        break
                    self._answer(status, body)
                    carried += 1
                    if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
                        connection.start_next_cycle()
                    else:  # Connection: close (ours, or a draining worker's): a new one
                        await trio.aclose_forcefully(stream)
                        stream = None
                        self.reconnects += not self.close_each
                    break
                else:
                    self._lose(f"request {index}: closed before answering, 5 times")
        finally:
            if stream is not None:
                await trio.aclose_forcefully(stream)

    def _answer(self, status: int, body: bytes) -> None:
        self.answered += 1
        self.statuses[status] += 1
        pid = int(body) if status == 200 else 0
        self.pids[pid] += 1
        self.answers.append((trio.current_time(), pid))
        self.progress.set()
        self.progress = trio.Event()

    def _lose(self, why: str) -> None:
        self.lost += 1
        self.errors.append(why)
        self.progress.set()
        self.progress = trio.Event()

    async def wait_answered(self, count: int) -> None:
        with trio.fail_after(BOUND):
            while self.answered + self.lost < count:
                await self.progress.wait()


async def _exchange(
    stream: trio.abc.Stream, connection: h11.Connection, close: bool
) -> tuple[int, bytes]:
    """One GET / (with ``Connection: close`` if ``close``): the status and the body.

    Raises:
        ClosedBeforeAnswer: the connection closed (or was reset) before any byte of
            the response arrived.
    """
    headers = [("Host", "test")] + ([("Connection", "close")] if close else [])
    data = connection.send(h11.Request(method="GET", target="/", headers=headers))
    data += connection.send(h11.EndOfMessage())
    try:
        await stream.send_all(data)
    except trio.BrokenResourceError as exc:
        raise ClosedBeforeAnswer from exc
    received = 0
    status = 0
    body = b""
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            try:
                chunk = await stream.receive_some()
            except trio.BrokenResourceError as exc:
                if received == 0:
                    raise ClosedBeforeAnswer from exc
                raise
            if not chunk and received == 0:
                raise ClosedBeforeAnswer
            received += len(chunk)
            connection.receive_data(bytes(chunk))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body


# --- N workers serve from distinct pids ------------------------------------------------


async def test_three_workers_answer_from_three_pids_the_supervisors_children() -> None:
    async with supervising("--workers", "3", "--port", "0") as supervisor:
        serving = re.search(rb"3 workers serving: (\d+), (\d+), (\d+)\n", supervisor.child.stderr)
        assert serving is not None
        announced = {int(pid) for pid in serving.groups()}
        children = supervisor.workers()
        pids, _ = await answering(tcp(supervisor.port), lambda pids: len(pids) == 3)
        assert pids == children == announced
        assert supervisor.pid not in pids
        # Each worker in a session of its own: a Ctrl+C in the terminal reaches only
        # the supervisor, which tells them what to do.
        for pid in pids:
            info = proc(pid)
            assert info is not None
            assert info.sid == pid
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    stderr = supervisor.stderr
    assert stderr.count("Serving on http://127.0.0.1:") == 1  # the supervisor's only
    assert "Traceback" not in stderr
    assert "SIGTERM received: stopping 3 workers" in stderr


async def test_the_workers_run_the_http_engine_the_command_line_names() -> None:
    # h11, not 'auto': it differs from what auto finds in the h11-mypyc run of the suite.
    async with supervising("--workers", "2", "--port", "0", "--http", "h11") as supervisor:
        await answering(tcp(supervisor.port), lambda pids: len(pids) == 2)
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    engines = re.findall(r"^HTTP engine: (.*)$", supervisor.stderr, re.MULTILINE)
    assert engines == [f"h11 {h11.__version__}"] * 2, supervisor.stderr


async def test_a_killed_worker_is_replaced_while_the_others_serve() -> None:
    async with supervising("--workers", "3", "--port", "0") as supervisor:
        before = supervisor.workers()
        connect = tcp(supervisor.port)
        answers: list[tuple[float, int, int]] = []  # (time, status, pid), in order
        gate = trio.Lock()  # held around each request: none is in flight at the kill
        victim = min(before)

        async def requests(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            while True:
                async with gate:
                    status, pid = await fetch(connect)
                answers.append((trio.current_time(), status, pid))
                await trio.sleep(0.002)

        async with trio.open_nursery() as nursery:
            await nursery.start(requests)
            async with gate:
                os.kill(victim, signal.SIGKILL)
                await wait_until(lambda: not is_alive(victim), f"{victim} dead")
                killed_at = trio.current_time()
            after = await supervisor.wait_for_workers(
                lambda pids: len(pids) == 3 and victim not in pids, "a replacement"
            )
            [new] = after - before
            await answering(connect, lambda pids: new in pids)
            replaced_at = trio.current_time()
            nursery.cancel_scope.cancel()
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    # Every request was answered, by the two others while the replacement started.
    assert {status for _, status, _ in answers} == {200}
    gap = [pid for when, _, pid in answers if killed_at < when < replaced_at]
    first_new = gap.index(new) if new in gap else len(gap)
    assert first_new > 0, "no request was answered during the gap"
    assert set(gap[:first_new]) <= before - {victim}
    assert victim not in gap
    print(f"\nSIGKILLed worker: {first_new} requests answered by the other two meanwhile")
    line = f"worker {victim} died (killed by SIGKILL) after "
    assert line in supervisor.stderr, supervisor.stderr
    assert "Traceback" not in supervisor.stderr


def is_alive(pid: int) -> bool:
    info = proc(pid)
    return info is not None and info.state != "Z"


# --- A worker that cannot start ends the server ---------------------------------------


@pytest.mark.parametrize(
    ("app", "error"),
    [
        (
            "tests.programs.workers_import_error:app",
            "trioserve: importing tests.programs.workers_import_error failed: "
            "ModuleNotFoundError: No module named 'trioserve_no_such_module' "
            "(tests/programs/workers_import_error.py, line 5)",
        ),
        (
            "tests.programs.workers_lifespan_fails:app",
            "trioserve: ASGI lifespan startup failed: no database at db:5432",
        ),
    ],
    ids=["import-error", "lifespan-failure"],
)
@pytest.mark.parametrize("workers", ["1", "3"])
async def test_a_worker_that_fails_at_startup_ends_the_server_with_status_1(
    app: str, error: str, workers: str
) -> None:
    started = time.monotonic()
    async with supervising("--workers", workers, "--port", "0", app=app, ready=None) as supervisor:
        status = await supervisor.exit_status(bound=10)
    elapsed = time.monotonic() - started
    assert status == 1, supervisor.stderr
    assert elapsed < 10
    lines = supervisor.stderr.splitlines()
    assert "Traceback" not in supervisor.stderr
    failed = [line for line in lines if "[supervisor]" in line]
    assert len(failed) == 1, lines
    assert re.search(
        r"ERROR +\[supervisor\] worker \d+ failed to start \(exit status 1\): stopping$", failed[0]
    )
    others = [
        line
        for line in lines
        if "[supervisor]" not in line
        and not line.startswith(("Serving on ", "Interface: ", "HTTP engine: "))
    ]
    # The worker's one line; each worker that got as far says the same one.
    assert set(others) == {error}, lines
    if workers == "1":
        assert others == [error]
    assert "workers serving" not in supervisor.stderr


# --- Rolling restart under load --------------------------------------------------------


async def rolling_restart_under_load(
    supervisor: Supervised,
    connect: Connect,
    name: str,
    *,
    total: int = 5000,
    close_each: bool = False,
) -> Load:
    """Run the load through ``connect``, send SIGHUP at a tenth of it and again after
    the first ``restart done`` if a third of the load remains; then check that only
    new workers are left, and that they, and only they, answer (straight to the
    supervisor's port: nginx would keep using the upstream connections it holds).
    Prints the figures."""
    before = supervisor.workers()
    load = Load(connect, total=total, close_each=close_each)
    restarts: list[tuple[int, int]] = []  # answered at SIGHUP, at "restart done"

    async def restart(count: int) -> None:
        at = load.answered
        supervisor.signal(signal.SIGHUP)
        await supervisor.wait_for_count(b"restart done", count)
        restarts.append((at, load.answered))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run)
        await load.wait_answered(total // 10)
        await restart(1)
        if load.answered < total * 2 // 3:
            await restart(2)
    after = await supervisor.wait_for_workers(
        lambda pids: len(pids) == len(before) and not pids & before, "only new workers"
    )
    # Every pid answering now is new.
    answering_now, _ = await answering(tcp(supervisor.port), lambda pids: pids == after)
    through, _ = await answering(connect, lambda pids: len(pids) > 0)
    assert through <= after
    figures = (
        f"{load.summary(name)}; SIGHUP {len(restarts)}x under the load, at/done at answer "
        f"{restarts}; workers {sorted(before)} -> {sorted(after)}"
    )
    print(f"\n{figures}")
    assert load.errors == [], figures
    assert load.lost == 0, figures
    assert load.answered == total, figures
    assert load.statuses == Counter({200: total}), figures
    assert restarts, figures
    assert restarts[0][1] < total, f"the restart outlasted the load: {figures}"
    assert answering_now == after
    return load


async def test_rolling_restart_under_load_loses_no_request() -> None:
    """5000 GETs from 20 keep-alive clients at 700/s, SIGHUP twice: every one answered
    200, none lost. A stopping worker closes its idle kept-alive connections, and a
    request sent at that moment finds the connection closed before any byte of its
    answer: the client sends it again, as RFC 9112 (9.3.1) allows for idempotent
    requests and every client does; those are counted (``retried``)."""
    flags = ("--workers", "3", "--port", "0", "--shutdown-timeout", "5")
    async with supervising(*flags) as supervisor:
        load = await rolling_restart_under_load(supervisor, tcp(supervisor.port), "plain")
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    assert "Traceback" not in supervisor.stderr
    assert supervisor.stderr.count("SIGHUP received: restarting the workers one at a time") >= 1
    assert load.lost == 0


async def test_rolling_restart_drops_no_new_connection() -> None:
    """The same with one request per connection: a connection that the stopping
    worker accepted must be served, not closed unread (a reset its client cannot
    tell from a server gone away, and that browsers do not retry on a new
    connection). The issue names it: "drops connections that were accepted but not
    yet read"."""
    flags = ("--workers", "3", "--port", "0", "--shutdown-timeout", "5")
    async with supervising(*flags) as supervisor:
        load = await rolling_restart_under_load(
            supervisor, tcp(supervisor.port), "new connections", close_each=True
        )
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    assert load.lost == 0
    assert load.retried_fresh == 0, load.summary("new connections")


async def test_rolling_restart_behind_nginx_loses_no_request(tmp_path: Path) -> None:
    """The same load through nginx (docs/deploy/nginx.conf, upstream keepalive): nginx
    sends a GET again itself when its upstream connection closes unanswered, so no
    client sees a 502 and none has to retry."""
    flags = ("--workers", "3", "--port", "0", "--shutdown-timeout", "5")
    async with supervising(*flags) as supervisor:
        upstream = f"127.0.0.1:{supervisor.port}"
        async with running_nginx(tmp_path, upstream) as nginx:
            load = await rolling_restart_under_load(supervisor, tcp(nginx.port), "via nginx")
        # Each upstream failure nginx logs, it retried (on a new upstream connection:
        # a GET is idempotent), as no client saw a 502.
        failures = nginx.stderr.decode().count("while reading response header from upstream")
        print(f"nginx retried {failures} requests itself (its error log)")
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    assert load.statuses[502] == 0
    assert load.lost == 0
    assert load.retried == 0  # nginx keeps the client's connections: it never closes them


# --- SIGTERM drains; a second signal forces -----------------------------------------------


async def test_sigterm_lets_the_requests_in_flight_finish_then_exits_0() -> None:
    async with supervising("--workers", "3", "--port", "0", "--shutdown-timeout", "5") as sup:
        results: list[tuple[int, int]] = []

        async def slow() -> None:
            results.append(await fetch(tcp(sup.port), b"/slow"))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(slow)
            await sup.wait_for_count(b"handling /slow", 5)
            started = time.monotonic()
            sup.signal(signal.SIGTERM)
        status = await sup.exit_status()
        elapsed = time.monotonic() - started
    assert status == 0, sup.stderr
    assert [status for status, _ in results] == [200] * 5
    assert {pid for _, pid in results} <= sup.seen
    assert elapsed < 5  # the requests' second, then out
    assert "SIGTERM received: stopping 3 workers" in sup.stderr
    assert "Traceback" not in sup.stderr


async def test_a_second_sigterm_forces_a_long_drain_and_exits_1() -> None:
    async with supervising("--workers", "2", "--port", "0", "--shutdown-timeout", "60") as sup:
        outcomes: list[str] = []

        async def sleeper() -> None:
            try:
                status, _ = await fetch(tcp(sup.port), b"/sleep30")
                outcomes.append(str(status))
            except (trio.BrokenResourceError, OSError, IndexError, ValueError) as exc:
                outcomes.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(sleeper)
            await sup.wait_for_count(b"handling /sleep30", 2)
            sup.signal(signal.SIGTERM)
            # Both workers drain (each logs it), with the requests still in them.
            await sup.wait_for_count(b"shutting down gracefully", 2)
            started = time.monotonic()
            sup.signal(signal.SIGTERM)
            status = await sup.exit_status(bound=10)
            elapsed = time.monotonic() - started
    assert status == 1, sup.stderr
    assert elapsed < 5, sup.stderr
    assert "SIGTERM received again: forcing shutdown" in sup.stderr
    assert len(outcomes) == 2
    assert "200" not in outcomes  # cut off, not answered


async def test_sigterm_while_the_workers_start_stops_the_server() -> None:
    """A Ctrl+C or a SIGTERM is not held back until the application has started (its
    lifespan startup here takes 60 s): the workers are stopped, the supervisor exits
    within the shutdown timeout and its grace."""
    flags = ("--workers", "2", "--port", "0", "--shutdown-timeout", "2")
    app = "tests.programs.workers_slow_start:app"
    async with supervising(*flags, app=app, ready=None) as supervisor:
        await supervisor.wait_for_count(b"starting up in", 2)
        supervisor.workers()
        started = time.monotonic()
        supervisor.signal(signal.SIGTERM)
        with trio.move_on_after(9):  # 2 s, 5 s of grace, and some
            await supervisor.child.process.wait()
        elapsed = time.monotonic() - started
        stopped = supervisor.child.process.returncode is not None
        if not stopped:  # kill it all, by pid, so that nothing is left
            supervisor.child.process.kill()
            for pid in supervisor.seen:
                kill_session(pid)
        await supervisor.exit_status()
    assert stopped, f"still running 9 s after SIGTERM:\n{supervisor.stderr}"
    assert elapsed < 9
    assert "SIGTERM received: stopping 2 workers" in supervisor.stderr


async def test_workers_of_a_killed_supervisor_shut_down() -> None:
    async with supervising("--workers", "2", "--port", "0") as supervisor:
        workers = supervisor.workers()
        supervisor.signal(signal.SIGKILL)
        # Its workers see their control socket close, drain and exit: stderr's end.
        assert await supervisor.exit_status() == -signal.SIGKILL
        await wait_until(lambda: not any(map(is_alive, workers)), "the workers gone")
    assert supervisor.stderr.count("the supervisor is gone: shutting down") == 2


# --- SIGTTIN / SIGTTOU --------------------------------------------------------------------


async def test_sigttin_adds_a_worker_and_sigttou_removes_one() -> None:
    async with supervising("--workers", "3", "--port", "0") as supervisor:
        before = supervisor.workers()
        supervisor.signal(signal.SIGTTIN)
        four = await supervisor.wait_for_workers(lambda pids: len(pids) == 4, "a 4th worker")
        assert four > before
        [added] = four - before
        await answering(tcp(supervisor.port), lambda pids: added in pids)
        supervisor.signal(signal.SIGTTOU)
        three = await supervisor.wait_for_workers(lambda pids: len(pids) == 3, "3 workers")
        assert three < four
        await answering(tcp(supervisor.port), lambda pids: pids == three)
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    assert "SIGTTIN received: adding a worker (4)" in supervisor.stderr
    assert "SIGTTOU received: removing a worker (3)" in supervisor.stderr
    assert "died" not in supervisor.stderr


# --- --limit-max-requests -------------------------------------------------------------------


async def test_limit_max_requests_recycles_workers_without_a_failed_request() -> None:
    flags = ["--workers", "2", "--port", "0", "--limit-max-requests", "20"]
    # A worker compares its count with the limit on each heartbeat (a quarter of this).
    flags += ["--timeout-worker-healthcheck", "1"]
    async with supervising(*flags) as supervisor:
        before = supervisor.workers()
        connect = tcp(supervisor.port)
        statuses: Counter[int] = Counter()
        sent = retried = 0
        with trio.fail_after(BOUND):
            while sent < 100 or supervisor.workers() & before:
                status, _, again = await fetch_again_if_unanswered(connect)
                statuses[status] += 1
                sent += 1
                retried += again
                await trio.sleep(0.01)
        after = supervisor.workers()
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    print(
        f"\n--limit-max-requests 20: {sent} requests ({retried} sent again), "
        f"workers {sorted(before)} -> {sorted(after)}"
    )
    assert statuses == Counter({200: sent})
    assert not after & before
    assert "requests: asking to be replaced" in supervisor.stderr
    assert "died" not in supervisor.stderr


# --- The heartbeat ------------------------------------------------------------------------


async def test_a_worker_with_a_blocked_event_loop_is_killed_and_replaced() -> None:
    flags = ("--workers", "2", "--port", "0", "--timeout-worker-healthcheck", "1")
    async with supervising(*flags) as supervisor:
        before = supervisor.workers()
        connect = tcp(supervisor.port)
        async with trio.open_nursery() as nursery:

            async def block() -> None:
                with pytest.raises((trio.BrokenResourceError, IndexError, ValueError)):
                    await fetch(connect, b"/block")  # its worker dies with it

            nursery.start_soon(block)
            match = await supervisor.wait_for(rb"handling /block in (\d+)")
            blocked = int(match.group(1))
            [other] = before - {blocked}
            # The other worker answers while this one is stuck.
            statuses: Counter[int] = Counter()
            pids: set[int] = set()
            with trio.fail_after(BOUND):
                while b"sent no heartbeat" not in supervisor.child.stderr:
                    status, pid = await fetch(connect)
                    statuses[status] += 1
                    pids.add(pid)
                    await trio.sleep(0.01)
        after = await supervisor.wait_for_workers(
            lambda pids: len(pids) == 2 and blocked not in pids, "a replacement"
        )
        [new] = after - before
        await answering(connect, lambda pids: new in pids)
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr
    assert statuses[200] > 0
    assert set(statuses) == {200}
    assert pids == {other}
    stderr = supervisor.stderr
    assert f"worker {blocked} sent no heartbeat within 1 s: killing it" in stderr
    assert f"worker {blocked} died (killed by SIGKILL) after " in stderr


# --- --reuse-port and --uds -----------------------------------------------------------------


async def test_reuse_port_serves_from_each_worker_on_the_real_port() -> None:
    flags = ("--workers", "2", "--port", "0", "--reuse-port")
    async with supervising(*flags) as supervisor:
        assert supervisor.port != 0
        lines = re.findall(r"Serving on (\S+)", supervisor.stderr)
        assert lines == [f"http://127.0.0.1:{supervisor.port}"]
        pids: set[int] = set()
        with trio.fail_after(BOUND):
            for _ in range(200):  # the kernel hashes each connection's addresses
                status, pid = await fetch(tcp(supervisor.port))
                assert status == 200
                pids.add(pid)
                if len(pids) == 2:
                    break
        assert pids == supervisor.workers()
        supervisor.signal(signal.SIGTERM)
        assert await supervisor.exit_status() == 0, supervisor.stderr


async def test_workers_on_a_unix_socket_and_the_file_is_removed_after_sigterm() -> None:
    path = Path(f"/tmp/ts-{uuid.uuid4().hex[:12]}.sock")
    try:
        flags = ("--workers", "2", "--uds", str(path))
        async with supervising(*flags) as supervisor:
            assert re.search(SERVING_UNIX, supervisor.child.stderr).group(1) == bytes(path)  # type: ignore[union-attr]
            pids, _ = await answering(unix(path), lambda pids: len(pids) == 2)
            assert pids == supervisor.workers()
            assert exists(path)
            supervisor.signal(signal.SIGTERM)
            assert await supervisor.exit_status() == 0, supervisor.stderr
        assert not exists(path)
    finally:
        if exists(path):
            path.unlink()  # noqa: ASYNC240


# --- Command-line mistakes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (("--workers", "0"), "argument --workers: expected a whole number of at least 1, not '0'"),
        (
            ("--workers", "-1"),
            "argument --workers: expected a whole number of at least 1, not '-1'",
        ),
        (("--workers", "x"), "argument --workers: expected a whole number of at least 1, not 'x'"),
        (
            ("--workers", "2", "--reload"),
            "--reload restarts one process: it does not go with --workers",
        ),
        (("--reuse-port", "--port", "0"), "--reuse-port applies to --workers"),
    ],
    ids=["zero", "negative", "not-a-number", "reload-and-workers", "reuse-port-alone"],
)
async def test_a_bad_worker_flag_is_one_line_and_exit_2(flags: Sequence[str], line: str) -> None:
    async with supervising(*flags, ready=None) as supervisor:
        status = await supervisor.exit_status(bound=10)
        children = supervisor.workers()
    assert status == 2
    assert children == set()
    assert supervisor.stderr == f"trioserve: {line} (see python -m trioserve --help)\n"


# --- WebSockets: 1012 for a restart, 1001 for a stop -----------------------------------


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGHUP, 1012), (signal.SIGTERM, 1001)], ids=["HUP", "TERM"]
)
async def test_open_websockets_hear_a_restart_as_1012_and_a_stop_as_1001(
    signum: signal.Signals, code: int
) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    async with supervising("--workers", "1", "--port", "0") as sup:
        opened = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def client() -> int | None:
            with connect(f"ws://127.0.0.1:{sup.port}/ws", open_timeout=BOUND) as ws:
                ws.send("before")
                assert ws.recv(timeout=BOUND) == "before"
                trio.from_thread.run_sync(opened.set, trio_token=token)
                try:
                    ws.recv(timeout=BOUND)
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd is not None else None
            return None

        async with trio.open_nursery() as nursery:
            got: list[int | None] = []

            async def run_client() -> None:
                got.append(await trio.to_thread.run_sync(client))

            nursery.start_soon(run_client)
            with trio.fail_after(BOUND):
                await opened.wait()
            sup.signal(signum)
        assert got == [code], sup.stderr
        if signum == signal.SIGHUP:
            await sup.wait_for(rb"restart done")
            sup.signal(signal.SIGTERM)
        assert await sup.exit_status() == 0, sup.stderr
    assert "Traceback" not in sup.stderr
