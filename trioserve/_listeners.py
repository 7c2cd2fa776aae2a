"""Listening sockets other than TCP: Unix sockets, inherited descriptors, systemd.

Rules for this module:
1. Every function returns a listener the accept loop already serves: a
   ``trio.SocketListener``, or a :class:`UnixSocketListener` that wraps one (trio
   forbids subclassing ``SocketListener``) and exposes its ``.socket``.
2. Nothing is assumed about an inherited descriptor: its family and type are read
   from the kernel, and one that is not a listening stream socket is refused with a
   one-line :class:`ListenerError`, left open and untouched.
3. A path is only ever removed when it is provably ours or provably dead: a socket
   file nobody listens on, or the very file we bound. A regular file, a symlink or a
   live server's socket is never removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as stdlib_socket
import stat
from collections.abc import Mapping
from typing import Final, final

import trio

__all__ = [
    "ListenerError",
    "UnixSocketListener",
    "describe_listener",
    "fd_listener",
    "open_reuse_port_sockets",
    "open_unix_listener",
    "systemd_listeners",
]

#: sd_listen_fds(3): the first passed descriptor; the rest follow in order.
SD_LISTEN_FDS_START: Final = 3
_SYSTEMD_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
#: A connect to a local socket answers at once; a live server with a full backlog may
#: leave it pending, which this bounds (seconds) and counts as live.
_PROBE_TIMEOUT: Final = 1.0


class ListenerError(OSError):
    """A listening socket cannot be opened; ``str(exc)`` is one line saying why.

    An ``OSError``, so code that catches bind errors catches it too; ``errno`` is set
    where one applies (``EADDRINUSE`` for a live server on the path).
    """

    def __init__(self, message: str, error: int | None = None) -> None:
        # One argument keeps str(exc) the message alone (no "[Errno N]" prefix).
        super().__init__(message)
        self.errno = error


@final
class UnixSocketListener(trio.abc.Listener[trio.SocketStream]):
    """A listener on a Unix socket that removes its socket file when closed.

    The file is removed only while it is still the one this listener bound (same
    device and inode), so a newer server's socket at the same path survives.

    Attributes:
        socket: the listening trio socket (the accept loop reads it).
        path: the socket file's path.
    """

    __slots__ = ("_bound", "_listener", "path", "socket")

    def __init__(self, socket: trio.socket.SocketType, path: str) -> None:
        self._listener = trio.SocketListener(socket)
        self.socket = socket
        self.path = path
        # Recorded after bind. While our socket is open the kernel keeps a reference
        # to the file's inode, so its number cannot be reused by another file.
        st = os.stat(path)
        self._bound: tuple[int, int] | None = (st.st_dev, st.st_ino)

    async def accept(self) -> trio.SocketStream:
        """Accept a connection (see ``trio.SocketListener.accept``)."""
        return await self._listener.accept()

    async def aclose(self) -> None:
        """Remove the socket file if it is still ours, then close the socket."""
        # Unlink while still listening: a server starting meanwhile sees us live and
        # refuses, instead of replacing the file between our check and our unlink.
        bound, self._bound = self._bound, None
        try:
            if bound is not None and _identity(self.path) == bound:
                os.unlink(self.path)
        finally:
            await self._listener.aclose()


async def open_unix_listener(
    path: str | os.PathLike[str],
    *,
    permissions: int | None = None,
    backlog: int = 2048,
) -> UnixSocketListener:
    """Bind and listen on a Unix socket.

    A socket file left by a dead server (a connect is refused) is replaced.

    Args:
        path: the socket file (at most about 107 bytes, the kernel's limit).
        permissions: mode for the socket file, e.g. ``0o660``, given to it as bind
            creates it (by the umask, for that moment), never by a chmod after.
        backlog: the kernel's queue of connections not yet accepted.

    Returns:
        A :class:`UnixSocketListener`; closing it removes the file.

    Raises:
        ListenerError: a live server listens on ``path``; ``path`` exists and is not
            a socket (it is left alone); or binding failed.
    """
    path = os.fspath(path)
    await _clear_stale_socket(path)
    raw = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        # The file gets its mode as bind creates it, from the umask: a chmod after
        # would follow a symlink put at the path in between, and leave a moment
        # with the umask's mode. (Synchronous: the umask is the process's.)
        umask = os.umask(~permissions & 0o777) if permissions is not None else None
        try:
            raw.bind(path)
        except OSError as exc:
            raise ListenerError(
                f"cannot bind unix socket '{path}': {exc.strerror or exc}", exc.errno
            ) from exc
        finally:
            if umask is not None:
                os.umask(umask)
        try:
            sock.listen(backlog)
            return UnixSocketListener(sock, path)
        except BaseException:
            # Bound by us a moment ago and never listened on: ours to remove.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
    except BaseException:
        sock.close()
        raise


async def _clear_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse anything else."""
    try:
        # lstat: a symlink is "not a socket", so we never remove what it points to.
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenerError(f"'{path}' exists and is not a socket", errno.EEXIST)
    with trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM) as probe:
        with trio.move_on_after(_PROBE_TIMEOUT):
            try:
                await probe.connect(path)
            except (ConnectionRefusedError, FileNotFoundError):
                # Refused: the file outlived its server (killed, or closed without
                # unlinking). Not found: removed meanwhile. Either way, ours to take.
                # (A server between its bind and its listen is refused too: two
                # servers starting on one path at once is a deployment error.)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return
            except OSError as exc:
                raise ListenerError(
                    f"cannot tell whether a server listens on unix socket '{path}': "
                    f"{exc.strerror or exc}",
                    exc.errno,
                ) from exc
    raise ListenerError(f"another server is listening on unix socket '{path}'", errno.EADDRINUSE)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def fd_listener(fd: int) -> trio.SocketListener:
    """Serve an inherited listening socket, e.g. ``--fd 3`` from a supervisor.

    The family (IPv4, IPv6, Unix, ...) and type are read from the kernel. The socket
    is made non-blocking and close-on-exec (so processes the application spawns do
    not hold the port open after we exit).

    Args:
        fd: an open descriptor of a listening stream socket.

    Returns:
        A ``trio.SocketListener`` that owns ``fd``: closing it closes the descriptor.

    Raises:
        ListenerError: ``fd`` is not open, not a socket, not a stream socket, or not
            listening. The descriptor is then left open and unchanged.
    """
    if fd < 0:
        raise ListenerError(f"file descriptor {fd} is not open", errno.EBADF)
    try:
        # Reads family, type and protocol from the kernel (SO_DOMAIN, SO_TYPE, ...).
        sock = stdlib_socket.socket(fileno=fd)
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            raise ListenerError(f"file descriptor {fd} is not a socket", exc.errno) from exc
        if exc.errno == errno.EBADF:
            raise ListenerError(f"file descriptor {fd} is not open", exc.errno) from exc
        raise ListenerError(f"file descriptor {fd}: {exc.strerror or exc}", exc.errno) from exc
    try:
        if sock.type != stdlib_socket.SOCK_STREAM:
            raise ListenerError(f"file descriptor {fd} is not a stream socket", errno.EINVAL)
        try:
            listening = sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_ACCEPTCONN)
        except OSError:
            listening = 1  # SO_ACCEPTCONN is unsupported on macOS: trust the caller (as trio)
        if not listening:
            raise ListenerError(
                f"file descriptor {fd} is not listening (call listen() before passing it)",
                errno.EINVAL,
            )
    except ListenerError:
        sock.detach()  # the caller's descriptor stays open
        raise
    sock.setblocking(False)
    sock.set_inheritable(False)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


def systemd_listeners(
    environ: Mapping[str, str] | None = None, *, unset_environment: bool = True
) -> list[trio.SocketListener]:
    """The sockets systemd passed by socket activation (``sd_listen_fds`` semantics).

    When ``LISTEN_PID`` is this process and ``LISTEN_FDS`` is N, the sockets are
    descriptors 3 to 3+N-1, each served with :func:`fd_listener` (so each is made
    close-on-exec, as ``sd_listen_fds`` does). ``LISTEN_FDNAMES`` is not used.

    Args:
        environ: the variables to read; ``os.environ`` when omitted.
        unset_environment: remove ``LISTEN_PID``, ``LISTEN_FDS`` and
            ``LISTEN_FDNAMES`` from ``os.environ`` (only when ``environ`` is
            omitted), as ``sd_listen_fds(1)``, so child processes do not take the
            sockets for theirs. They are removed whatever the outcome, as systemd does.

    Returns:
        One listener per passed socket; ``[]`` when the variables are absent or name
        another process (they were meant for a parent).

    Raises:
        ListenerError: ``LISTEN_PID`` or ``LISTEN_FDS`` is not a number, or a
            passed descriptor is not a listening stream socket.
    """
    env = os.environ if environ is None else environ
    try:
        pid = _parse_count(env, "LISTEN_PID")
        if pid is None or pid != os.getpid():
            return []
        count = _parse_count(env, "LISTEN_FDS")
        if count is None:
            return []
        listeners: list[trio.SocketListener] = []
        try:
            for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
                listeners.append(fd_listener(fd))
        except ListenerError:
            # Leave every passed descriptor open, not half of them closed.
            for listener in listeners:
                listener.socket.detach()
            raise
        return listeners
    finally:
        if environ is None and unset_environment:
            for name in _SYSTEMD_VARIABLES:
                os.environ.pop(name, None)


def _parse_count(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None:
        return None
    # Digits only: int() would also take "+3", " 3" and "1_0".
    if not (value.isascii() and value.isdigit()):
        raise ListenerError(f"{name}={value!r} is not a number")
    return int(value)


def describe_listener(listener: trio.abc.Listener[trio.abc.Stream]) -> str:
    """A label for logs: ``http://127.0.0.1:8000``, ``http://[::1]:8000``, ``unix:/run/app.sock``.

    A ``trio.SSLListener`` is described by its transport with ``https`` (a TLS Unix
    socket as ``https+unix:/run/app.sock``). Anything else: ``<listener TypeName>``.
    """
    if isinstance(listener, trio.SSLListener):
        inner = describe_listener(listener.transport_listener)
        if inner.startswith("http://"):
            return "https://" + inner.removeprefix("http://")
        if inner.startswith("unix:"):
            return "https+unix:" + inner.removeprefix("unix:")
        return inner
    if isinstance(listener, UnixSocketListener):
        return f"unix:{listener.path}"
    if not isinstance(listener, trio.SocketListener):
        return f"<listener {type(listener).__name__}>"
    sock = listener.socket
    try:
        name: object = sock.getsockname()
    except OSError:  # closed
        return f"<listener {sock.family.name} closed>"
    if sock.family == stdlib_socket.AF_INET and isinstance(name, tuple):
        return f"http://{name[0]}:{name[1]}"
    if sock.family == stdlib_socket.AF_INET6 and isinstance(name, tuple):
        return f"http://[{name[0]}]:{name[1]}"
    if sock.family == stdlib_socket.AF_UNIX:
        if isinstance(name, bytes):  # Linux abstract namespace: b"\0name", shown as "@name"
            return "unix:@" + name[1:].decode(errors="backslashreplace")
        return f"unix:{name}"
    return f"<listener {sock.family.name} {name!r}>"


def open_reuse_port_sockets(
    host: str | None, port: int, *, backlog: int = 2048, listen: bool = True
) -> list[stdlib_socket.socket]:
    """TCP sockets on ``host``:``port`` with SO_REUSEPORT, one per address ``host``
    resolves to (``None``: every interface); each joins the kernel's group for that
    address, which spreads new connections over the group's listening sockets by a
    hash of the client's address and port.

    With ``listen=False`` the sockets are bound but not listening: they hold the port
    (``port`` 0 picks a free one) for the group and get no connection. Blocking calls
    (a name lookup, bind): for startup, before or outside the event loop.

    Raises:
        ListenerError: SO_REUSEPORT is not supported here.
        OSError: the address cannot be bound (as for ``trio.open_tcp_listeners``).
    """
    reuse_port: int | None = getattr(stdlib_socket, "SO_REUSEPORT", None)
    if reuse_port is None:
        raise ListenerError("--reuse-port needs SO_REUSEPORT, which this system lacks")
    addresses = stdlib_socket.getaddrinfo(
        host, port, type=stdlib_socket.SOCK_STREAM, flags=stdlib_socket.AI_PASSIVE
    )
    sockets: list[stdlib_socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = stdlib_socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
            sock.setsockopt(stdlib_socket.SOL_SOCKET, reuse_port, 1)
            if family == stdlib_socket.AF_INET6:
                sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]  # port 0: the first bind picked one for all
            if listen:
                sock.listen(backlog)
                sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
