"""StaticFiles: a native handler that serves the files under one directory.

Rules for this module:
1. Everything that touches the file system for one request (resolving, ``stat``,
   opening, a small file's bytes, a listing) runs in one worker thread call
   (``trio.to_thread.run_sync``): a slow disk stalls a thread, never the event loop.
2. A file is opened once, and its size, modification time and bytes all come from
   that one descriptor (``fstat``, ``pread``): a file replaced by rename while being
   sent still sends the old bytes, whole.
3. The body never lies about the file: a large file goes out as a ``FileBody``
   (``trioserve._filebody``), which checks every piece against the ``fstat`` taken
   when the response began and raises :class:`FileChanged` if the file shrank or
   changed; the server then cuts the connection, so the client sees a truncated
   transfer, never padding or a mix of two versions.
4. Path rules are ``_paths``'s, HTTP rules ``_http``'s; this module only wires them.
"""

from __future__ import annotations

import dataclasses
import io
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote

import trio

from .._filebody import FileBody, FileSource, Part, open_regular
from .._request import Request
from .._response import Response
from ._http import (
    accepted_encodings,
    content_type,
    etag_for,
    http_date,
    if_range_holds,
    none_match,
    parse_ranges,
)
from ._listing import listing_page
from ._paths import inside, split_path

__all__ = ["StaticFiles", "respond_file"]

#: Files up to this size are read whole when looked up (one thread call, a bytes
#: body); larger ones are streamed.
SMALL_FILE: Final = 64 * 1024

_SIBLINGS: Final = (("br", ".br"), ("gzip", ".gz"))


@dataclass(frozen=True, slots=True)
class _File:
    """An open file and the facts of the moment it was opened."""

    file: io.FileIO
    path: str
    size: int
    mtime: float
    mtime_ns: int
    media_type: str
    encoding: str | None  # the Content-Encoding of a precompressed sibling
    has_siblings: bool
    small: bytes | None  # the whole content, for small files


@dataclass(frozen=True, slots=True)
class _Redirect:
    pass


@dataclass(frozen=True, slots=True)
class _Listing:
    page: bytes


_Found = _File | _Redirect | _Listing | None


class StaticFiles:
    """Serve the files under ``directory``: a native handler.

    Args:
        directory: the root; nothing outside it is ever served.
        listing: answer a directory URL (ending in ``/``) with an HTML listing.
        html: answer a directory URL with its ``index.html`` when there is one.
        follow_symlinks: serve symlinks that lead out of the root (inside ones are
            always served).

    As the whole server, ``trioserve.run(StaticFiles("public"), 8000)`` serves
    ``request.raw_path`` under the root. From one's own handler, for a prefix, pass
    the rest of the raw (still percent-encoded) path to :meth:`respond`::

        static = StaticFiles("public")

        async def handler(request):
            if request.raw_path.startswith(b"/static/"):
                return await static.respond(request, request.raw_path[7:].decode("latin-1"))
            ...

    What is answered: GET and HEAD (others 405); 404 for anything missing, refused
    or hidden (dotfiles, see ``_paths``), without saying which; a directory URL
    without its ``/`` is redirected (301) to ``./name/``; ETag, Last-Modified,
    304 for ``If-None-Match`` and ``If-Modified-Since``, 412 for a failed
    ``If-Match``; ``Range`` (206, ``multipart/byteranges``, 416); ``name.br`` and
    ``name.gz`` beside a file are served in its place when ``Accept-Encoding``
    allows. See docs/static-files.md.

    Raises:
        NotADirectoryError: ``directory`` is not a directory.
    """

    __slots__ = ("follow_symlinks", "html", "listing", "root")

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        listing: bool = False,
        html: bool = False,
        follow_symlinks: bool = False,
    ) -> None:
        root = os.path.realpath(directory)
        if not os.path.isdir(root):
            raise NotADirectoryError(f"not a directory: {os.fspath(directory)!r}")
        self.root = root
        self.listing = listing
        self.html = html
        self.follow_symlinks = follow_symlinks

    async def __call__(self, request: Request) -> Response:
        """Serve ``request.raw_path`` under the root."""
        return await self.respond(request, request.raw_path.decode("latin-1"))

    async def respond(self, request: Request, path: str) -> Response:
        """Serve ``path`` (percent-encoded, starting with ``/``) under the root, with
        ``request``'s method and headers.

        Returns:
            The response; a streamed body owns the open file and closes it.
        """
        if request.method not in ("GET", "HEAD"):
            return Response(
                405, headers=[("allow", "GET, HEAD"), *_TEXT], body="Method Not Allowed\n"
            )
        split = split_path(path)
        if split is None:
            return _not_found()
        segments, trailing = split
        encodings = accepted_encodings(_joined(request, "accept-encoding"))
        found = await trio.to_thread.run_sync(self._find, segments, trailing, path, encodings)
        if found is None:
            return _not_found()
        if isinstance(found, _Redirect):
            return _redirect(request)
        if isinstance(found, _Listing):
            return Response(
                200, headers=[("content-type", "text/html; charset=utf-8")], body=found.page
            )
        try:
            return _file_response(request, found)
        except BaseException:
            found.file.close()
            raise

    # --- The file system: runs in a worker thread (rule 1) ---------------------------------

    def _find(
        self, segments: list[str], trailing: bool, path: str, encodings: list[str]
    ) -> _Found:
        real = inside(self.root, segments, follow_symlinks=self.follow_symlinks)
        if real is None:
            return None
        try:
            st = os.stat(real)
        except (OSError, ValueError):
            return None
        if stat.S_ISDIR(st.st_mode):
            if not trailing:
                return _Redirect() if segments else None
            if self.html:
                index = self._open([*segments, "index.html"], "index.html", encodings)
                if index is not None:
                    return index
            if self.listing:
                try:
                    return _Listing(listing_page(real, unquote(path), dotfiles=False))
                except OSError:  # not readable: as good as missing
                    return None
            return None
        if trailing or not stat.S_ISREG(st.st_mode):
            return None
        return self._open(segments, segments[-1], encodings, real)

    def _open(
        self, segments: list[str], name: str, encodings: list[str], real: str | None = None
    ) -> _File | None:
        """Open ``segments`` (or a sibling the client prefers); ``real``: its real path,
        when the caller resolved it already."""
        media_type = content_type(name)
        found: dict[str, str] = {}
        for coding, suffix in _SIBLINGS:
            sibling = [*segments[:-1], segments[-1] + suffix]
            if not os.path.isfile(os.path.join(self.root, *sibling)):
                continue  # the common case, with one stat instead of a realpath
            resolved = inside(self.root, sibling, follow_symlinks=self.follow_symlinks)
            if resolved is not None and os.path.isfile(resolved):
                found[coding] = resolved
        siblings = bool(found)
        for coding in encodings:  # the client's preference first
            if coding in found:
                opened = _open_regular(found[coding], media_type, coding)
                if opened is not None:
                    return opened
        if real is None:
            real = inside(self.root, segments, follow_symlinks=self.follow_symlinks)
            if real is None:
                return None
        opened = _open_regular(real, media_type, None)
        if opened is not None and siblings:
            opened = _with_siblings(opened)
        return opened

    def __repr__(self) -> str:
        return f"StaticFiles({self.root!r}, listing={self.listing}, html={self.html})"


_TEXT: Final = (("content-type", "text/plain; charset=utf-8"),)


def _joined(request: Request, name: str) -> str | None:
    """A list-valued field sent on several lines, as one list (RFC 9110 5.3)."""
    values = request.headers.getall(name)
    return ", ".join(values) if values else None


def _not_found() -> Response:
    return Response(404, headers=_TEXT, body="Not Found\n")


def _redirect(request: Request) -> Response:
    # The last segment of the URL the client asked for, made relative ("./name/"):
    # relative to the request's own URL it can only add a "/", and "./" keeps a name
    # like "x:y" or "//evil" from reading as a scheme or a host (CVE-2021-28861 was
    # http.server redirecting "//evil.example/..%2f" to "//evil.example/../").
    raw_path = request.raw_path.decode("latin-1")
    name = unquote(raw_path.rsplit("/", 1)[-1])
    if not name:
        return _not_found()
    location = "./" + quote(name, safe="") + "/"
    if request.query_string:
        location += "?" + quote(request.query_string.decode("latin-1"), safe="=&%+;/?:@,")
    return Response(301, headers=[("location", location), *_TEXT], body="Moved Permanently\n")


def _open_regular(real: str, media_type: str, encoding: str | None) -> _File | None:
    opened = open_regular(real)
    if opened is None:
        return None
    file, st = opened
    fd = file.fileno()
    try:
        small = None
        if st.st_size <= SMALL_FILE:
            small = os.pread(fd, st.st_size, 0) if st.st_size else b""
            if len(small) != st.st_size:
                small = None  # it shrank already: the streamed body will notice
        return _File(
            file=file,
            path=real,
            size=st.st_size,
            mtime=st.st_mtime,
            mtime_ns=st.st_mtime_ns,
            media_type=media_type,
            encoding=encoding,
            has_siblings=False,
            small=small,
        )
    except BaseException:
        file.close()
        raise


def _with_siblings(found: _File) -> _File:
    return dataclasses.replace(found, has_siblings=True)


# --- The response ---------------------------------------------------------------------------


async def respond_file(request: Request, response: Response) -> Response:
    """``response`` (from ``Response.file``) for ``request``: the file with validators
    and ranges, as :class:`StaticFiles` sends it, and ``response``'s own headers; 404
    if it is missing or not a regular file. Preconditions and ranges apply to GET and
    HEAD only: for another method the file is the answer, not the target resource.
    """
    source = response.body
    assert isinstance(source, FileSource)
    path = source.path
    media_type = source.media_type or content_type(os.path.basename(path))
    found = await trio.to_thread.run_sync(_open_regular, path, media_type, None)
    if found is None:
        return Response(404, headers=[*response.headers, *_TEXT], body="Not Found\n")
    try:
        return _file_response(request, found, response.headers)
    except BaseException:
        found.file.close()
        raise


def _body(found: _File, parts: Sequence[Part]) -> FileBody:
    return FileBody(found.file, found.path, found.size, found.mtime_ns, parts)


def _file_response(
    request: Request, found: _File, extra: Sequence[tuple[bytes, bytes]] = ()
) -> Response:
    suffix = f"-{found.encoding}" if found.encoding else ""
    etag = etag_for(found.size, found.mtime_ns, suffix)
    headers: list[tuple[str | bytes, str | bytes]] = [
        *extra,
        ("etag", etag),
        ("last-modified", http_date(found.mtime)),
    ]
    if found.encoding is not None or found.has_siblings:
        headers.append(("vary", "accept-encoding"))
    get = request.headers.get
    # RFC 9110 13.2.2: If-Match first (412), then If-None-Match / If-Modified-Since.
    conditional = request.method in ("GET", "HEAD")
    if_match = _joined(request, "if-match") if conditional else None
    if if_match is not None and not any(
        tag == "*" or tag == etag for tag in (t.strip() for t in if_match.split(","))
    ):
        found.file.close()
        return Response(412, headers=[*headers, *_TEXT], body="Precondition Failed\n")
    if conditional and none_match(
        _joined(request, "if-none-match"), get("if-modified-since"), etag, found.mtime
    ):
        found.file.close()
        return Response(304, headers=headers)
    headers.append(("accept-ranges", "bytes"))
    if found.encoding is not None:
        headers.append(("content-encoding", found.encoding))
    size = found.size
    ranges_sent = request.headers.getall("range")
    # Two Range fields are not one list (RFC 9110 14.2 defines one): ignored.
    range_header = ranges_sent[0] if len(ranges_sent) == 1 else None
    if (
        range_header is not None
        and request.method == "GET"
        and size > 0
        and if_range_holds(get("if-range"), etag, found.mtime)
    ):
        ranges = parse_ranges(range_header, size)
        if ranges == "unsatisfiable":
            found.file.close()
            return Response(
                416,
                headers=[*headers, ("content-range", f"bytes */{size}"), *_TEXT],
                body="Range Not Satisfiable\n",
            )
        if isinstance(ranges, list) and sum(last - first + 1 for first, last in ranges) <= size:
            return _partial(found, headers, ranges)
    headers.append(("content-type", found.media_type))
    if found.small is not None:
        found.file.close()
        return Response(200, headers=headers, body=found.small)
    headers.append(("content-length", str(size)))
    return Response(200, headers=headers, body=_body(found, [(0, size)]))


def _partial(
    found: _File, headers: list[tuple[str | bytes, str | bytes]], ranges: list[tuple[int, int]]
) -> Response:
    size = found.size
    if len(ranges) == 1:
        [(first, last)] = ranges
        length = last - first + 1
        headers += [
            ("content-type", found.media_type),
            ("content-range", f"bytes {first}-{last}/{size}"),
            ("content-length", str(length)),
        ]
        return Response(206, headers=headers, body=_body(found, [(first, length)]))
    # RFC 9110 14.6: multipart/byteranges, each part with its Content-Type and
    # Content-Range; the boundary is random so no file content can forge one.
    boundary = secrets.token_hex(16)
    parts: list[Part] = []
    for first, last in ranges:
        parts.append(
            (
                f"--{boundary}\r\ncontent-type: {found.media_type}\r\n"
                f"content-range: bytes {first}-{last}/{size}\r\n\r\n"
            ).encode("latin-1")
        )
        parts.append((first, last - first + 1))
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode("latin-1"))
    length = sum(len(part) if isinstance(part, bytes) else part[1] for part in parts)
    headers += [
        ("content-type", f"multipart/byteranges; boundary={boundary}"),
        ("content-length", str(length)),
    ]
    return Response(206, headers=headers, body=_body(found, parts))
