"""StaticFiles: validators, conditional requests, ranges, HEAD, content types,
precompressed siblings, the listing, redirects, and a file changing mid-send.

Most tests run in memory (``open_client``); a few use a real client (httpx) over a
loopback socket, and raw bytes where a client would hide what was sent.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

import trioserve
from trioserve._filebody import READ_CHUNK, FileBody
from trioserve.static import StaticFiles
from trioserve.static._files import SMALL_FILE
from trioserve.static._http import MAX_RANGES, accepted_encodings, parse_ranges
from trioserve.testing import open_client

from .test_static_security import serving  # a StaticFiles on a real socket

DIGITS = b"0123456789"
BIG = bytes(range(256)) * (2 * READ_CHUNK // 256 + 3)  # several reads, not a multiple


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "digits.txt").write_bytes(DIGITS)
    (tmp_path / "big.bin").write_bytes(BIG)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "page.html").write_text("<p>hi</p>")
    (tmp_path / "app.js").write_text("x = 1;\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "index.html").write_text("<h1>index</h1>")
    (tmp_path / "sub" / "other.txt").write_text("other")
    (tmp_path / "bare").mkdir()
    return tmp_path


def _etag(response: trioserve.testing.TestResponse) -> str:
    etag = response.headers.get("etag")
    assert etag is not None
    return etag


# --- Pure rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-4", [(0, 4)]),
        ("bytes=5-", [(5, 9)]),
        ("bytes=-3", [(7, 9)]),
        ("bytes=-30", [(0, 9)]),
        ("bytes=8-100", [(8, 9)]),
        ("bytes=0-0, 2-3", [(0, 0), (2, 3)]),
        ("bytes=10-", "unsatisfiable"),
        ("bytes=10-20, 30-", "unsatisfiable"),
        ("bytes=-0", "unsatisfiable"),
        ("bytes=5-4", None),  # invalid: ignored (RFC 9110 14.1.1, 14.2)
        ("bytes=-", None),
        ("bytes=a-b", None),
        ("items=0-4", None),
        ("bytes 0-4", None),
        ("bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)), None),
    ],
)
def test_parse_ranges(header: str, expected: object) -> None:
    assert parse_ranges(header, 10) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, []),
        ("gzip", ["gzip"]),
        ("br;q=0.5, gzip;q=0", ["br"]),
        ("*", ["br", "gzip"]),
        ("*;q=0, gzip", ["gzip"]),
        ("identity", []),
        ("x-gzip, BR", ["br", "gzip"]),
        ("br;q=0.1, gzip", ["gzip", "br"]),
        ("gzip;q=0.9, *;q=0.2", ["gzip", "br"]),
        ("gzip;q=bogus", []),
    ],
)
def test_accepted_encodings(header: str | None, expected: list[str]) -> None:
    assert accepted_encodings(header) == expected


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        StaticFiles(tmp_path / "missing")


# --- GET, HEAD, types ---------------------------------------------------------------------


async def test_get_small_and_big_files(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        small = await client.get("/digits.txt")
        big = await client.get("/big.bin")
        empty = await client.get("/empty.txt")
    assert small.status == 200
    assert small.body == DIGITS
    assert small.headers["content-type"] == "text/plain; charset=utf-8"
    assert small.headers["accept-ranges"] == "bytes"
    assert big.status == 200
    assert big.body == BIG
    assert len(BIG) > SMALL_FILE
    assert big.headers["content-length"] == str(len(BIG))
    assert big.headers["content-type"] == "application/octet-stream"
    assert empty.status == 200
    assert empty.body == b""
    assert empty.headers["content-length"] == "0"


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/page.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
    ],
)
async def test_content_type(root: Path, path: str, media_type: str) -> None:
    async with open_client(StaticFiles(root)) as client:
        response = await client.get(path)
    # mimetypes says application/javascript on older Pythons: charset either way.
    assert response.headers["content-type"] in (
        media_type,
        "application/javascript; charset=utf-8",
    )


@pytest.mark.parametrize("path", ["/digits.txt", "/big.bin"])
async def test_head_has_the_get_headers_and_no_body(root: Path, path: str) -> None:
    async with open_client(StaticFiles(root)) as client:
        get = await client.get(path)
        head = await client.request("HEAD", path)
    assert head.status == 200
    assert head.body == b""
    for name in ("content-length", "content-type", "etag", "last-modified", "accept-ranges"):
        assert head.headers[name] == get.headers[name]


async def test_other_methods_are_refused(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        response = await client.post("/digits.txt", body=b"x")
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


# --- Validators ---------------------------------------------------------------------------


async def test_validators_and_304(root: Path) -> None:
    path = root / "digits.txt"
    mtime = path.stat().st_mtime
    async with open_client(StaticFiles(root)) as client:
        first = await client.get("/digits.txt")
        etag = _etag(first)
        assert etag.startswith('"')
        assert first.headers["last-modified"] == email.utils.formatdate(mtime, usegmt=True)
        same = await client.get("/digits.txt", headers=[("if-none-match", etag)])
        weak = await client.get("/digits.txt", headers=[("if-none-match", f"W/{etag}")])
        listed = await client.get("/digits.txt", headers=[("if-none-match", f'"x", {etag}')])
        star = await client.get("/digits.txt", headers=[("if-none-match", "*")])
        two_lines = await client.get(
            "/digits.txt", headers=[("if-none-match", '"x"'), ("if-none-match", etag)]
        )
        other = await client.get("/digits.txt", headers=[("if-none-match", '"other"')])
        since = await client.get(
            "/digits.txt", headers=[("if-modified-since", first.headers["last-modified"])]
        )
        before = await client.get(
            "/digits.txt",
            headers=[("if-modified-since", email.utils.formatdate(mtime - 60, usegmt=True))],
        )
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.1.3).
        both = await client.get(
            "/digits.txt",
            headers=[
                ("if-none-match", '"other"'),
                ("if-modified-since", first.headers["last-modified"]),
            ],
        )
        bad_date = await client.get("/digits.txt", headers=[("if-modified-since", "yesterday")])
        head = await client.request("HEAD", "/digits.txt", headers=[("if-none-match", etag)])
    for response in (same, weak, listed, star, two_lines, since, head):
        assert response.status == 304
        assert response.body == b""
        assert response.headers["etag"] == etag
        assert "content-length" not in response.headers
    for response in (other, before, both, bad_date):
        assert response.status == 200
        assert response.body == DIGITS


async def test_etag_changes_with_the_file(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        before = _etag(await client.get("/digits.txt"))
        (root / "digits.txt").write_bytes(DIGITS * 2)
        after = await client.get("/digits.txt", headers=[("if-none-match", before)])
    assert after.status == 200
    assert _etag(after) != before


async def test_if_match(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        etag = _etag(await client.get("/digits.txt"))
        ok = await client.get("/digits.txt", headers=[("if-match", etag)])
        failed = await client.get("/digits.txt", headers=[("if-match", '"nope"')])
    assert ok.status == 200
    assert failed.status == 412


# --- Ranges -------------------------------------------------------------------------------


async def test_single_ranges(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        first = await client.get("/digits.txt", headers=[("range", "bytes=2-4")])
        suffix = await client.get("/digits.txt", headers=[("range", "bytes=-3")])
        big = await client.get("/big.bin", headers=[("range", f"bytes={READ_CHUNK - 5}-")])
    assert first.status == 206
    assert first.body == b"234"
    assert first.headers["content-range"] == "bytes 2-4/10"
    assert first.headers["content-length"] == "3"
    assert suffix.body == b"789"
    assert suffix.headers["content-range"] == "bytes 7-9/10"
    assert big.status == 206
    assert big.body == BIG[READ_CHUNK - 5 :]


async def test_multiple_ranges(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        response = await client.get("/digits.txt", headers=[("range", "bytes=0-1, 5-6")])
    assert response.status == 206
    media_type, _, boundary = response.headers["content-type"].partition("; boundary=")
    assert media_type == "multipart/byteranges"
    assert len(response.body) == int(response.headers["content-length"])
    expected = (
        f"--{boundary}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-range: bytes 0-1/10\r\n\r\n01\r\n"
        f"--{boundary}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-range: bytes 5-6/10\r\n\r\n56\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    assert response.body == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=5-4",  # invalid: ignored, not refused (RFC 9110 14.2)
        "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)),  # over the cap
        "bytes=0-9, 0-9",  # more bytes than the file: served whole
        "lines=1-2",
        "bytes=0-1\nbytes=2-3",  # two Range fields
    ],
)
async def test_ranges_served_whole(root: Path, header: str) -> None:
    fields = [("range", value) for value in header.split("\n")]
    async with open_client(StaticFiles(root)) as client:
        response = await client.get("/digits.txt", headers=fields)
    assert response.status == 200
    assert response.body == DIGITS


async def test_unsatisfiable_range(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        response = await client.get("/digits.txt", headers=[("range", "bytes=10-")])
    assert response.status == 416
    assert response.headers["content-range"] == "bytes */10"


async def test_if_range(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        first = await client.get("/digits.txt")
        etag, date = _etag(first), first.headers["last-modified"]
        asked = [("range", "bytes=0-1")]
        by_tag = await client.get("/digits.txt", headers=[*asked, ("if-range", etag)])
        by_date = await client.get("/digits.txt", headers=[*asked, ("if-range", date)])
        stale = await client.get("/digits.txt", headers=[*asked, ("if-range", '"old"')])
        weak = await client.get("/digits.txt", headers=[*asked, ("if-range", f"W/{etag}")])
        head = await client.request("HEAD", "/digits.txt", headers=asked)
    assert (by_tag.status, by_tag.body) == (206, b"01")
    assert (by_date.status, by_date.body) == (206, b"01")
    assert (stale.status, stale.body) == (200, DIGITS)
    assert (weak.status, weak.body) == (200, DIGITS)
    assert head.status == 200


# --- Precompressed siblings ---------------------------------------------------------------


async def test_precompressed(root: Path) -> None:
    text = b"hello " * 100
    (root / "c.txt").write_bytes(text)
    (root / "c.txt.gz").write_bytes(gzip.compress(text))
    (root / "c.txt.br").write_bytes(b"pretend brotli")
    async with open_client(StaticFiles(root)) as client:
        plain = await client.get("/c.txt")
        gz = await client.get("/c.txt", headers=[("accept-encoding", "gzip")])
        br = await client.get("/c.txt", headers=[("accept-encoding", "gzip, br")])
        br_two_lines = await client.get(
            "/c.txt", headers=[("accept-encoding", "gzip;q=0"), ("accept-encoding", "br")]
        )
        prefers_gzip = await client.get("/c.txt", headers=[("accept-encoding", "br;q=0.5, gzip")])
        refused = await client.get("/c.txt", headers=[("accept-encoding", "br;q=0, gzip;q=0")])
        gz_304 = await client.get(
            "/c.txt", headers=[("accept-encoding", "gzip"), ("if-none-match", _etag(gz))]
        )
        plain_vs_gz = await client.get("/c.txt", headers=[("if-none-match", _etag(gz))])
    assert plain.body == text
    assert "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "accept-encoding"
    assert gz.headers["content-encoding"] == "gzip"
    assert gzip.decompress(gz.body) == text
    assert gz.headers["content-type"] == "text/plain; charset=utf-8"
    assert gz.headers["vary"] == "accept-encoding"
    assert br.headers["content-encoding"] == "br"
    assert br.body == b"pretend brotli"
    assert br_two_lines.headers["content-encoding"] == "br"
    assert len({_etag(plain), _etag(gz), _etag(br)}) == 3
    assert prefers_gzip.headers["content-encoding"] == "gzip"
    assert refused.body == text
    assert gz_304.status == 304
    assert plain_vs_gz.status == 200


async def test_sibling_served_directly_is_a_file(root: Path) -> None:
    (root / "c.txt").write_bytes(b"x")
    (root / "c.txt.gz").write_bytes(gzip.compress(b"x"))
    async with open_client(StaticFiles(root)) as client:
        response = await client.get("/c.txt.gz")
    assert response.headers["content-type"] in ("application/gzip", "application/x-gzip")
    assert "content-encoding" not in response.headers


# --- Directories --------------------------------------------------------------------------


async def test_directories(root: Path) -> None:
    async with open_client(StaticFiles(root)) as client:
        redirect = await client.get("/sub?x=1")
        plain = await client.get("/sub/")
    async with open_client(StaticFiles(root, html=True)) as client:
        index = await client.get("/sub/")
        bare = await client.get("/bare/")
    assert redirect.status == 301
    assert redirect.headers["location"] == "./sub/?x=1"
    assert plain.status == 404
    assert index.status == 200
    assert index.body == b"<h1>index</h1>"
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert bare.status == 404


async def test_listing_escapes_names(root: Path) -> None:
    evil = '<img src=x onerror="alert(1)">'
    (root / evil).write_text("x")
    (root / "javascript:alert(1)").write_text("x")
    (root / ".secret").write_text("x")
    async with open_client(StaticFiles(root, listing=True)) as client:
        response = await client.get("/")
        sub = await client.get("/sub/")
        served = await client.get("/" + evil.replace(" ", "%20").replace('"', "%22"))
    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.body.decode()
    assert "<img" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert 'href="./%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E"' in page
    assert 'href="./javascript%3Aalert%281%29"' in page
    assert 'href="./sub/"' in page
    assert ".secret" not in page
    assert "other.txt" in sub.body.decode()
    assert served.status == 200


# --- A file that changes while it is sent -------------------------------------------------


async def test_shrinking_file_is_cut(root: Path) -> None:
    path = root / "big.bin"
    seen = 0

    class Shrinking(StaticFiles):
        async def __call__(self, request: trioserve.Request) -> trioserve.Response:
            response = await super().__call__(request)
            body = response.body
            assert isinstance(body, FileBody)

            async def shrink_after_first() -> AsyncIterator[bytes]:
                nonlocal seen
                try:
                    async for chunk in body:
                        seen += len(chunk)
                        yield chunk
                        os.truncate(path, READ_CHUNK + 10)
                finally:
                    await body.aclose()

            return response.with_body(shrink_after_first())

    async with open_client(Shrinking(root)) as client:
        with pytest.raises(trio.BrokenResourceError):
            await client.get("/big.bin")
    assert seen == READ_CHUNK  # the second read saw the change: nothing more was sent


async def test_file_rewritten_in_place_is_cut(root: Path) -> None:
    # Same size, new bytes: the mtime changed, so the next read stops the body
    # rather than send the end of the new version after the start of the old.
    path = root / "big.bin"

    class Rewritten(StaticFiles):
        async def __call__(self, request: trioserve.Request) -> trioserve.Response:
            response = await super().__call__(request)
            body = response.body
            assert isinstance(body, FileBody)

            async def rewrite_after_first() -> AsyncIterator[bytes]:
                try:
                    async for chunk in body:
                        yield chunk
                        with path.open("r+b") as file:
                            file.write(b"\xff" * len(BIG))
                        stat = path.stat()
                        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
                finally:
                    await body.aclose()

            return response.with_body(rewrite_after_first())

    async with open_client(Rewritten(root)) as client:
        with pytest.raises(trio.BrokenResourceError):
            await client.get("/big.bin")


async def test_shrinking_file_is_cut_over_a_socket(root: Path) -> None:
    # A whole-file body from a real server, by sendfile: the connection ends short of
    # the declared length. (What came before the cut may hold the new bytes: sendfile
    # does not copy, and the socket buffer holds the page cache's pages. The
    # in-memory test above checks the prefix of the read-in-a-thread path.)
    path = root / "big.bin"
    async with serving(StaticFiles(root)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            received = await stream.receive_some(4096)
            os.truncate(path, 100)
            with contextlib.suppress(trio.BrokenResourceError):  # the abort resets
                while chunk := await stream.receive_some(65536):
                    received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(BIG) in head
    assert len(body) < len(BIG)


# --- A real client over a real socket -----------------------------------------------------


async def test_httpx_validators_and_ranges(root: Path) -> None:
    async with serving(StaticFiles(root)) as port, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{port}/big.bin"
        whole = await client.get(url)
        cached = await client.get(url, headers={"if-none-match": whole.headers["etag"]})
        part = await client.get(url, headers={"range": "bytes=100-199"})
        parts = await client.get(url, headers={"range": "bytes=0-0,-1"})
        unsatisfiable = await client.get(url, headers={"range": f"bytes={len(BIG)}-"})
        head = await client.head(url)
    assert whole.status_code == 200
    assert whole.content == BIG
    assert cached.status_code == 304
    assert part.status_code == 206
    assert part.content == BIG[100:200]
    assert parts.status_code == 206
    assert parts.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert parts.content.count(b"content-range: bytes") == 2
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(BIG)}"
    assert head.headers["content-length"] == str(len(BIG))
    assert head.content == b""


async def test_fifo_and_special_files_are_not_served(root: Path) -> None:
    os.mkfifo(root / "pipe")
    async with open_client(StaticFiles(root)) as client:
        with trio.fail_after(5):  # an open() that blocked on the FIFO would hang here
            response = await client.get("/pipe")
    assert response.status == 404


async def test_under_a_prefix(root: Path) -> None:
    static = StaticFiles(root, listing=True)

    async def handler(request: trioserve.Request) -> trioserve.Response:
        if request.raw_path.startswith(b"/static/"):
            rest = request.raw_path[len(b"/static") :].decode("latin-1")
            return await static.respond(request, rest)
        return trioserve.Response(200, body="app")

    async with open_client(handler) as client:
        file = await client.get("/static/digits.txt")
        redirect = await client.get("/static/sub")
        listing = await client.get("/static/sub/")
        app = await client.get("/digits.txt")
        escape = await client.get("/static/../static/digits.txt")
    assert file.body == DIGITS
    assert redirect.headers["location"] == "./sub/"  # resolves to /static/sub/
    assert 'href="./other.txt"' in listing.body.decode()
    assert app.body == b"app"
    assert escape.status == 404


async def test_listing_and_index_together(root: Path) -> None:
    async with open_client(StaticFiles(root, listing=True, html=True)) as client:
        index = await client.get("/sub/")
        listing = await client.request("HEAD", "/bare/")
        listing_get = await client.get("/bare/")
    assert index.body == b"<h1>index</h1>"
    assert listing.status == 200
    assert listing.body == b""
    assert listing.headers["content-length"] == str(len(listing_get.body))
