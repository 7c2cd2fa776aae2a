"""Unix sockets, inherited descriptors and systemd activation (real sockets)."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import stat
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from trioserve._listeners import (
    ListenerError,
    UnixSocketListener,
    describe_listener,
    fd_listener,
    open_unix_listener,
    systemd_listeners,
)

from .processes import BOUND


async def exchange(
    listener: trio.SocketListener | UnixSocketListener, address: str | tuple[str, int]
) -> None:
    """Connect to ``listener``, accept, and pass a few bytes each way."""
    client = trio.socket.socket(listener.socket.family, socket.SOCK_STREAM)
    with trio.fail_after(BOUND):
        await client.connect(address)
        async with trio.SocketStream(client) as client_stream, await listener.accept() as server:
            await client_stream.send_all(b"ping")
            assert await server.receive_some(4) == b"ping"
            await server.send_all(b"pong")
            assert await client_stream.receive_some(4) == b"pong"


def exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    return True


def ipv6_loopback() -> socket.socket:
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        sock.bind(("::1", 0))
    except OSError as exc:
        sock.close()
        pytest.skip(f"no IPv6 loopback on this host: {exc}")
    return sock


# --- open_unix_listener ---------------------------------------------------------------


async def test_unix_listener_binds_serves_and_removes_its_file(sock_dir: Path) -> None:
    path = str(sock_dir / "app.sock")
    listener = await open_unix_listener(path, permissions=0o660)
    assert listener.path == path
    assert listener.socket.family == socket.AF_UNIX
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert os.stat(path).st_mode & 0o777 == 0o660
    await exchange(listener, path)
    await listener.aclose()
    assert not exists(path)
    await listener.aclose()  # a second close is harmless


async def test_unix_listener_takes_a_path_object(sock_dir: Path) -> None:
    path = sock_dir / "app.sock"
    listener = await open_unix_listener(path, permissions=0o600)
    assert listener.path == str(path)
    assert path.stat().st_mode & 0o777 == 0o600
    await listener.aclose()
    assert not path.exists()


async def test_stale_socket_file_is_replaced(sock_dir: Path) -> None:
    path = str(sock_dir / "app.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen()
    dead.close()  # as a killed server: the file stays, nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    listener = await open_unix_listener(path)
    await exchange(listener, path)
    await listener.aclose()


async def test_live_socket_is_refused(sock_dir: Path) -> None:
    path = str(sock_dir / "app.sock")
    first = await open_unix_listener(path)
    with pytest.raises(ListenerError) as info:
        await open_unix_listener(path)
    assert str(info.value) == f"another server is listening on unix socket '{path}'"
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EADDRINUSE
    # The probe's connection sits in the backlog; the first server still works.
    probe = await first.accept()
    await probe.aclose()
    await exchange(first, path)
    await first.aclose()


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
async def test_path_that_is_not_a_socket_is_left_alone(sock_dir: Path, kind: str) -> None:
    path = sock_dir / "app.sock"
    if kind == "file":
        path.write_text("precious")
    elif kind == "directory":
        path.mkdir()
    else:
        target = sock_dir / "target.sock"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(target))
        dead.close()
        path.symlink_to(target)
    with pytest.raises(ListenerError) as info:
        await open_unix_listener(path)
    assert str(info.value) == f"'{path}' exists and is not a socket"
    if kind == "file":
        assert path.read_text() == "precious"
    elif kind == "directory":
        assert path.is_dir()
    else:
        assert path.is_symlink()
        assert (sock_dir / "target.sock").exists()


async def test_bind_failure_is_a_listener_error(sock_dir: Path) -> None:
    path = sock_dir / "missing" / "app.sock"
    with pytest.raises(ListenerError, match=r"^cannot bind unix socket '.*app\.sock': "):
        await open_unix_listener(path)


async def test_old_listener_does_not_remove_a_newer_socket(sock_dir: Path) -> None:
    path = str(sock_dir / "app.sock")
    old = await open_unix_listener(path)
    os.unlink(path)  # e.g. a deploy cleaned up, and a new server started
    new = await open_unix_listener(path)
    await old.aclose()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    await exchange(new, path)
    await new.aclose()
    assert not exists(path)


# --- fd_listener ----------------------------------------------------------------------


async def test_fd_listener_ipv4() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    address = sock.getsockname()
    fd = sock.detach()
    listener = fd_listener(fd)
    assert listener.socket.family == socket.AF_INET
    assert listener.socket.fileno() == fd
    assert not os.get_inheritable(fd)
    assert describe_listener(listener) == f"http://127.0.0.1:{address[1]}"
    await exchange(listener, address)
    await listener.aclose()
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # the listener owned the descriptor


async def test_fd_listener_ipv6() -> None:
    sock = ipv6_loopback()
    sock.listen()
    address = sock.getsockname()[:2]
    listener = fd_listener(sock.detach())
    assert listener.socket.family == socket.AF_INET6
    assert describe_listener(listener) == f"http://[::1]:{address[1]}"
    await exchange(listener, address)
    await listener.aclose()


async def test_fd_listener_unix(sock_dir: Path) -> None:
    path = str(sock_dir / "inherited.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    listener = fd_listener(sock.detach())
    assert listener.socket.family == socket.AF_UNIX
    assert describe_listener(listener) == f"unix:{path}"
    await exchange(listener, path)
    await listener.aclose()


async def test_fd_listener_refuses_a_closed_descriptor() -> None:
    fd = os.dup(0)
    os.close(fd)
    with pytest.raises(ListenerError) as info:
        fd_listener(fd)
    assert str(info.value) == f"file descriptor {fd} is not open"
    with pytest.raises(ListenerError, match=r"^file descriptor -1 is not open$"):
        fd_listener(-1)


async def test_fd_listener_refuses_a_pipe() -> None:
    read, write = os.pipe()
    try:
        with pytest.raises(ListenerError) as info:
            fd_listener(read)
        assert str(info.value) == f"file descriptor {read} is not a socket"
        os.fstat(read)  # still open: refused descriptors are left alone
    finally:
        os.close(read)
        os.close(write)


async def test_fd_listener_refuses_a_udp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with pytest.raises(ListenerError) as info:
            fd_listener(udp.fileno())
        assert str(info.value) == f"file descriptor {udp.fileno()} is not a stream socket"
        assert udp.getsockname()[0] == "127.0.0.1"  # still open


async def test_fd_listener_refuses_a_socket_that_is_not_listening() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        with pytest.raises(ListenerError) as info:
            fd_listener(tcp.fileno())
        assert str(info.value) == (
            f"file descriptor {tcp.fileno()} is not listening (call listen() before passing it)"
        )
        tcp.listen()  # still open, still ours


# --- systemd_listeners ----------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "2"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "2"},  # meant for another process
        {"LISTEN_PID": str(os.getpid())},
        {"LISTEN_PID": "1", "LISTEN_FDS": "oops"},  # not ours: not even parsed
    ],
)
def test_systemd_without_sockets_for_us(environ: dict[str, str]) -> None:
    before = dict(environ)
    assert systemd_listeners(environ) == []
    assert environ == before  # a given mapping is only read


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "me", "LISTEN_FDS": "1"}, "LISTEN_PID='me' is not a number"),
        ({"LISTEN_PID": "-1", "LISTEN_FDS": "1"}, "LISTEN_PID='-1' is not a number"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "one"}, "LISTEN_FDS='one' is not a number"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": " 1"}, "LISTEN_FDS=' 1' is not a number"),
    ],
)
def test_systemd_malformed_variables(environ: dict[str, str], message: str) -> None:
    environ = {name: value.format(pid=os.getpid()) for name, value in environ.items()}
    with pytest.raises(ListenerError) as info:
        systemd_listeners(environ)
    assert str(info.value) == message


def test_systemd_unsets_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert systemd_listeners(unset_environment=False) == []
    assert {name: os.environ[name] for name in variables} == variables
    assert systemd_listeners() == []
    assert not set(variables) & set(os.environ)


# The child moves the passed sockets to descriptors 3 and 4 (first out of the way, in
# case one already sits on 3 or 4), names itself in LISTEN_PID, as systemd does
# between fork and exec, and answers one connection on each socket.
CHILD = """
import fcntl, os, sys
import trio
from trioserve._listeners import systemd_listeners

passed = [int(fd) for fd in sys.argv[1:]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in passed]
for fd in passed:
    os.close(fd)
for target, fd in enumerate(high, start=3):
    os.dup2(fd, target)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())

async def main():
    listeners = systemd_listeners()
    left = sorted(name for name in os.environ if name.startswith("LISTEN_"))
    for listener in listeners:
        fd = listener.socket.fileno()
        inheritable = os.get_inheritable(fd)
        async with await listener.accept() as stream:
            data = await stream.receive_some()
            await stream.send_all(repr((data, fd, inheritable, left)).encode())
        await listener.aclose()

trio.run(main)
"""


async def test_systemd_socket_activation_in_a_child(sock_dir: Path) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    unix_path = str(sock_dir / "activated.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    env = {name: value for name, value in os.environ.items() if not name.startswith("LISTEN_")}
    env |= {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"}
    fds = (tcp.fileno(), unix.fileno())
    command = [sys.executable, "-c", CHILD, *map(str, fds)]
    answers = []
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(
                partial(
                    trio.run_process,
                    command,
                    pass_fds=fds,
                    env=env,
                    cwd=Path(__file__).parent.parent,
                    stdout=subprocess.DEVNULL,
                    capture_stderr=True,
                    check=False,
                )
            )
            # Only the child holds the sockets now: if it dies, clients see it at once.
            tcp_address = tcp.getsockname()
            tcp.close()
            unix.close()
            for family, address in ((socket.AF_INET, tcp_address), (socket.AF_UNIX, unix_path)):
                client = trio.socket.socket(family, socket.SOCK_STREAM)
                await client.connect(address)
                async with trio.SocketStream(client) as stream:
                    await stream.send_all(b"hello")
                    answer = b""
                    while data := await stream.receive_some():
                        answer += data
                    answers.append(answer)
    assert child.returncode == 0, child.stderr.decode()
    assert answers == [
        repr((b"hello", 3, False, [])).encode(),
        repr((b"hello", 4, False, [])).encode(),
    ]


# --- describe_listener ----------------------------------------------------------------


async def test_describe_tcp_listeners() -> None:
    [v4] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with v4:
        port = v4.socket.getsockname()[1]
        assert describe_listener(v4) == f"http://127.0.0.1:{port}"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls = trio.SSLListener(v4, context)
        assert describe_listener(tls) == f"https://127.0.0.1:{port}"
    assert describe_listener(v4) == "<listener AF_INET closed>"


async def test_describe_ipv6_listener() -> None:
    ipv6_loopback().close()
    [v6] = await trio.open_tcp_listeners(0, host="::1")
    async with v6:
        assert describe_listener(v6) == f"http://[::1]:{v6.socket.getsockname()[1]}"


async def test_describe_unix_and_other_listeners(sock_dir: Path) -> None:
    path = str(sock_dir / "app.sock")
    async with await open_unix_listener(path) as listener:
        assert describe_listener(listener) == f"unix:{path}"
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls = trio.SSLListener(listener, context)
        assert describe_listener(tls) == f"https+unix:{path}"

    class Custom(trio.abc.Listener[trio.abc.Stream]):
        async def accept(self) -> trio.abc.Stream:
            raise NotImplementedError

        async def aclose(self) -> None:
            pass

    assert describe_listener(Custom()) == "<listener Custom>"
