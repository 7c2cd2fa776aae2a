"""``--reload``: a supervisor with one worker, restarted when a watched file changes.

Each test writes ``app.py`` into its temporary directory (the ``--app-dir``, so the
watched directory) and runs ``python -m trioserve app:app --reload`` on it with the
helpers of ``tests/test_workers.py``: a mark in its environment, every wait bounded,
and no process of it left in the process table at the end.

The watcher starts with the supervisor, and nothing says when it is watching: so a
test's first edit is written again until the answer changes (a bounded loop). The
later edits, and the ones that must change nothing, come after an edit that did
restart: the watcher is known to be watching then.
"""

from __future__ import annotations

import re
import signal
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from .processes import BOUND, GET, SERVING
from .test_workers import Supervised, is_alive, supervising

#: The app: ``VERSION PID`` for every request. The versions differ in length, so that
#: an edit within the second of the last one changes the file's size: else Python may
#: take the stale bytecode in __pycache__ (it checks the source's mtime in whole
#: seconds, and its size).
APP = """\
import os

import trioserve


async def app(request):
    body = "{version} " + str(os.getpid())
    return trioserve.Response(200, body=body.encode())
"""

#: Line 6 lacks its colon.
SYNTAX_ERROR = """\
import os

import trioserve


async def app(request)
    return trioserve.Response(200, body=b"broken")
"""

MISSING_IMPORT = """\
import trioserve_reload_no_such_module

import trioserve


async def app(request):
    return trioserve.Response(200, body=b"never")
"""


def app_text(version: str) -> str:
    return APP.format(version=version)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(app_text("v1"))
    return tmp_path


def reloading(app_dir: Path, *more: str) -> AbstractAsyncContextManager[Supervised]:
    flags = ("--reload", "--app-dir", str(app_dir), "--port", "0", "--shutdown-timeout", "2")
    return supervising(*flags, *more, app="app:app")


#: Defaults, given: so the tests but the first still run when a plain --reload cannot
#: (see the first).
INCLUDE_PY = ("--reload-include", "*.py", "--reload-exclude", "__pycache__")


async def answer(supervisor: Supervised) -> tuple[str, int]:
    """The version and the pid that answer ``GET /`` (sent again, as a browser would,
    when the connection closes before any byte of the answer: a stopping worker may
    close a connection it accepted unread; ``test_workers`` counts those)."""
    with trio.fail_after(BOUND):
        data = b""
        while not data:
            stream = await trio.open_tcp_stream("127.0.0.1", supervisor.port)
            async with stream:
                await stream.send_all(GET % b"/")
                try:
                    while chunk := await stream.receive_some():
                        data += chunk
                except trio.BrokenResourceError:
                    if data:
                        raise
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    version, pid = body.decode().split()
    return version, int(pid)


async def edit_until(supervisor: Supervised, path: Path, text: str, version: str) -> int:
    """Write ``text`` to ``path``, again each second, until ``version`` answers; its pid."""
    with trio.fail_after(BOUND):
        while True:
            await trio.Path(path).write_text(text)
            with trio.move_on_after(1):
                while True:
                    got, pid = await answer(supervisor)
                    if got == version:
                        return pid
                    await trio.sleep(0.02)


async def stop(supervisor: Supervised) -> None:
    supervisor.signal(signal.SIGTERM)
    assert await supervisor.exit_status() == 0, supervisor.stderr
    assert "Traceback" not in supervisor.stderr


async def test_an_edit_changes_the_answer_from_a_new_process(app_dir: Path) -> None:
    """The plain command line: ``--reload`` with no --reload-include/-exclude."""
    async with reloading(app_dir) as supervisor:
        assert re.search(r"watching \S+ for changes \((watchfiles|polling)\)", supervisor.stderr)
        version, first = await answer(supervisor)
        assert (version, supervisor.workers()) == ("v1", {first})
        second = await edit_until(supervisor, app_dir / "app.py", app_text("v2.0"), "v2.0")
        assert second != first
        await supervisor.wait_for(rb"restart done")
        await supervisor.wait_for_workers(lambda pids: pids == {second}, "the old one gone")
        assert not is_alive(first)
        await stop(supervisor)
    assert re.search(r"reload: \S*app\.py changed: restarting", supervisor.stderr)


async def test_a_syntax_error_is_one_line_and_the_old_process_goes_on(app_dir: Path) -> None:
    path = app_dir / "app.py"
    async with reloading(app_dir, *INCLUDE_PY) as supervisor:
        v2 = await edit_until(supervisor, path, app_text("v2.0"), "v2.0")
        await supervisor.wait_for(rb"restart done")
        await supervisor.wait_for_workers(lambda pids: pids == {v2}, "one worker")
        path.write_text(SYNTAX_ERROR)
        line = await supervisor.wait_for(rb"reload: (\S+), line (\d+): .*\n")
        assert line.group(0).decode().rstrip().endswith("(the running worker goes on)")
        assert (line.group(1), line.group(2)) == (bytes(path), b"6")
        # Nothing restarted: the same worker answers the same.
        assert await answer(supervisor) == ("v2.0", v2)
        assert supervisor.workers() == {v2}
        assert supervisor.stderr.count("changed: restarting") == 1
        v3 = await edit_until(supervisor, path, app_text("v3.00"), "v3.00")
        assert v3 != v2
        await stop(supervisor)
    lines = [line for line in supervisor.stderr.splitlines() if "reload:" in line]
    assert len(lines) == 3, lines  # restart, the syntax error in one line, restart


async def test_an_edit_that_cannot_be_imported_leaves_the_old_process_serving(
    app_dir: Path,
) -> None:
    path = app_dir / "app.py"
    async with reloading(app_dir, *INCLUDE_PY) as supervisor:
        v2 = await edit_until(supervisor, path, app_text("v2.0"), "v2.0")
        await supervisor.wait_for(rb"restart done")
        path.write_text(MISSING_IMPORT)  # compiles; fails at import
        await supervisor.wait_for(rb"restart abandoned: .*the running workers go on\n")
        assert await answer(supervisor) == ("v2.0", v2)
        await supervisor.wait_for_workers(lambda pids: pids == {v2}, "the old one alone")
        v3 = await edit_until(supervisor, path, app_text("v3.00"), "v3.00")
        assert v3 != v2
        await stop(supervisor)
    assert "No module named 'trioserve_reload_no_such_module'" in supervisor.stderr


async def test_a_file_that_is_not_watched_restarts_nothing(app_dir: Path) -> None:
    path = app_dir / "app.py"
    async with reloading(app_dir, *INCLUDE_PY) as supervisor:
        v2 = await edit_until(supervisor, path, app_text("v2.0"), "v2.0")
        await supervisor.wait_for(rb"restart done")
        await supervisor.wait_for_workers(lambda pids: pids == {v2}, "one worker")
        reloads = supervisor.stderr.count("reload:")
        (app_dir / "notes.txt").write_text("not python")
        (app_dir / "data.json").write_text("{}")
        # Something that does not happen: a while, longer than a batch of changes
        # (1.6 s at most) and a restart take.
        await trio.sleep(2.5)
        assert await answer(supervisor) == ("v2.0", v2)
        assert supervisor.workers() == {v2}
        assert supervisor.stderr.count("reload:") == reloads
        await stop(supervisor)


SLOW_APP = """\
import os
import time

import trioserve

time.sleep(3)  # a slow import: the edit below comes while the worker starts


async def app(request):
    body = "v1 " + str(os.getpid())
    return trioserve.Response(200, body=body.encode())
"""


async def test_an_edit_during_the_startup_restarts_once_the_worker_serves(
    tmp_path: Path,
) -> None:
    """Replacing a worker that has not served yet would read as its failure to start
    (and stop the server): the restart waits for the startup, then happens."""
    (tmp_path / "app.py").write_text(SLOW_APP)
    flags = ("--reload", "--app-dir", str(tmp_path), "--port", "0", "--shutdown-timeout", "2")
    async with supervising(*flags, *INCLUDE_PY, app="app:app", ready=None) as supervisor:
        await trio.sleep(1.5)  # the watcher watches; the worker still imports
        await trio.Path(tmp_path / "app.py").write_text(app_text("v2-edited-in-startup"))
        await supervisor.child.wait_for(rb"\[supervisor\] reload: [^\n]*restarting")
        serving = await supervisor.child.wait_for(SERVING)
        supervisor.child.port = int(serving.group(1))
        await supervisor.child.wait_for(rb"\[supervisor\] restart done")
        # The old worker may take a connection or two before its SIGTERM lands.
        with trio.fail_after(BOUND):
            while True:
                if (await answer(supervisor))[0] == "v2-edited-in-startup":
                    break
                await trio.sleep(0.05)
        await stop(supervisor)
    assert "failed to start" not in supervisor.stderr
