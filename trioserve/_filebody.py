"""Bodies made of a file: ``FileBody`` (ranges of an open file) and ``FileSource``
(what ``Response.file`` returns before the server has the request).

Rules for this module:
1. A file's bytes never lie: each piece read is checked against the length asked and
   the ``fstat`` taken when the response began. A file that shrinks or changes while
   it is sent raises :class:`FileChanged`; the server then aborts the connection (the
   ``Content-Length`` was promised), so the client sees a truncated transfer, never
   padding, and never a complete response that mixes two versions.
2. Two ways out, the same bytes. Iterated (``async for``), a ``FileBody`` reads in a
   worker thread (over TLS, in memory, for anyone who iterates it). On a plain TCP
   socket the server asks for :meth:`FileBody.pieces` instead: literal bytes and
   :class:`FileRange` placeholders that ``os.sendfile`` writes straight from the page
   cache. ``sendfile`` cannot check a piece before it leaves, so the last byte of
   every range is read and checked (rule 1) before it goes: whatever changed
   meanwhile, the client never receives a complete response that mixes two versions.
3. Blocking file-system calls run in a worker thread; ``sendfile`` on a non-blocking
   socket does not block (it writes what the socket buffer takes).
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Sequence
from typing import Final

import trio

__all__ = ["FileBody", "FileChanged", "FileRange", "FileSource", "Part", "can_sendfile"]

#: Bytes read per worker-thread call when a file body is iterated (the engine's write
#: piece size, so one read feeds one write deadline).
READ_CHUNK: Final = 256 * 1024
#: Bytes asked of one ``sendfile`` call (it writes what the socket buffer takes).
SENDFILE_CHUNK: Final = 1024 * 1024

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
        if not self._parts:
            raise StopAsyncIteration
        part = self._parts.pop()
        if isinstance(part, bytes):
            await trio.lowlevel.checkpoint()
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
        if not self._parts:
            raise StopAsyncIteration
        part = self._parts.pop()
        if isinstance(part, bytes):
            await trio.lowlevel.checkpoint()
            return part
        offset, length = part
        if length > 1:
            self._parts.append((offset + length - 1, 1))
            return FileRange(self, offset, length - 1)
        return await trio.to_thread.run_sync(self._read, offset, 1)

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
        """Write the range to ``stream``'s socket, moving ``scope``'s deadline to
        ``write_timeout`` from now before each wait (the write deadline counts from the last
        progress, as for any write).

        Raises:
            trio.BrokenResourceError: the client went away.
            FileChanged: the file ended early.
        """
        assert type(stream) is trio.SocketStream  # the server asks only if can_sendfile
        sock = stream.socket
        out = sock.fileno()
        source = self._body._file.fileno()
        offset, remaining = self.offset, self.count
        while remaining:
            scope.deadline = trio.current_time() + write_timeout
            try:
                sent = os.sendfile(out, source, offset, min(remaining, SENDFILE_CHUNK))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:  # EPIPE, ECONNRESET: as send_all would raise it
                raise trio.BrokenResourceError(f"sendfile failed: {exc}") from exc
            if sent == 0:  # at the end of the file already: it shrank
                self._body.check()
                raise FileChanged(f"{self._body._path!r} ended early while being sent")
            offset += sent
            remaining -= sent
            await trio.lowlevel.checkpoint()  # a fast client must not hog the loop


class _Pieces:
    __slots__ = ("_body",)

    def __init__(self, body: FileBody) -> None:
        self._body = body

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes | FileRange:
        return await self._body._next_piece()


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
        file = await trio.to_thread.run_sync(io.FileIO, self.path, "rb")
        st = os.fstat(file.fileno())
        body = FileBody(file, self.path, st.st_size, st.st_mtime_ns, [(0, st.st_size)])
        try:
            async for chunk in body:
                yield chunk
        finally:
            await body.aclose()

    def __repr__(self) -> str:
        return f"FileSource({self.path!r})"
