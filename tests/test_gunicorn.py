"""The gunicorn worker class, run by real gunicorn arbiters on 127.0.0.1.

Each test starts ``python -m gunicorn -k trioserve.workers.TrioserveWorker`` on a free
port (``--bind 127.0.0.1:0``; the port is read from gunicorn's "Listening at" line)
with an application from ``programs/gunicorn_apps.py``, whose responses carry the
worker's pid. Waits are for log lines, bounded by ``BOUND`` (``tests/processes.py``);
after each test every worker gunicorn booted is gone (the process table is read), and
any that is not is killed so that no test leaves processes behind.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from .conftest import HIDE_H11_MYPYC
from .processes import BOUND, GET, ChildProcess, running

pytest.importorskip("gunicorn")

ROOT = Path(__file__).resolve().parent.parent
APPS = "tests.programs.gunicorn_apps"
#: gunicorn's line once it has bound its sockets, with the port.
LISTENING = rb"Listening at: https?://127\.0\.0\.1:(\d+)\b"
BOOTED = rb"Booting worker with pid: (\d+)"


def booted(child: ChildProcess) -> list[int]:
    """The pids of every worker gunicorn has booted so far."""
    return [int(pid) for pid in re.findall(BOOTED, child.stderr)]


def running_pids(pids: list[int]) -> list[int]:
    """Those of ``pids`` still in the process table (zombies excluded: they have exited)."""
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        state = stat.rpartition(")")[2].split()[0]
        if state != "Z" and b"gunicorn" in cmdline:
            alive.append(pid)
    return alive


async def wait_exited(pids: list[int]) -> None:
    """Wait until each of ``pids`` has exited (a pidfd becomes readable then)."""
    with trio.fail_after(BOUND):
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)


@asynccontextmanager
async def gunicorn(
    app: str,
    *options: str,
    ready: bytes = LISTENING,
    worker: str = "trioserve.workers.TrioserveWorker",
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[ChildProcess]:
    """Run gunicorn with the worker class on a free port; yield once it listens."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        worker,
        "--bind",
        "127.0.0.1:0",
        "--no-control-socket",
        *options,
        app,
    ]
    child: ChildProcess | None = None
    try:
        async with running(command, cwd=ROOT, ready=ready, env=env) as child:
            yield child
    finally:
        if child is not None:
            for pid in running_pids(booted(child)):  # the arbiter was killed: orphans
                os.kill(pid, signal.SIGKILL)


async def get(child: ChildProcess, path: str = "/") -> tuple[int, str]:
    """GET ``path`` on a new connection: the answering worker's pid and the path."""
    answer = await child.get(path.encode())
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    pid, _, echoed = answer.partition(b"\r\n\r\n")[2].decode().partition(" ")
    return int(pid), echoed


async def stop(child: ChildProcess) -> None:
    """SIGTERM the arbiter: it exits 0 and leaves no worker running."""
    child.process.send_signal(signal.SIGTERM)
    assert await child.wait() == 0, child.stderr.decode()
    assert running_pids(booted(child)) == []


@pytest.mark.parametrize("app", ["asgi", "wsgi", "native"])
async def test_two_workers_answer_from_two_pids(app: str, tmp_path: Path) -> None:
    access_log = tmp_path / "access.log"
    async with gunicorn(
        f"{APPS}:{app}", "--workers", "2", "--access-logfile", str(access_log)
    ) as child:
        pids: set[int] = set()
        with trio.fail_after(BOUND):
            while len(pids) < 2:
                pid, path = await get(child, "/hello")
                assert path == "/hello"
                pids.add(pid)
        assert pids <= set(booted(child))
        await stop(child)
    # trioserve's access lines (Combined) went to gunicorn's --access-logfile.
    line = r'127\.0\.0\.1 - - \[.*\] "GET /hello HTTP/1\.1" 200 '
    assert re.search(line, access_log.read_text())


async def test_sighup_replaces_the_workers_while_requests_are_answered() -> None:
    async with gunicorn(f"{APPS}:asgi", "--workers", "2") as child:
        await child.wait_for(rb"(?s)(Booting worker.*){2}")
        old = set(booted(child))
        answered_by: list[int] = []

        async def keep_asking() -> None:
            while True:
                answered_by.append((await get(child))[0])  # a failure fails the test

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_asking)
            child.process.send_signal(signal.SIGHUP)
            for pid in old:
                await child.wait_for(rb"Worker exiting \(pid: %d\)" % pid)
            nursery.cancel_scope.cancel()
        assert answered_by  # and none failed
        # gunicorn may stop an old worker before the second new one says it booted.
        await child.wait_for(rb"(?s)(Booting worker.*){4}")
        new = set(booted(child)) - old
        assert len(new) == 2
        await wait_exited(list(old))
        assert running_pids(list(old)) == []
        for _ in range(10):
            assert (await get(child))[0] in new
        await stop(child)


async def test_sigterm_lets_the_request_in_flight_finish() -> None:
    async with gunicorn(f"{APPS}:asgi", "--graceful-timeout", "10") as child:
        with trio.fail_after(BOUND):
            stream = await trio.open_tcp_stream("127.0.0.1", child.port)
        async with stream:
            await stream.send_all(GET % b"/slow")
            await child.wait_for(rb"handling /slow")
            child.process.send_signal(signal.SIGTERM)
            answer = b""
            with trio.fail_after(BOUND):
                while chunk := await stream.receive_some():
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b" /slow")
        assert await child.wait() == 0
        assert b"shutting down: 1 connection in flight" in child.stderr
        assert running_pids(booted(child)) == []


async def test_max_requests_recycles_the_worker_without_a_failure() -> None:
    options = ("--max-requests", "5", "--max-requests-jitter", "0")
    async with gunicorn(f"{APPS}:wsgi", *options) as child:
        pids = [(await get(child))[0] for _ in range(12)]  # each one answered
        assert len(set(pids[:5])) == 1
        assert pids[5] != pids[0]
        assert b"Autorestarting worker after current request." in child.stderr
        await stop(child)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_failed_startup_stops_gunicorn_instead_of_looping(workers: int) -> None:
    app = "tests.programs.gunicorn_failing:app"
    async with gunicorn(app, "--workers", str(workers)) as child:
        status = await child.wait()
        # 3: gunicorn's WORKER_BOOT_ERROR. When two workers fail together, gunicorn's
        # arbiter meets the second failure inside its own halt() and exits 1 with a
        # traceback (gunicorn's behaviour with any worker class).
        assert status == 3 if workers == 1 else status in (1, 3)
        assert b"database unreachable" in child.stderr
        assert b"Worker failed to boot." in child.stderr
        assert len(booted(child)) <= workers  # not one more: no restart loop
        assert running_pids(booted(child)) == []


async def test_an_application_of_no_known_interface_stops_gunicorn() -> None:
    async with gunicorn(f"{APPS}:not_an_app") as child:
        assert await child.wait() == 4  # gunicorn's APP_LOAD_ERROR
        assert b"no interface trioserve knows" in child.stderr


async def test_a_subclass_names_the_interface_and_changes_the_config() -> None:
    worker = "tests.programs.gunicorn_workers.SmallBodies"
    async with gunicorn(f"{APPS}:asgi", worker=worker) as child:
        await child.wait_for(rb"Serving ASGI 3 \(SmallBodies\.interface\)")
        assert (await get(child, "/small"))[1] == "/small"
        with trio.fail_after(BOUND):
            stream = await child.connect()
            async with stream:
                await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n")
                assert (await stream.receive_some()).startswith(b"HTTP/1.1 413 ")
        await stop(child)


async def test_the_worker_logs_its_http_engine_and_a_subclass_chooses_one(
    http_engine: str,
) -> None:
    # The default worker: 'auto', which is the engine of this run of the suite.
    async with gunicorn(f"{APPS}:native") as child:
        await child.wait_for(rb"HTTP engine: " + re.escape(http_engine.encode()) + rb" \d")
        await get(child)
        await stop(child)
    # A subclass names one (h11 is installed everywhere; h11-mypyc is hidden in the h11 run).
    async with gunicorn(
        f"{APPS}:native", worker="tests.programs.gunicorn_workers.PureH11"
    ) as child:
        await child.wait_for(rb"HTTP engine: h11 \d")
        await get(child)
        await stop(child)


async def test_an_http_engine_that_is_not_installed_stops_gunicorn() -> None:
    env = {**os.environ, "PYTHONPATH": HIDE_H11_MYPYC}
    worker = "tests.programs.gunicorn_workers.CompiledH11"
    async with gunicorn(f"{APPS}:native", worker=worker, env=env) as child:
        assert await child.wait() == 3  # WORKER_BOOT_ERROR: the arbiter stops
    assert b"the HTTP engine h11-mypyc cannot be imported" in child.stderr
    assert b"pip install 'trioserve[fast]'" in child.stderr
    assert b"Traceback" not in child.stderr


async def test_tls_with_gunicorns_certificate_settings(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    options = ("--certfile", str(tmp_path / "cert.pem"), "--keyfile", str(tmp_path / "key.pem"))
    async with gunicorn(f"{APPS}:asgi", *options) as child:
        assert b"Listening at: https://" in child.stderr
        context = ssl.create_default_context()
        ca.configure_trust(context)
        with trio.fail_after(BOUND):
            async with httpx.AsyncClient(verify=context, trust_env=False) as client:
                response = await client.get(f"https://127.0.0.1:{child.port}/tls")
        assert response.status_code == 200
        assert response.text.endswith(" /tls")
        assert response.extensions["http_version"] == b"HTTP/1.1"
        await stop(child)


async def test_a_certificate_that_does_not_load_stops_gunicorn(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(tmp_path / "key.pem")  # another's
    options = ("--certfile", str(tmp_path / "cert.pem"), "--keyfile", str(tmp_path / "key.pem"))
    async with gunicorn(f"{APPS}:asgi", *options) as child:
        assert await child.wait() == 3
        assert b"TLS: cannot load the certificate" in child.stderr
        assert len(booted(child)) == 1


async def test_a_unix_socket_and_a_tcp_port(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    bind = ("--bind", f"unix:{path}")
    async with gunicorn(f"{APPS}:asgi", *bind, ready=LISTENING) as child:
        with trio.fail_after(BOUND):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(GET % b"/unix")
                answer = b""
                while chunk := await stream.receive_some():
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b" /unix")
        assert (await get(child, "/tcp"))[1] == "/tcp"
        await stop(child)
    assert not path.exists()  # the arbiter removed its socket file


async def test_a_blocked_event_loop_misses_the_heartbeat_and_is_replaced() -> None:
    async with gunicorn(f"{APPS}:asgi", "--timeout", "2") as child:
        await child.wait_for(BOOTED)
        [first] = booted(child)

        async def blocked_request() -> None:
            stream = await child.connect()
            async with stream:
                await stream.send_all(GET % b"/block")
                with trio.move_on_after(BOUND):
                    try:
                        while await stream.receive_some():
                            pass
                    except trio.BrokenResourceError:  # reset as the worker dies
                        pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_request)
            await child.wait_for(rb"handling /block")
            await child.wait_for(rb"WORKER TIMEOUT \(pid:%d\)" % first)
            await child.wait_for(rb"(?s)(Booting worker.*){2}")
            pid, _ = await get(child)
            assert pid != first
            await wait_exited([first])
            nursery.cancel_scope.cancel()
        await stop(child)
