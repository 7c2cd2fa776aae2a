"""Forms: ``await request.form()`` for urlencoded and multipart bodies.

Rules for this module:
1. The body comes in as an async iterator of chunks (``Request.stream()``) and a
   multipart body is never held whole: each chunk is fed to the parser and what it
   produced is stored (text fields in memory, files in spooled temporary files) before
   the next chunk is read. The parser (python-multipart, pure Python) runs in this task
   on one chunk at a time, so it never holds the event loop long; writes to a file that
   has spilled to disk run in a worker thread.
2. Every limit is checked as the bytes arrive, before they are stored: a field, a file
   or a part's headers over their limit is a 413, too many fields or files and any
   malformed form a 400. What was stored is closed when reading fails or is cancelled.
3. python-multipart is optional: it is imported (as ``python_multipart``, the newer
   name, or ``multipart``) when a multipart body first arrives.
4. This module imports only value modules (``_errors``, ``_headers``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from tempfile import SpooledTemporaryFile
from types import TracebackType
from typing import Final, Protocol, cast
from urllib.parse import parse_qsl

import trio

from ._errors import BadRequest, ContentTooLarge, HTTPError
from ._headers import Headers

__all__ = ["FormData", "UploadFile", "read_form"]

#: Largest header block of one multipart part (its Content-Disposition holds the
#: field name and file name), in bytes; more is a 413. 16 KiB, as a request head.
MAX_PART_HEADER_SIZE: Final = 16 * 1024
#: Most header lines in one multipart part; more is a 400. RFC 7578 4.8 names three
#: (Content-Disposition, Content-Type, Content-Transfer-Encoding); python-multipart's
#: own default is 8.
MAX_PART_HEADER_COUNT: Final = 8

# RFC 2046 5.1.1: a boundary is 1 to 70 bchars, not ending in a space.
_BOUNDARY_RE: Final = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


class UploadFile:
    """One file part of a multipart form.

    Attributes:
        filename: the file name the client gave (``str``, possibly empty: browsers
            send an empty file with an empty name when no file was chosen). Never
            use it as a path without sanitising it.
        content_type: the part's ``Content-Type``, or None.
        headers: all the part's headers, as :class:`trioserve.Headers`.
        size: the file's size in bytes.
        file: the content, a synchronous binary file object positioned at 0
            (a ``tempfile.SpooledTemporaryFile``: in memory up to the form's
            ``spool_size``, on disk past it). Reading it directly blocks on disk
            I/O for a large file; :meth:`read` does not.
    """

    __slots__ = ("_spool_size", "content_type", "file", "filename", "headers", "size")

    def __init__(
        self, *, filename: str, content_type: str | None, headers: Headers, spool_size: int
    ) -> None:
        self.filename = filename
        self.content_type = content_type
        self.headers = headers
        self.size = 0
        self.file: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(max_size=spool_size)
        self._spool_size = spool_size

    async def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (all that is left by default) from :attr:`file`,
        in a worker thread when the file is on disk."""
        if self.size <= self._spool_size:
            await trio.lowlevel.checkpoint()
            return self.file.read(size)
        return await trio.to_thread.run_sync(self.file.read, size)

    async def seek(self, offset: int) -> int:
        """Move :attr:`file` to ``offset`` (from its start); return the new position."""
        if self.size <= self._spool_size:
            await trio.lowlevel.checkpoint()
            return self.file.seek(offset)
        return await trio.to_thread.run_sync(self.file.seek, offset)

    def close(self) -> None:
        """Close :attr:`file` (a temporary file on disk is removed)."""
        self.file.close()

    async def _write(self, data: bytes) -> None:
        # In memory and staying there: a copy into a BytesIO, no need for a thread.
        # Otherwise the write (or the rollover to disk) may block on the disk.
        if self.file.tell() + len(data) <= self._spool_size:
            self.file.write(data)
        else:
            await trio.to_thread.run_sync(self.file.write, data)

    def __repr__(self) -> str:
        return f"<UploadFile {self.filename!r} ({self.size} bytes, {self.content_type})>"


FormValue = str | UploadFile


class FormData(Mapping[str, FormValue]):
    """A form, read-only: field names to values (``str``, or :class:`UploadFile` for
    file parts), in the order sent.

    ``form["name"]`` and ``form.get("name")`` give the first value of a name;
    ``form.getlist("name")`` all of them; ``form.multi_items()`` every
    ``(name, value)`` pair. ``len(form)`` and iteration count each name once.

    Resource handling:
        ``form.close()`` closes every file; ``with await request.form() as form:``
        closes them on leaving the block.
    """

    __slots__ = ("_first", "_items")

    def __init__(self, items: list[tuple[str, FormValue]] | None = None) -> None:
        self._items: list[tuple[str, FormValue]] = list(items or ())
        first: dict[str, FormValue] = {}
        for name, value in self._items:
            first.setdefault(name, value)
        self._first = first

    def __getitem__(self, name: str) -> FormValue:
        return self._first[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def getlist(self, name: str) -> list[FormValue]:
        """Every value of ``name``, in order; empty if there is none."""
        return [value for key, value in self._items if key == name]

    def multi_items(self) -> list[tuple[str, FormValue]]:
        """Every ``(name, value)`` pair, in the order sent."""
        return list(self._items)

    def close(self) -> None:
        """Close every uploaded file."""
        for _, value in self._items:
            if isinstance(value, UploadFile):
                value.close()

    def __enter__(self) -> FormData:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FormData({self._items!r})"


async def read_form(
    content_type: str | None,
    open_stream: Callable[[], AsyncIterator[bytes]],
    *,
    max_fields: int,
    max_files: int,
    max_field_size: int,
    max_file_size: float,
    spool_size: int,
) -> FormData:
    """Read a form body (see ``Request.form`` for the contract).

    ``open_stream`` is called once the content type is known to be a form, so a 415
    or a bad boundary leaves the body unread.
    """
    media_type, _, params = (content_type or "").partition(";")
    media_type = media_type.strip(" \t").lower()
    if media_type == "application/x-www-form-urlencoded":
        return await _read_urlencoded(
            open_stream(), max_fields=max_fields, max_size=max_field_size
        )
    if media_type == "multipart/form-data":
        reader = _MultipartReader(
            _boundary(params),
            max_fields=max_fields,
            max_files=max_files,
            max_field_size=max_field_size,
            max_file_size=max_file_size,
            spool_size=spool_size,
        )
        try:
            return await reader.read(open_stream())
        except BaseException:
            reader.close_files()
            raise
    raise HTTPError("the body is not a form", status_code=415)


async def _read_urlencoded(
    chunks: AsyncIterator[bytes], *, max_fields: int, max_size: int
) -> FormData:
    # The whole body is held (parse_qsl needs it), so it is bounded by max_size.
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_size:
            raise ContentTooLarge("the urlencoded form is too large")
        parts.append(chunk)
    try:
        text = b"".join(parts).decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=max_fields,
        )
    except ValueError:
        # UnicodeDecodeError (bad UTF-8, raw or percent-encoded), a pair without "=",
        # an empty pair ("a=1&&b=2"), or more than max_num_fields pairs.
        raise BadRequest("malformed urlencoded form") from None
    return FormData([(name, value) for name, value in pairs])


def _boundary(params: str) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type (RFC 2046 5.1.1)."""
    parse_options_header = _multipart_module().parse_options_header
    _, options = parse_options_header(f"multipart/form-data;{params}")
    boundary = options.get(b"boundary", b"")
    if _BOUNDARY_RE.fullmatch(boundary) is None:
        raise BadRequest("missing or invalid multipart boundary")
    return boundary


class _OptionsParser(Protocol):
    def __call__(self, value: str) -> tuple[bytes, dict[bytes, bytes]]: ...


class _Parser(Protocol):
    def write(self, data: bytes) -> int: ...
    def finalize(self) -> None: ...


DataCallback = Callable[[bytes, int, int], None]
NotifyCallback = Callable[[], None]


class _ParserFactory(Protocol):
    def __call__(
        self, boundary: bytes, callbacks: dict[str, DataCallback | NotifyCallback]
    ) -> _Parser: ...


class _MultipartModule:
    """What this module takes from python-multipart, typed."""

    __slots__ = ("error", "parse_options_header", "parser")

    def __init__(
        self, parser: _ParserFactory, options: _OptionsParser, error: type[Exception]
    ) -> None:
        self.parser = parser
        self.parse_options_header = options
        self.error = error


_loaded: list[_MultipartModule] = []


def _multipart_module() -> _MultipartModule:
    if _loaded:
        return _loaded[0]
    for package in ("python_multipart", "multipart"):
        try:
            module = importlib.import_module(f"{package}.multipart")
            exceptions = importlib.import_module(f"{package}.exceptions")
        except ImportError:
            continue
        parser = module.MultipartParser
        if "max_header_size" in inspect.signature(parser).parameters:
            # Newer python-multipart versions have limits of their own on part headers that
            # end in a parse error (400). Ours, checked in the callbacks with every
            # version, answer 413 for size: theirs are lifted so that ours decide.
            parser = functools.partial(
                parser, max_header_size=sys.maxsize, max_header_count=sys.maxsize
            )
        _loaded.append(
            _MultipartModule(
                cast(_ParserFactory, parser),
                cast(_OptionsParser, module.parse_options_header),
                cast("type[Exception]", exceptions.FormParserError),
            )
        )
        return _loaded[0]
    raise RuntimeError(
        "multipart forms need python-multipart: pip install 'trioserve[multipart]'"
        " (or pip install python-multipart)"
    )


class _MultipartReader:
    """Feeds one multipart body to python-multipart and collects its parts.

    The parser's callbacks run synchronously inside ``parser.write``: they check
    limits and collect, and the file data they pass on is written to the files after
    ``write`` returns (rule 1), so no callback ever waits for a disk.
    """

    def __init__(
        self,
        boundary: bytes,
        *,
        max_fields: int,
        max_files: int,
        max_field_size: int,
        max_file_size: float,
        spool_size: int,
    ) -> None:
        module = _multipart_module()
        self._error = module.error
        self._parse_options = module.parse_options_header
        self._max_fields = max_fields
        self._max_files = max_files
        self._max_field_size = max_field_size
        self._max_file_size = max_file_size
        self._spool_size = spool_size
        self._items: list[tuple[str, FormValue]] = []
        self._fields = 0
        self._files: list[UploadFile] = []
        self._ended = False
        # The part being read: its headers, then its name and its value.
        self._header_lines: list[tuple[bytes, bytes]] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_size = 0
        self._name = ""
        self._value = bytearray()
        self._upload: UploadFile | None = None
        self._pending: list[tuple[UploadFile, bytes]] = []  # file data to write
        callbacks: dict[str, DataCallback | NotifyCallback] = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }
        self._parser = module.parser(boundary, callbacks)

    async def read(self, chunks: AsyncIterator[bytes]) -> FormData:
        async for chunk in chunks:
            self._feed(chunk)
            await self._write_pending()
        self._feed(None)
        await self._write_pending()
        if not self._ended:
            raise BadRequest("the multipart body ends before its closing boundary")
        for upload in self._files:
            await upload.seek(0)
        return FormData(self._items)

    def close_files(self) -> None:
        for upload in self._files:
            upload.close()

    def _feed(self, chunk: bytes | None) -> None:
        try:
            if chunk is None:
                self._parser.finalize()
            else:
                self._parser.write(chunk)
        except self._error:
            raise BadRequest("malformed multipart body") from None

    async def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        for upload, data in pending:
            await upload._write(data)

    # --- The parser's callbacks (synchronous, called from inside write) -----------

    def _on_part_begin(self) -> None:
        if self._ended:
            raise BadRequest("data after the closing boundary")
        self._header_lines = []
        self._header_size = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_size += size
        if self._header_size > MAX_PART_HEADER_SIZE:
            raise ContentTooLarge("multipart part headers too large")

    def _on_header_end(self) -> None:
        self._header_lines.append(
            (bytes(self._header_field).strip().lower(), bytes(self._header_value).strip())
        )
        self._header_field.clear()
        self._header_value.clear()
        if len(self._header_lines) > MAX_PART_HEADER_COUNT:
            raise BadRequest("too many multipart part headers")

    def _on_headers_finished(self) -> None:
        # RFC 7578 4.2: each part has a Content-Disposition of type form-data with a
        # name; a filename parameter makes it a file (4.2 again: it may be empty).
        headers = Headers.from_raw(self._header_lines)
        disposition, options = self._parse_options(headers.get("content-disposition") or "")
        name = options.get(b"name")
        if disposition.lower() != b"form-data" or name is None:
            raise BadRequest("a multipart part without a form-data name")
        self._name = _utf8(name)
        filename = options.get(b"filename")
        if filename is None:
            self._fields += 1
            if self._fields > self._max_fields:
                raise BadRequest("too many form fields")
            self._value = bytearray()
            self._upload = None
            return
        if len(self._files) >= self._max_files:
            raise BadRequest("too many files in the form")
        upload = UploadFile(
            filename=_utf8(filename),
            content_type=headers.get("content-type"),
            headers=headers,
            spool_size=self._spool_size,
        )
        self._files.append(upload)
        self._upload = upload

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self._upload
        if upload is None:
            if len(self._value) + end - start > self._max_field_size:
                raise ContentTooLarge("a form field is too large")
            self._value += data[start:end]
            return
        upload.size += end - start
        if upload.size > self._max_file_size:
            raise ContentTooLarge("an uploaded file is too large")
        self._pending.append((upload, data[start:end]))

    def _on_part_end(self) -> None:
        upload = self._upload
        if upload is None:
            self._items.append((self._name, _utf8(bytes(self._value))))
        else:
            self._items.append((self._name, upload))
        self._upload = None

    def _on_end(self) -> None:
        self._ended = True


def _utf8(data: bytes) -> str:
    # RFC 7578 5.1: form data (and names, 5.1.3 for file names) are UTF-8 by default.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("form data is not UTF-8") from None
