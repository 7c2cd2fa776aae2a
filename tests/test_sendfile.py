"""Files sent with ``os.sendfile`` on plain sockets, and ``Response.file``.

A large file's body is a ``FileBody``; on a plain TCP or Unix socket it goes out with
``sendfile`` under the write deadline, anywhere else (TLS, memory streams) in pieces
read in a worker thread. ``Response.file(path)`` is the same sender for one's own
handler: validators, ranges, 404 when the file is missing.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
import trustme

import trioserve
from trioserve import _filebody
from trioserve._filebody import READ_CHUNK, FileSource
from trioserve.static import StaticFiles
from trioserve.testing import open_client, parse_responses, receive_all

from .asgi_apps.serving import serve_asgi
from .test_static_security import serving  # a handler on a real socket

ASGISend = Callable[[dict[str, object]], Awaitable[None]]

BIG = bytes(range(256)) * (4 * READ_CHUNK // 256 + 7)  # ~1 MiB, not a multiple of a page
SMALL = b"small file\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "big.bin").write_bytes(BIG)
    (tmp_path / "small.txt").write_bytes(SMALL)
    return tmp_path


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts ``os.sendfile`` wrote, call by call."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        calls.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    return calls


# --- sendfile on a plain socket -----------------------------------------------------------


async def test_large_files_and_ranges_go_by_sendfile_over_tcp(
    root: Path, sendfile_calls: list[int]
) -> None:
    async with serving(StaticFiles(root)) as port, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{port}/big.bin"
        whole = await client.get(url)
        whole_calls = len(sendfile_calls)
        part = await client.get(url, headers={"range": "bytes=1000-299999"})
        parts = await client.get(url, headers={"range": "bytes=0-9,-10"})
        small = await client.get(f"http://127.0.0.1:{port}/small.txt")
    assert whole.content == BIG
    assert whole_calls > 0
    # All but the last byte of the range by sendfile; that byte read and checked.
    assert sum(sendfile_calls[:whole_calls]) == len(BIG) - 1
    assert part.status_code == 206
    assert part.content == BIG[1000:300000]
    assert parts.status_code == 206
    assert BIG[:10] in parts.content
    assert BIG[-10:] in parts.content
    assert sum(sendfile_calls) == len(BIG) - 1 + (299000 - 1) + 9 + 9
    assert small.content == SMALL  # small files are bytes bodies: no sendfile


async def test_memory_streams_read_in_a_thread_instead(
    root: Path, sendfile_calls: list[int]
) -> None:
    async with open_client(StaticFiles(root)) as client:
        whole = await client.get("/big.bin")
        part = await client.get("/big.bin", headers=[("range", "bytes=5-")])
    assert whole.body == BIG
    assert part.body == BIG[5:]
    assert sendfile_calls == []


async def test_tls_reads_in_a_thread_instead(
    root: Path, sendfile_calls: list[int], tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    context = trioserve.create_ssl_context(tmp_path / "cert.pem", tmp_path / "key.pem")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(
                trioserve.serve, StaticFiles(root), 0, host="127.0.0.1", ssl_context=context
            )
        )
        verify = ssl.create_default_context(cafile=tmp_path / "ca.pem")
        async with httpx.AsyncClient(verify=verify, trust_env=False) as client:
            whole = await client.get(f"https://127.0.0.1:{server.ports[0]}/big.bin")
        nursery.cancel_scope.cancel()
    assert whole.content == BIG
    assert sendfile_calls == []


async def test_a_client_that_stops_reading_is_aborted_at_write_timeout(
    root: Path, autojump_clock: trio.testing.MockClock, sendfile_calls: list[int]
) -> None:
    (root / "huge.bin").write_bytes(BIG * 16)  # more than the socket buffers hold
    server = trioserve.Server(StaticFiles(root))
    ours, theirs = trio.socket.socketpair()
    client = trio.SocketStream(theirs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_connection, trio.SocketStream(ours))
        await client.send_all(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        # The file is opened in a worker thread, during which the virtual clock may
        # jump: count from the head's arrival, then stop reading.
        answer = await client.receive_some(4096)
        started = trio.current_time()
        await trio.sleep(server.config.write_timeout - 1)
        assert server.statistics().connections_open == 1
        await trio.sleep(2)
        stats = server.statistics()
        assert stats.write_timeouts == 1
        assert stats.connections_open == 0
    assert trio.current_time() - started == pytest.approx(server.config.write_timeout + 1)
    assert 0 < sum(sendfile_calls) < len(BIG) * 16
    async with client:
        answer += await receive_all(client)
    with pytest.raises(ValueError, match="without sending complete message body"):
        parse_responses(answer)  # cut off, never ended as if complete


async def test_a_file_rewritten_in_place_is_cut_before_its_last_byte(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = root / "big.bin"
    real = os.sendfile

    def rewriting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        with open(path, "r+b") as file:  # same size, new bytes and mtime
            file.write(b"\xff" * 16)
        os.utime(path, ns=(1, 1))
        return sent

    monkeypatch.setattr(os, "sendfile", rewriting)
    async with serving(StaticFiles(root)) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            received = await receive_all(stream)
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(BIG) in head
    assert len(body) < len(BIG)  # never complete: the client sees the cut
    [record] = [r for r in caplog.records if "changed while being sent" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None


# --- Response.file ----------------------------------------------------------------------


def _file_handler(path: Path, **kwargs: object) -> trioserve.Handler:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response.file(path, **kwargs)  # type: ignore[arg-type]

    return handler


async def test_response_file_validators_and_ranges(root: Path) -> None:
    handler = _file_handler(root / "big.bin", headers=[("cache-control", "max-age=60")])
    async with open_client(handler) as client:
        whole = await client.get("/download")
        etag = whole.headers["etag"]
        cached = await client.get("/download", headers=[("if-none-match", etag)])
        part = await client.get("/download", headers=[("range", "bytes=10-19")])
        head = await client.request("HEAD", "/download")
        failed = await client.get("/download", headers=[("if-match", '"other"')])
    assert whole.status == 200
    assert whole.body == BIG
    assert whole.headers["content-type"] == "application/octet-stream"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["cache-control"] == "max-age=60"
    assert "last-modified" in whole.headers
    assert cached.status == 304
    assert cached.body == b""
    assert cached.headers["cache-control"] == "max-age=60"
    assert part.status == 206
    assert part.body == BIG[10:20]
    assert head.status == 200
    assert head.headers["content-length"] == str(len(BIG))
    assert head.body == b""
    assert failed.status == 412


async def test_response_file_for_a_post_ignores_preconditions(root: Path) -> None:
    async with open_client(_file_handler(root / "small.txt")) as client:
        first = await client.get("/")
        answer = await client.post(
            "/",
            body=b"",
            headers=[("if-none-match", first.headers["etag"]), ("range", "bytes=0-0")],
        )
    assert answer.status == 200
    assert answer.body == SMALL


async def test_response_file_missing_is_404(tmp_path: Path) -> None:
    gone = _file_handler(tmp_path / "gone.txt", headers=[("access-control-allow-origin", "*")])
    async with open_client(gone) as client:
        missing = await client.get("/")
    assert missing.status == 404
    assert missing.headers["access-control-allow-origin"] == "*"
    async with open_client(_file_handler(tmp_path)) as client:
        directory = await client.get("/")
    assert directory.status == 404


async def test_response_file_media_type_and_download_name(root: Path) -> None:
    async with open_client(
        _file_handler(root / "small.txt", media_type="text/csv", filename="report 2026.csv")
    ) as client:
        plain = await client.get("/")
    async with open_client(_file_handler(root / "small.txt", filename="résumé.txt")) as client:
        accented = await client.get("/")
    async with open_client(
        _file_handler(root / "small.txt", headers=[("content-type", "text/x-log")])
    ) as client:
        by_header = await client.get("/")
    assert plain.headers["content-type"] == "text/csv"
    assert plain.headers["content-disposition"] == 'attachment; filename="report 2026.csv"'
    assert accented.headers["content-type"] == "text/plain; charset=utf-8"
    assert accented.headers["content-disposition"] == (
        "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"
    )
    assert by_header.headers["content-type"] == "text/x-log"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"headers": [("content-length", "3")]}, "written by the file sender"),
        ({"headers": [("ETag", '"x"')]}, "written by the file sender"),
        (
            {"headers": [("content-type", "text/plain")], "media_type": "text/csv"},
            "content type once",
        ),
        ({"filename": 'a"\r\nx-injected: 1'}, "control characters"),
        ({"filename": ""}, "non-empty"),
        ({"filename": "a.txt", "headers": [("Content-Disposition", "inline")]}, "name once"),
        ({"media_type": "text/plain\r\nx-injected: 1"}, "invalid value"),
    ],
)
def test_response_file_refuses(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        trioserve.Response.file("x.txt", **kwargs)  # type: ignore[arg-type]


async def test_response_file_body_iterated_by_anyone_is_the_whole_file(root: Path) -> None:
    body = trioserve.Response.file(root / "big.bin").body
    assert isinstance(body, FileSource)
    assert b"".join([chunk async for chunk in body]) == BIG
    os.mkfifo(root / "fifo")
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        async for _ in trioserve.Response.file(root / "fifo").body:  # never hangs
            pass


async def test_response_file_over_tcp_uses_sendfile(root: Path, sendfile_calls: list[int]) -> None:
    async with serving(_file_handler(root / "big.bin")) as port, httpx.AsyncClient() as client:
        whole = await client.get(f"http://127.0.0.1:{port}/")
    assert whole.content == BIG
    assert sum(sendfile_calls) == len(BIG) - 1


async def test_a_trickling_reader_is_cut_off_at_write_timeout_per_piece(
    root: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Progress does not extend the deadline byte by byte: each 256 KiB piece must go
    # within write_timeout, as for bytes bodies.
    (root / "huge.bin").write_bytes(BIG * 8)
    server = trioserve.Server(StaticFiles(root), config=trioserve.Config(write_timeout=2))
    ours, theirs = trio.socket.socketpair()
    received = 0
    async with trio.open_nursery() as nursery, trio.SocketStream(theirs) as client:
        nursery.start_soon(server.serve_connection, trio.SocketStream(ours))
        await client.send_all(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        with contextlib.suppress(trio.BrokenResourceError):
            while chunk := await client.receive_some(4096):  # 8 KiB/s
                received += len(chunk)
                await trio.sleep(0.5)
    assert server.statistics().write_timeouts == 1
    assert received < len(BIG) * 8


@pytest.mark.parametrize(
    ("error", "counter"),
    [(errno.EIO, "handler_errors"), (errno.EPIPE, "client_disconnects")],
)
async def test_sendfile_errors_are_sorted(
    root: Path, monkeypatch: pytest.MonkeyPatch, error: int, counter: str
) -> None:
    def failing(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "sendfile", failing)
    server = trioserve.Server(StaticFiles(root))
    ours, theirs = trio.socket.socketpair()
    async with trio.open_nursery() as nursery, trio.SocketStream(theirs) as client:
        nursery.start_soon(server.serve_connection, trio.SocketStream(ours))
        await client.send_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await receive_all(client)
    assert answer.startswith(b"HTTP/1.1 200 ")  # the head went; the body was cut
    stats = server.statistics()
    assert getattr(stats, counter) == 1
    assert stats.connections_aborted == 1


async def test_pages_not_in_the_page_cache_are_read_in_a_thread_first(
    root: Path, monkeypatch: pytest.MonkeyPatch, sendfile_calls: list[int]
) -> None:
    read_ahead: list[int] = []
    real = _filebody._read_ahead

    def recording(fd: int, offset: int, count: int) -> None:
        assert threading.current_thread() is not threading.main_thread()
        read_ahead.append(count)
        real(fd, offset, count)

    monkeypatch.setattr(_filebody, "_cached", lambda fd, start, end: False)
    monkeypatch.setattr(_filebody, "_read_ahead", recording)
    async with serving(StaticFiles(root)) as port, httpx.AsyncClient() as client:
        whole = await client.get(f"http://127.0.0.1:{port}/big.bin")
    assert whole.content == BIG
    assert sum(read_ahead) == sum(sendfile_calls) == len(BIG) - 1


def test_page_cache_probe_sees_a_file_just_written(root: Path) -> None:
    with open(root / "big.bin", "rb") as file:
        cached = _filebody._cached(file.fileno(), 0, len(BIG))
    assert cached is (_filebody._RWF_NOWAIT is not None)


async def test_asgi_pathsend_goes_by_sendfile_over_tcp(
    root: Path, sendfile_calls: list[int]
) -> None:
    async def app(scope: dict[str, object], receive: object, send: ASGISend) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-length", str(len(BIG)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(root / "big.bin")})

    async with serve_asgi(app, lifespan="off") as client:  # type: ignore[arg-type]
        whole = await client.get("/")
    assert whole.content == BIG
    assert sum(sendfile_calls) == len(BIG) - 1
