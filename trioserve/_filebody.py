"""Bodies made of a file: ``FileBody`` (ranges of an open file) and ``FileSource``
(what ``Response.file`` returns before the server has the request).

Rules for this module:
1. A file's bytes never lie: each piece read is checked against the length asked and
   the ``fstat`` taken when the response began. A file that shrinks or changes while
   it is sent raises :class:`FileChanged`; the server then aborts the connection (the
   ``Content-Length`` was promised), so the client sees a truncated transfer, never
   padding (and on the iterated path never a mix of two versions; see rule 2).
2. Two ways out, the same bytes. Iterated (``async for``), a ``FileBody`` reads in a
   worker thread (over TLS, in memory, for anyone who iterates it). On a plain TCP
   socket the server asks for :meth:`FileBody.pieces` instead: literal bytes and
   :class:`FileRange` placeholders that ``os.sendfile`` writes straight from the page
   cache. ``sendfile`` cannot check a piece before it leaves, so the last byte of
   every range is read and checked (rule 1) before it goes: a change made before
   then cuts the connection. It does not copy either: bytes still queued in the
   socket when the file is rewritten in place go out as the new bytes. Only files
   replaced by ``rename`` (the open file keeps the old ones) are safe on this path.
3. Blocking file-system calls run in a worker thread. ``sendfile`` runs in the event
   loop (on a non-blocking socket it writes what the socket buffer takes) only for
   pages already in the page cache: others are read into it by a worker thread first.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import AsyncIterator, Sequence
from typing import Final

import trio

__all__ = [
    "FileBody",
    "FileChanged",
    "FileRange",
    "FileSource",
    "Part",
    "can_sendfile",
    "open_regular",
]

#: Bytes read per worker-thread call when a file body is iterated (the engine's write
#: piece size, so one read feeds one write deadline).
READ_CHUNK: Final = 256 * 1024
#: Bytes sent by ``sendfile`` under one write deadline (as ``WRITE_CHUNK`` for bytes).
SENDFILE_CHUNK: Final = READ_CHUNK

Part = bytes | tuple[int, int]  # literal bytes, or (offset, length) in the file


class FileChanged(Exception):
    """A file being sent (``StaticFiles``, ``Response.file``) shrank or changed.

    Raised from the response body; the server cuts the connection, so the client sees
    a truncated transfer, and logs one WARNING line. Deploy files by ``rename`` (the
    open file keeps its old bytes) and this never happens.
    """


def can_sendfile(stream: trio.abc.Stream) -> bool:
    """Whether ``stream`` is a plain TCP or Unix socket ``os.sendfile`` can write to."""
    return _HAS_SENDFILE and type(stream) is trio.SocketStream


_HAS_SENDFILE: Final = hasattr(os, "sendfile")


class FileBody:
    """A streamed body: literal pieces and ranges of one open file, which it owns and
    closes in ``aclose`` (the server calls it however the response ends).

    Args:
        file: the open file (its descriptor is read with ``pread``: no shared offset).
        path: its path, for messages.
        size, mtime_ns: its ``fstat`` when the response began (rule 1).
        parts: what to send, in order.
    """

    __slots__ = ("_file", "_mtime_ns", "_parts", "_path", "_size")

    def __init__(
        self, file: io.FileIO, path: str, size: int, mtime_ns: int, parts: Sequence[Part]
    ) -> None:
        self._file = file
        self._path = path
        self._size = size
        self._mtime_ns = mtime_ns
        self._parts = list(reversed(parts))

    def __aiter__(self) -> FileBody:
        return self

    async def __anext__(self) -> bytes:
        part = await self._next_part()
        if isinstance(part, bytes):
            return part
        offset, length = part
        count = min(length, READ_CHUNK)
        if length > count:
            self._parts.append((offset + count, length - count))
        return await trio.to_thread.run_sync(self._read, offset, count)

    def pieces(self) -> AsyncIterator[bytes | FileRange]:
        """The parts for ``sendfile`` (rule 2): literal bytes, and each range as a
        :class:`FileRange` of all but its last byte, then that byte, read and checked.
        Closing is still this body's ``aclose``."""
        return _Pieces(self)

    async def _next_piece(self) -> bytes | FileRange:
        part = await self._next_part()
        if isinstance(part, bytes):
            return part
        offset, length = part
        if length > 1:
            self._parts.append((offset + length - 1, 1))
            return FileRange(self, offset, length - 1)
        return await trio.to_thread.run_sync(self._read, offset, 1)

    async def _next_part(self) -> Part:
        """The next part to send (literal bytes after a checkpoint, or a range)."""
        if not self._parts:
            raise StopAsyncIteration
        part = self._parts.pop()
        if isinstance(part, bytes):
            await trio.lowlevel.checkpoint()
        return part

    def _read(self, offset: int, count: int) -> bytes:
        fd = self._file.fileno()
        data = os.pread(fd, count, offset)
        if len(data) != count:
            self._changed(os.fstat(fd).st_size)
        self.check()
        return data

    def check(self) -> None:
        """Raise :class:`FileChanged` if the file is not as it was when it was opened."""
        st = os.fstat(self._file.fileno())
        if st.st_size != self._size or st.st_mtime_ns != self._mtime_ns:
            self._changed(st.st_size)

    def _changed(self, size: int) -> None:
        raise FileChanged(
            f"{self._path!r} changed while being sent "
            f"(size {self._size} -> {size}); the connection is cut"
        )

    async def aclose(self) -> None:
        """Close the file."""
        self._parts.clear()
        self._file.close()
        await trio.lowlevel.checkpoint()


class FileRange:
    """``count`` bytes of a :class:`FileBody`'s file from ``offset``, for ``sendfile``.

    h11 frames it as it is (its ``len`` is the byte count) and hands it back among the
    bytes to write; the connection then calls :meth:`send`.
    """

    __slots__ = ("_body", "count", "offset")

    def __init__(self, body: FileBody, offset: int, count: int) -> None:
        self._body = body
        self.offset = offset
        self.count = count

    def __len__(self) -> int:
        return self.count

    async def send(
        self, stream: trio.abc.Stream, scope: trio.CancelScope, write_timeout: float
    ) -> None:
        """Write the range to ``stream``'s socket, ``SENDFILE_CHUNK`` at a time, each
        piece under a fresh write deadline (``write_timeout`` per piece, as ``send``
        gives each ``WRITE_CHUNK`` of bytes: a client that reads a trickle is still cut
        off). Pages not in the page cache are read into it by a worker thread first,
        so a slow disk never blocks the event loop in ``sendfile`` (rule 3).

        Raises:
            trio.BrokenResourceError: the client went away.
            FileChanged: the file ended early.
            OSError: reading the file failed (a disk error): the body's failure.
        """
        assert type(stream) is trio.SocketStream  # the server asks only if can_sendfile
        sock = stream.socket
        out = sock.fileno()
        body = self._body
        source = body._file.fileno()
        offset, end = self.offset, self.offset + self.count
        while offset < end:
            scope.deadline = trio.current_time() + write_timeout
            piece_end = min(end, offset + SENDFILE_CHUNK)
            if not _cached(source, offset, piece_end):
                await trio.to_thread.run_sync(_read_ahead, source, offset, piece_end - offset)
            while offset < piece_end:
                try:
                    sent = os.sendfile(out, source, offset, piece_end - offset)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sock)
                    continue
                except OSError as exc:
                    if exc.errno in _PEER_GONE:
                        raise trio.BrokenResourceError(f"sendfile: {exc}") from exc
                    raise
                if sent == 0:  # at the end of the file already: it shrank
                    body.check()
                    raise FileChanged(f"{body._path!r} ended early while being sent")
                offset += sent
            await trio.lowlevel.checkpoint()  # a fast client must not hog the loop


#: What ``sendfile`` raises when the client is gone (as ``send_all`` would see it).
_PEER_GONE: Final = frozenset(
    (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED)
)
_RWF_NOWAIT: Final = getattr(os, "RWF_NOWAIT", None)


def _cached(fd: int, start: int, end: int) -> bool:
    """Whether the first and last bytes of ``[start, end)`` are in the page cache (a
    read with ``RWF_NOWAIT`` that does not block; Linux). Elsewhere: assume not."""
    if _RWF_NOWAIT is None:
        return False
    probe = bytearray(1)
    try:
        return all(os.preadv(fd, [probe], at, _RWF_NOWAIT) for at in {start, end - 1})
    except OSError:  # EAGAIN: not cached; EOPNOTSUPP: cannot tell
        return False


def _read_ahead(fd: int, offset: int, count: int) -> None:
    """Bring ``count`` bytes from ``offset`` into the page cache (in a worker thread)."""
    os.pread(fd, count, offset)


class _Pieces:
    __slots__ = ("_body",)

    def __init__(self, body: FileBody) -> None:
        self._body = body

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes | FileRange:
        return await self._body._next_piece()


def open_regular(path: str) -> tuple[io.FileIO, os.stat_result] | None:
    """Open ``path`` for reading if it is a regular file (None if it is missing, not
    readable, or anything else). Non-blocking, so a FIFO cannot hang the thread.
    Blocking: call it in a worker thread."""
    try:
        # O_NONBLOCK: a FIFO must not hang the thread on open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # FileIO would refuse a directory
            os.close(fd)
            return None
        return io.FileIO(fd, "rb", closefd=True), st
    except BaseException:
        os.close(fd)
        raise


class FileSource:
    """The body of ``Response.file(path)`` until the server has the request: the
    server opens the file then and answers with validators and ranges (see
    ``trioserve.static``). Iterated by anyone else, it is the whole file.
    """

    __slots__ = ("media_type", "path")

    def __init__(self, path: str, media_type: str | None) -> None:
        self.path = path
        self.media_type = media_type

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._whole()

    async def _whole(self) -> AsyncIterator[bytes]:
        opened = await trio.to_thread.run_sync(open_regular, self.path)
        if opened is None:
            raise FileNotFoundError(f"not a regular file: {self.path!r}")
        file, st = opened
        body = FileBody(file, self.path, st.st_size, st.st_mtime_ns, [(0, st.st_size)])
        try:
            async for chunk in body:
                yield chunk
        finally:
            await body.aclose()

    def __repr__(self) -> str:
        return f"FileSource({self.path!r})"
