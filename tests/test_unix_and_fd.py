"""Serving Unix sockets, inherited descriptors and systemd's sockets, end to end.

``tests/test_listeners.py`` checks the listener functions alone; here ``serve`` and
the command line use them: a request over each kind of socket, what the application
sees of a Unix-socket client (nothing), the socket file's mode and removal, several
listeners at once, and real child processes given descriptors with ``pass_fds`` or by
``systemd-socket-activate``. Socket paths live in a short directory under /tmp: the
kernel limits them to about 107 bytes.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import trioserve
from trioserve import Config
from trioserve._cli import parse_args

from .processes import BOUND, GET, SERVING, ChildProcess
from .test_proxies import (
    HOST,
    INTERFACES,
    ask,
    first_fields,
    handler_for,
    native_where,
    seen,
    serving,
)

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.programs.where_app:handler"
#: The command line's line for a Unix socket, with the path.
SERVING_UNIX = rb"Serving on unix:(\S+) \(press CTRL\+C"


def exists(path: str | Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


async def ask_over_unix(path: str | Path, *headers: bytes) -> dict[str, object]:
    """What the application saw of a request over the Unix socket at ``path``."""
    with trio.fail_after(BOUND):
        stream = await trio.open_unix_socket(os.fspath(path))
    _, report = await ask(stream, *headers)
    return report


async def get(stream: trio.SocketStream, target: bytes = b"/") -> bytes:
    """The whole answer to ``GET target`` (the server closes after it)."""
    with trio.fail_after(BOUND):
        async with stream:
            await stream.send_all(GET % target)
            answer = b""
            while chunk := await stream.receive_some():
                answer += chunk
    return answer


def body_of(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer
    report: dict[str, object] = json.loads(body)
    return report


def stale_socket_file(path: Path) -> None:
    """A socket file whose server is gone: bound, closed, never removed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(path))
        dead.listen()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


# --- serve(uds=...) ---------------------------------------------------------------------


@pytest.mark.parametrize("interface", INTERFACES)
async def test_serve_on_a_unix_socket(
    sock_dir: Path, interface: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")
    path = str(sock_dir / "app.sock")
    handler, lifespan = handler_for(interface)
    async with serving(handler, lifespan=lifespan, uds=path, uds_permissions=0o660) as server:
        assert server.urls == [f"unix:{path}"]
        assert server.ports == []
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660
        report = await ask_over_unix(path)
    assert not exists(path)
    # No peer address on a Unix socket: no client (WSGI: no REMOTE_ADDR), and no
    # server address (WSGI's SERVER_NAME and SERVER_PORT come from Host then).
    server_seen = (HOST, 80) if interface == "wsgi" else None
    assert report == seen(None, server_seen, "http", HOST)
    assert first_fields(caplog) == [f"unix:{path}"]


async def test_unix_socket_permissions(sock_dir: Path) -> None:
    for mode in (0o600, 0o666):
        path = sock_dir / f"{mode:o}.sock"
        async with serving(uds=path, uds_permissions=mode):
            assert stat.S_IMODE(os.lstat(path).st_mode) == mode
            await ask_over_unix(path)
        assert not exists(path)


async def test_a_stale_socket_file_is_replaced(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    stale_socket_file(path)
    async with serving(uds=path):
        report = await ask_over_unix(path)
    assert report["client"] is None
    assert not exists(path)


async def test_a_live_servers_socket_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "live.sock"
    async with serving(uds=path):
        with trio.fail_after(BOUND), pytest.raises(trioserve.ListenerError) as info:
            await trioserve.serve(native_where, uds=path)
        assert isinstance(info.value, OSError)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == f"another server is listening on unix socket '{path}'"
        # The live server is untouched: its file is there and it still serves.
        await ask_over_unix(path)
    assert not exists(path)


async def test_a_path_that_is_not_a_socket_is_refused_and_left_alone(sock_dir: Path) -> None:
    path = sock_dir / "data.txt"
    path.write_text("precious")
    with trio.fail_after(BOUND), pytest.raises(trioserve.ListenerError, match="is not a socket"):
        await trioserve.serve(native_where, uds=path)
    assert path.read_text() == "precious"


@pytest.mark.parametrize("how", ["listeners", "uds-and-listeners"])
async def test_tcp_and_unix_at_once_and_shutdown_closes_both(sock_dir: Path, how: str) -> None:
    path = str(sock_dir / "both.sock")
    tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
    if how == "listeners":
        listeners = [*tcp, await trioserve.open_unix_listener(path)]
        serve = functools.partial(trioserve.serve, native_where, listeners=listeners)
    else:
        serve = functools.partial(trioserve.serve, native_where, listeners=tcp, uds=path)
    async with trio.open_nursery() as nursery:
        server: trioserve.Server = await nursery.start(serve)
        [port] = server.ports
        assert server.urls == [f"http://127.0.0.1:{port}", f"unix:{path}"]
        over_tcp = body_of(await get(await trio.open_tcp_stream("127.0.0.1", port)))
        over_unix = await ask_over_unix(path)
        # An idle connection on each: the graceful shutdown closes it at once.
        idle = [await trio.open_tcp_stream("127.0.0.1", port), await trio.open_unix_socket(path)]
        with trio.fail_after(BOUND):
            await server.shutdown()
            for stream in idle:
                async with stream:
                    assert await stream.receive_some() == b""
    assert over_tcp["server"] == ["127.0.0.1", port]
    assert over_unix["client"] is None
    with pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", port)
    assert not exists(path)
    with pytest.raises(FileNotFoundError):
        await trio.open_unix_socket(path)


@pytest.mark.parametrize(
    ("allowed", "expected", "logged"),
    [
        (("127.0.0.1",), seen(None, None, "http", HOST), "unix:{path}"),
        (("unix",), seen(("203.0.113.9", 0), None, "https", HOST), "203.0.113.9"),
    ],
    ids=["unix-untrusted-by-default", "unix-trusted"],
)
async def test_proxy_headers_over_a_unix_socket(
    sock_dir: Path,
    caplog: pytest.LogCaptureFixture,
    allowed: tuple[str, ...],
    expected: dict[str, object],
    logged: str,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")
    path = str(sock_dir / "proxied.sock")
    config = Config(forwarded_allow_ips=allowed)
    async with serving(config=config, uds=path):
        report = await ask_over_unix(
            path, b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-Proto: https"
        )
    assert report == expected
    assert first_fields(caplog) == [logged.format(path=path)]


# --- Child processes ----------------------------------------------------------------------


@asynccontextmanager
async def running_with(
    command: Sequence[str],
    *,
    pass_fds: Sequence[int] = (),
    env: dict[str, str] | None = None,
    ready: bytes | None = SERVING,
) -> AsyncIterator[ChildProcess]:
    """As ``tests.processes.running``, with descriptors passed on and an environment."""
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            list(command), stderr=subprocess.PIPE, pass_fds=pass_fds, env=env, cwd=ROOT
        )
        child = ChildProcess(process)
        nursery.start_soon(child.collect)
        try:
            if ready is not None:
                match = await child.wait_for(ready)
                if match.groups() and match.group(1).isdigit():
                    child.port = int(match.group(1))
            yield child
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(BOUND):
                await process.wait()
            nursery.cancel_scope.cancel()


def trioserve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trioserve", APP, *args]


async def run_to_exit(*args: str, pass_fds: Sequence[int] = ()) -> tuple[int, str]:
    """Run the command line to its end; its status and stderr."""
    async with running_with(trioserve_command(*args), pass_fds=pass_fds, ready=None) as child:
        status = await child.wait()
    return status, child.stderr.decode()


def without_systemd(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if not name.startswith("LISTEN_")}


async def test_the_command_line_refuses_a_live_servers_socket(sock_dir: Path) -> None:
    path = sock_dir / "live.sock"
    async with serving(uds=path):
        status, stderr = await run_to_exit("--uds", str(path))
        await ask_over_unix(path)  # still served
    assert status == 1
    assert "Traceback" not in stderr
    assert (
        stderr.splitlines()[-1]
        == f"trioserve: another server is listening on unix socket '{path}'"
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_command_line_on_a_unix_socket(sock_dir: Path, signum: int) -> None:
    path = sock_dir / "cli.sock"
    stale_socket_file(path)
    command = trioserve_command("--uds", str(path), "--uds-permissions", "660")
    async with running_with(command, ready=SERVING_UNIX) as cli:
        assert (await cli.wait_for(SERVING_UNIX)).group(1) == os.fsencode(path)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        report = body_of(await get(await trio.open_unix_socket(str(path))))
        cli.process.send_signal(signum)
        assert await cli.wait() == 0
    assert (report["client"], report["server"]) == (None, None)
    assert not exists(path)
    assert b"Serving on http" not in cli.stderr  # --uds alone binds no TCP port


def test_uds_permissions_without_uds_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["m:app", "--uds-permissions", "660"])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        "trioserve: --uds-permissions applies to --uds (see trioserve --help)\n"
    )


async def test_the_command_line_on_a_unix_socket_and_a_port(sock_dir: Path) -> None:
    path = sock_dir / "and-port.sock"
    async with running_with(trioserve_command("--uds", str(path), "--port", "0")) as cli:
        await cli.wait_for(SERVING_UNIX)
        assert len(cli.stderr.split(b"Serving on ")) == 3
        over_tcp = body_of(await get(await cli.connect()))
        over_unix = body_of(await get(await trio.open_unix_socket(str(path))))
        cli.process.send_signal(signal.SIGTERM)
        assert await cli.wait() == 0
    assert over_tcp["server"] == ["127.0.0.1", cli.port]
    assert over_unix["client"] is None
    assert not exists(path)


async def test_the_command_line_serves_inherited_descriptors(sock_dir: Path) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    path = str(sock_dir / "inherited.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen()
    fds = (tcp.fileno(), unix.fileno())
    args = ("--fd", str(fds[0]), "--fd", str(fds[1]))
    with tcp, unix:
        async with running_with(trioserve_command(*args), pass_fds=fds) as cli:
            await cli.wait_for(SERVING_UNIX)
            # Only the child holds the sockets now.
            tcp.close()
            unix.close()
            assert cli.port == port
            over_tcp = body_of(await get(await cli.connect()))
            over_unix = body_of(await get(await trio.open_unix_socket(path)))
            cli.process.send_signal(signal.SIGTERM)
            assert await cli.wait() == 0
    assert f"Serving on unix:{path} (press CTRL+C".encode() in cli.stderr
    assert over_tcp["server"] == ["127.0.0.1", port]
    assert over_unix["client"] is None
    assert b"Serving on http://127.0.0.1:8000" not in cli.stderr  # --fd alone: no TCP port


async def test_a_descriptor_that_is_not_a_listening_socket_is_one_line() -> None:
    bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with bound:
        bound.bind(("127.0.0.1", 0))  # bound, never listening
        fd = bound.fileno()
        status, stderr = await run_to_exit("--fd", str(fd), pass_fds=[fd])
    assert (status, stderr) == (
        1,
        f"trioserve: file descriptor {fd} is not listening (call listen() before passing it)\n",
    )
    status, stderr = await run_to_exit("--fd", "97")  # nothing passed: not open
    assert (status, stderr) == (1, "trioserve: file descriptor 97 is not open\n")


# --- systemd socket activation --------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_socket_activation_by_systemd_socket_activate() -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure
            pytest.fail("systemd-socket-activate is not installed")
        pytest.skip("systemd-socket-activate is not installed")
    env = without_systemd(os.environ)
    for _ in range(5):  # a free port may be taken before the tool binds it: try another
        port = free_port()
        command = [tool, "-l", f"127.0.0.1:{port}", sys.executable, "-m", "trioserve", APP]
        async with running_with(command, env=env, ready=None) as child:
            listening = await child.wait_for(rb"Listening on .*|Failed to .*")
            if not listening.group(0).startswith(b"Listening on "):
                assert await child.wait() != 0
                continue
            # The tool execs the server on the first connection, which it then accepts.
            answer = await get(await trio.open_tcp_stream("127.0.0.1", port))
            await child.wait_for(SERVING)
            child.process.send_signal(signal.SIGTERM)
            assert await child.wait() == 0
        break
    else:
        pytest.fail(f"no free port for systemd-socket-activate: {child.stderr.decode()}")
    assert f"Serving on http://127.0.0.1:{port} (press CTRL+C".encode() in child.stderr
    report = body_of(answer)
    assert report["server"] == ["127.0.0.1", port]
    # The server unset LISTEN_FDS and LISTEN_PID: the application's children cannot
    # take the sockets for theirs.
    assert report["environ"] == {"LISTEN_FDS": None, "LISTEN_PID": None}


# What systemd does between fork and exec: the sockets on descriptors 3, 4, ...,
# LISTEN_FDS and LISTEN_PID (its own pid, which exec keeps) set; then the server.
ACTIVATE = """
import fcntl, os, sys
passed = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in passed]
for fd in passed:
    os.close(fd)
for target, fd in enumerate(high, start=3):
    os.dup2(fd, target)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(passed))
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "trioserve", *sys.argv[2:]])
"""


async def test_socket_activation_emulated(sock_dir: Path) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    path = str(sock_dir / "activated.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(path)
    unix.listen()
    fds = (tcp.fileno(), unix.fileno())
    command = [sys.executable, "-c", ACTIVATE, f"{fds[0]},{fds[1]}", APP]
    with tcp, unix:
        async with running_with(command, pass_fds=fds, env=without_systemd(os.environ)) as child:
            await child.wait_for(SERVING_UNIX)
            tcp.close()
            unix.close()
            over_tcp = body_of(await get(await child.connect()))
            over_unix = body_of(await get(await trio.open_unix_socket(path)))
            child.process.send_signal(signal.SIGTERM)
            assert await child.wait() == 0
    assert child.port == port
    assert over_tcp["environ"] == {"LISTEN_FDS": None, "LISTEN_PID": None}
    assert over_unix["client"] is None
    assert b"127.0.0.1:8000" not in child.stderr  # systemd's sockets replace the default


async def test_a_port_with_uds_serves_both(sock_dir: Path) -> None:
    """``serve(handler, 0, uds=path)``: a port named with a Unix socket is served too
    (without a port, the Unix socket alone, as in the tests above)."""
    path = sock_dir / "both.sock"
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            server: trioserve.Server = await nursery.start(
                functools.partial(trioserve.serve, native_where, 0, host="127.0.0.1", uds=path)
            )
            assert server.urls == [f"unix:{path}", f"http://127.0.0.1:{server.ports[0]}"]
            await server.shutdown()
    assert not path.exists()


def test_the_same_descriptor_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        fd = str(sock.fileno())
        with pytest.raises(SystemExit) as info:
            parse_args(["m:app", "--fd", fd, "--fd", fd])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("trioserve: --fd names the same descriptor twice")
