"""Reads and writes on a plain socket's descriptor: the connection loop's hot path.

``trio.SocketStream.receive_some`` goes through four layers before ``recv`` (a conflict
detector, a context manager that translates errors, the trio socket's method, its
non-blocking helper), each a frame that lives as long as the read waits. For a
keep-alive connection the read waits most of the time, so those frames are most of
what an idle connection costs; and every request pays for them twice, once to read
and once to write. ``SocketIO`` does what they do in one frame.

Rules for this module:
1. The same contract as the stream's methods: each call is a checkpoint (cancellation
   is checked before the system call and the task yields after it, as trio's socket
   methods do), a cancelled read has taken no bytes, a closed socket raises
   ``trio.ClosedResourceError`` and a broken one ``trio.BrokenResourceError``, two
   tasks reading (or writing) at once raise ``trio.BusyResourceError``.
   A read that had to wait does not yield again after it: the wait was its
   checkpoint (trio's sockets yield once more, a second trip through the scheduler
   for every request that waits).
2. Only for ``trio.SocketStream`` on POSIX (``io_for``): any other stream (TLS, memory, a test's
   stream) is used as it is. The stream still owns the socket and closes it; the
   descriptor is looked up on every call, so a closed socket is never read by number.
3. ``send_now`` is the one call that is not a checkpoint: it writes what the socket
   buffer takes at once. The connection writes most responses with it, so that a
   response that fits costs no deadline move and no trip through the scheduler; it
   yields at its next read (see ``_connection``).
"""

from __future__ import annotations

import errno
import os
from typing import Final, Protocol

import trio

__all__ = ["SocketIO", "StreamIO", "io_for"]

#: ``os.read`` and ``os.write`` take a socket's descriptor on POSIX only (on Windows a
#: socket is a handle): elsewhere the stream's own methods are used.
_POSIX: Final = os.name == "posix"


class StreamIO(Protocol):
    """What the connection reads and writes with: a stream, or a ``SocketIO``."""

    async def receive_some(self, max_bytes: int | None = ..., /) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview, /) -> None: ...


def io_for(stream: trio.abc.Stream) -> StreamIO:
    """A ``SocketIO`` for a plain socket stream, else the stream itself (rule 2)."""
    if _POSIX and type(stream) is trio.SocketStream:
        return SocketIO(stream.socket)
    return stream


class SocketIO:
    """``receive_some`` and ``send_all`` on a trio socket's descriptor (rule 1)."""

    __slots__ = ("_receiving", "_sending", "_socket")

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._socket = sock
        self._receiving = False
        self._sending = False

    async def receive_some(self, max_bytes: int | None = None, /) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` at end of file."""
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this socket")
        if max_bytes is None:
            max_bytes = 65536
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        sock = self._socket
        await trio.lowlevel.checkpoint_if_cancelled()
        self._receiving = True
        try:
            waited = False
            while True:
                try:
                    data = os.read(_descriptor(sock), max_bytes)
                    break
                except BlockingIOError:
                    pass  # wait outside the handler: it would keep the exception alive
                except OSError as exc:
                    raise _translated(exc) from exc
                await trio.lowlevel.wait_readable(sock)  # cancelled: nothing taken
                waited = True
            if not waited:  # a wait was the checkpoint; else yield now (rule 1)
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    def send_now(self, data: bytes) -> int:
        """Write what the socket buffer takes now; how many bytes it took.

        Not a checkpoint (rule 3): no wait, no yield, no cancellation.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this socket")
        sock = self._socket
        if sock.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        try:
            return os.write(_descriptor(sock), data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise _translated(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview, /) -> None:
        """Write all of ``data``, waiting for room in the socket buffer as needed."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this socket")
        sock = self._socket
        if sock.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._sending = True
        try:
            try:
                sent = os.write(_descriptor(sock), data)  # most writes fit the buffer
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise _translated(exc) from exc
            if sent < len(data):
                await _send_rest(sock, data, sent)
            await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False


async def _send_rest(
    sock: trio.socket.SocketType, data: bytes | bytearray | memoryview, sent: int
) -> None:
    with memoryview(data) as view:
        while sent < len(view):
            await trio.lowlevel.wait_writable(sock)
            try:
                sent += os.write(_descriptor(sock), view[sent:])
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _translated(exc) from exc


def _descriptor(sock: trio.socket.SocketType) -> int:
    fd = sock.fileno()
    if fd == -1:
        raise trio.ClosedResourceError("the socket was closed")
    return fd


def _translated(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    # As trio.SocketStream translates them.
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
