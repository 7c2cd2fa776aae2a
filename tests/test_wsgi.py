"""The WSGI adapter: PEP 3333 semantics, worker threads, and clients that go away.

Worker threads run on the real clock (an autojump clock would leap over deadlines
while a thread works), so every wait here is bounded by a deadline of a few seconds
and most tests take milliseconds. Plain WSGI apps are served in memory; the Flask
app is served on a real loopback socket and called with httpx.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

import trioserve
from trioserve.testing import open_client, open_connection, receive_all, stream_pair
from trioserve.wsgi import WSGIHandler, WSGIStatistics

from .wsgi_apps import flask_app

Environ = dict[str, object]
StartResponse = Callable[..., Callable[[bytes], object]]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

#: Every wait on a thread is bounded by this (seconds); a pass takes milliseconds.
PATIENCE = 5.0


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (it watches another thread) until true, for PATIENCE at most."""
    with trio.fail_after(PATIENCE):
        # No trio.Event to wait on: the state belongs to worker threads or to the
        # server's counters.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


async def wait_event(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, PATIENCE), "timed out"


class Recorder:
    """An iterable response that records its fate (PEP 3333 close())."""

    def __init__(self, chunks: Iterable[bytes], *, fail_at: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.sent = 0
        self.closed = threading.Event()
        self.thread: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("the iterable failed")
            self.sent += 1
            yield chunk

    def close(self) -> None:
        self.thread = threading.current_thread().name
        self.closed.set()


def simple_app(body: bytes = b"hello", status: str = "200 OK") -> App:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "text/plain")])
        return [body]

    return app


# --- environ ---------------------------------------------------------------------------


async def test_environ_has_every_pep_3333_key() -> None:
    seen: list[Environ] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(dict(environ))
        start_response("200 OK", [])
        return []

    handler = WSGIHandler(app, root_path="/root/")
    async with open_client(handler) as client:
        response = await client.post(
            "/root/a%2Fb%20c/caf%C3%A9?x=1&y=%20",
            headers=[
                ("Content-Type", "text/plain; charset=utf-8"),
                ("X-Dup", "a"),
                ("X-Dup", "b"),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
                ("X-Forwarded_For", "forged"),
            ],
            body=b"abc",
        )
    assert response.status == 200
    [environ] = seen
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == "/root"
    # Percent-decoded, but left as latin-1 "bytes in a str" (PEP 3333 Unicode Issues).
    path_info = environ["PATH_INFO"]
    assert isinstance(path_info, str)
    assert path_info.encode("latin-1").decode("utf-8") == "/a/b c/café"
    assert environ["QUERY_STRING"] == "x=1&y=%20"
    assert environ["REQUEST_URI"] == environ["RAW_URI"] == "/root/a%2Fb%20c/caf%C3%A9?x=1&y=%20"
    assert environ["CONTENT_TYPE"] == "text/plain; charset=utf-8"
    assert environ["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_HOST"] == "testserver"
    assert environ["HTTP_X_DUP"] == "a, b"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_FORWARDED_FOR" not in environ  # the underscore twin is dropped
    # In memory there is no socket: SERVER_NAME/PORT come from the Host header.
    assert environ["SERVER_NAME"] == "testserver"
    assert environ["SERVER_PORT"] == "80"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is False
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert hasattr(environ["wsgi.input"], "read")
    assert hasattr(environ["wsgi.errors"], "write")
    assert "REMOTE_ADDR" not in environ  # unknown in memory; see the socket tests


@pytest.mark.parametrize(
    ("target", "script_name", "path_info"),
    [
        ("/app", "/app", ""),
        ("/app/", "/app", "/"),
        ("/app/x", "/app", "/x"),
        ("/apple", "/app", "/apple"),  # not at a segment boundary: not the prefix
        ("/other", "/app", "/other"),  # a proxy already stripped it
    ],
)
async def test_root_path_splits_script_name_and_path_info(
    target: str, script_name: str, path_info: str
) -> None:
    seen: list[tuple[object, object]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append((environ["SCRIPT_NAME"], environ["PATH_INFO"]))
        start_response("204 No Content", [])
        return []

    async with open_client(WSGIHandler(app, root_path="/app")) as client:
        assert (await client.get(target)).status == 204
    assert seen == [(script_name, path_info)]


def test_handler_arguments_are_checked() -> None:
    app = simple_app()
    with pytest.raises(ValueError, match="root_path"):
        WSGIHandler(app, root_path="api")
    with pytest.raises(ValueError, match="max_threads"):
        WSGIHandler(app, max_threads=0)
    handler = WSGIHandler(app, root_path="/api", max_threads=3)
    assert "max_threads=3" in repr(handler)
    assert handler.statistics() == WSGIStatistics(
        threads_busy=0, max_threads=3, requests_waiting=0
    )


# --- wsgi.input --------------------------------------------------------------------------


def _body_digest_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Reads wsgi.input the way PATH_INFO names; answers the digest and line count."""
    stream = environ["wsgi.input"]
    assert hasattr(stream, "read")
    how = environ["PATH_INFO"]
    pieces: list[bytes] = []
    if how == "/read":
        pieces.append(stream.read())
    elif how == "/read-sized":
        while piece := stream.read(10_000):
            assert len(piece) <= 10_000
            pieces.append(piece)
        assert stream.read(10) == b""  # EOF stays EOF
    elif how == "/readline":
        while line := stream.readline():
            pieces.append(line)
    elif how == "/readline-sized":
        while line := stream.readline(7):
            assert len(line) <= 7
            pieces.append(line)
    elif how == "/iterate":
        pieces.extend(stream)
    elif how == "/readlines":
        pieces.extend(stream.readlines())
    data = b"".join(pieces)
    answer = {"sha256": hashlib.sha256(data).hexdigest(), "pieces": len(pieces)}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(answer).encode()]


LINES = b"".join(b"line %06d %s\n" % (i, b"x" * (i % 50)) for i in range(40_000))  # ~1.3 MB


@pytest.mark.parametrize(
    "how", ["/read", "/read-sized", "/readline", "/readline-sized", "/iterate", "/readlines"]
)
async def test_wsgi_input_reads_a_large_body(how: str) -> None:
    async with open_client(WSGIHandler(_body_digest_app)) as client:
        response = await client.post(how, body=LINES)
    assert response.status == 200
    answer = json.loads(response.body)
    assert answer["sha256"] == hashlib.sha256(LINES).hexdigest()
    if how in ("/readline", "/iterate", "/readlines"):
        assert answer["pieces"] == 40_000


async def test_wsgi_input_reads_a_chunked_body() -> None:
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (b"abc", b"de\nf", b"g")) + b"0\r\n\r\n"
    )
    request = b"POST /read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    async with open_connection(WSGIHandler(_body_digest_app)) as stream:
        await stream.send_all(
            request + b"GET /read HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = await receive_all(stream)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert hashlib.sha256(b"abcde\nfg").hexdigest().encode() in answer
    assert hashlib.sha256(b"").hexdigest().encode() in answer


async def test_wsgi_input_applies_backpressure() -> None:
    """The server reads the body only as fast as the application does."""
    first_read = threading.Event()
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        assert hasattr(stream, "read")
        head = stream.read(10)
        first_read.set()
        release.wait(PATIENCE)
        rest = stream.read()
        start_response("200 OK", [])
        return [b"%d" % (len(head) + len(rest))]

    size = 4 * 1024 * 1024
    sent = 0
    piece = b"x" * 16384

    async def upload(stream: trio.abc.Stream) -> None:
        nonlocal sent
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        while sent < size:
            await stream.send_all(piece)
            sent += len(piece)

    async with open_connection(WSGIHandler(app), buffer_size=65536) as stream:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload, stream)
            await wait_event(first_read)
            await trio.sleep(0.1)  # let the client push as much as it can
            # Held back: what the pipe buffers plus one read of the server.
            assert sent <= 4 * 65536
            release.set()
        answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"%d" % size)


async def test_body_can_be_read_while_the_response_streams() -> None:
    def echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        assert hasattr(stream, "read1")
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def pieces() -> Iterator[bytes]:
            # The head goes out first; the body is read as the response streams.
            yield b"echo:"
            while piece := stream.read1(1000):
                assert len(piece) <= 1000
                yield piece

        return pieces()

    body = bytes(range(256)) * 100
    async with open_client(WSGIHandler(echo)) as client:
        response = await client.post("/", body=body)
    assert response.body == b"echo:" + body


async def test_body_too_large_raised_into_the_app_becomes_413() -> None:
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        assert hasattr(stream, "read")
        try:
            stream.read()
        except trioserve.HTTPError as exc:
            errors.append(exc)
            # A second read must not pass for the end of the body.
            with pytest.raises(trioserve.HTTPError):
                stream.read(1)
            raise
        start_response("200 OK", [])
        return [b"unreachable"]

    config = trioserve.Config(max_body_size=1000)
    async with open_client(WSGIHandler(app), config) as client:
        # Chunked, so the limit is crossed while the application reads.
        response = await client.post(
            "/", body=b"y" * 5000, headers=[("Transfer-Encoding", "chunked")]
        )
    assert response.status == 413
    [error] = errors
    assert isinstance(error, trioserve.ContentTooLarge)


# --- start_response, write() and the iterable -------------------------------------------


async def test_write_callable_and_iterable_are_sent_in_order() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one ")
        write(b"")
        write(b"two ")

        def rest() -> Iterator[bytes]:
            yield b""
            yield b"three"

        return rest()

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
    assert response.status == 200
    assert response.body == b"one two three"
    assert response.headers["transfer-encoding"] == "chunked"


async def test_a_list_body_is_sent_with_content_length() -> None:
    async with open_client(WSGIHandler(simple_app(b"hello"))) as client:
        response = await client.get("/")
        again = await client.get("/")  # kept alive
    assert response.body == again.body == b"hello"
    assert response.headers["content-length"] == "5"
    assert client.connections_opened == 1


async def test_a_declared_content_length_is_honoured_when_streaming() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "6")])
        yield b"abc"
        yield b"def"

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
    assert response.body == b"abcdef"
    assert response.headers["content-length"] == "6"
    assert "transfer-encoding" not in response.headers


async def test_a_wrong_declared_content_length_cuts_the_connection() -> None:
    def liar(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        return [b"short"]

    async with open_connection(WSGIHandler(liar)) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await receive_all(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-length: 10" in head.lower()
    assert len(body) < 10  # the client sees a short body, never a complete response


async def test_head_keeps_the_get_headers() -> None:
    def declared(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # What Werkzeug does for HEAD: the GET's Content-Length, no body.
        start_response("200 OK", [("Content-Length", "1234")])
        return []

    async with open_client(WSGIHandler(simple_app(b"hello"))) as client:
        response = await client.request("HEAD", "/")
    assert response.body == b""
    assert response.headers["content-length"] == "5"
    async with open_client(WSGIHandler(declared)) as client:
        response = await client.request("HEAD", "/")
        again = await client.request("HEAD", "/")
    assert response.body == again.body == b""
    assert response.headers["content-length"] == "1234"
    assert client.connections_opened == 1


async def test_head_stops_a_streaming_app_and_closes_it() -> None:
    recorder = Recorder([b"chunk"] * 1000)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return recorder

    async with open_client(WSGIHandler(app)) as client:
        response = await client.request("HEAD", "/")
    assert response.status == 200
    assert response.body == b""
    assert recorder.closed.is_set()
    assert recorder.sent < 10


async def test_exc_info_replaces_the_head_before_it_is_sent() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("X-Before", "1")])
        try:
            raise ValueError("failed while rendering")
        except ValueError:
            start_response("503 Service Unavailable", [("X-After", "1")], sys.exc_info())
        return [b"sorry"]

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
    assert response.status == 503
    assert response.body == b"sorry"
    assert "x-after" in response.headers
    assert "x-before" not in response.headers


async def test_exc_info_is_re_raised_once_the_head_was_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = ValueError("failed after the head")
    raised: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [])
        write(b"partial")
        try:
            raise original
        except ValueError:
            try:
                start_response("500 Internal Server Error", [], sys.exc_info())
            except BaseException as exc:
                raised.append(exc)
                raise
        return [b"unreachable"]

    async with open_connection(WSGIHandler(app)) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await receive_all(stream)
    assert raised == [original]
    # The head and the partial body went out; the connection was then cut, with no
    # final chunk that would make the response look complete.
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in answer
    assert not answer.endswith(b"0\r\n\r\n")
    assert any(record.exc_info and record.exc_info[1] is original for record in caplog.records)


async def test_start_response_twice_without_exc_info_is_an_error() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        start_response("201 Created", [])
        return [b""]

    async with open_client(WSGIHandler(app)) as client:
        assert (await client.get("/")).status == 500


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("404 Not Here", 404),  # the reason phrase is ours (RFC 9112 4: clients ignore it)
        ("299", 299),
        ("OK", 500),
        ("2000 Too Long", 500),
        ("100 Continue", 500),  # interim responses are the server's
        (200, 500),
    ],
)
async def test_status_lines_are_checked(status: str, expected: int) -> None:
    async with open_client(WSGIHandler(simple_app(status=status))) as client:
        response = await client.get("/")
    assert response.status == expected


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Bad", "a\r\nInjected: yes")],
        [("Bad Name", "x")],
        [("X-Snowman", "\u2603")],
        [("X-Bytes", b"x")],
        ("X-Not-A-Pair",),
    ],
)
async def test_bad_response_headers_are_refused(headers: object) -> None:
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            start_response("200 OK", headers)
        except (TypeError, ValueError) as exc:
            errors.append(exc)
            raise
        return [b"unreachable"]

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
    assert response.status == 500
    assert b"Injected" not in response.body
    assert len(errors) == 1


# --- errors and close() ----------------------------------------------------------------


async def test_app_raising_before_start_response_gets_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("secret detail")

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
        assert (await client.get("/")).status == 500  # and the server goes on
    assert response.status == 500
    assert b"secret" not in response.body
    assert "secret detail" in caplog.text


async def test_close_is_called_on_success_in_the_worker_thread() -> None:
    recorder = Recorder([b"a", b"b", b"c"])

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return recorder

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
    assert response.body == b"abc"
    assert recorder.closed.is_set()
    assert recorder.thread is not None
    assert recorder.thread != threading.current_thread().name


async def test_close_is_called_when_the_iterable_fails_before_the_head() -> None:
    recorder = Recorder([b"never"], fail_at=0)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return recorder

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
    assert response.status == 500
    assert recorder.closed.is_set()


async def test_close_is_called_and_the_connection_cut_when_it_fails_after_the_head() -> None:
    recorder = Recorder([b"first", b"second"], fail_at=1)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return recorder

    async with open_connection(WSGIHandler(app)) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await receive_all(stream)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"first" in answer
    assert not answer.endswith(b"0\r\n\r\n")
    assert recorder.closed.is_set()


async def test_an_error_in_close_is_logged_and_the_response_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class FailingClose(Recorder):
        def close(self) -> None:
            super().close()
            raise OSError("cleanup failed")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return FailingClose([b"whole"])

    async with open_client(WSGIHandler(app)) as client:
        response = await client.get("/")
    assert response.body == b"whole"
    assert "cleanup failed" in caplog.text


async def test_no_start_response_and_non_bytes_are_errors() -> None:
    def forgetful(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        return [b"body without a head"]

    def textual(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return ["text, not bytes"]  # type: ignore[list-item]

    for app in (forgetful, textual):
        async with open_client(WSGIHandler(app)) as client:
            assert (await client.get("/")).status == 500


async def test_wsgi_errors_lines_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        errors = environ["wsgi.errors"]
        assert hasattr(errors, "write")
        assert hasattr(errors, "writelines")
        errors.write("first line\nsecond ")
        errors.writelines(["line\n", "unterminated"])
        start_response("200 OK", [])
        return []

    with caplog.at_level(logging.ERROR, logger="trioserve.error"):
        async with open_client(WSGIHandler(app)) as client:
            await client.get("/")
    messages = [r.getMessage() for r in caplog.records if r.name == "trioserve.error"]
    assert messages == ["first line", "second line", "unterminated"]


# --- threads -------------------------------------------------------------------------------


async def test_the_event_loop_runs_while_the_app_blocks() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        time.sleep(0.3)
        start_response("200 OK", [])
        return [b"slept"]

    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        async with open_client(WSGIHandler(app)) as client:
            assert (await client.get("/")).body == b"slept"
        nursery.cancel_scope.cancel()
    assert ticks >= 10


async def test_max_threads_bounds_concurrent_calls() -> None:
    lock = threading.Lock()
    running = peak = 0

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(PATIENCE)  # held until the test has seen two requests wait
        with lock:
            running -= 1
        start_response("200 OK", [])
        return [b"done"]

    release = threading.Event()
    handler = WSGIHandler(app, max_threads=2)
    waiting: list[int] = []

    async def one_request() -> None:
        async with open_client(handler) as client:
            assert (await client.get("/")).body == b"done"

    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one_request)
            # The four requests reach the handler in any order: wait until all are in.
            await wait_for(lambda: handler.statistics().requests_waiting == 2 and running == 2)
            waiting.append(handler.statistics().threads_busy)
            release.set()
    assert peak == 2
    assert waiting == [2]  # two threads busy while two requests wait for one
    assert handler.statistics().threads_busy == 0


async def test_context_variables_do_not_leak_between_requests() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(var.get())
        var.set("set by a request")
        start_response("200 OK", [])
        return []

    handler = WSGIHandler(app, max_threads=1)  # the same worker thread, reused
    async with open_client(handler) as client:
        await client.get("/")
        await client.get("/")
    assert seen == ["unset", "unset"]


# --- clients that go away ---------------------------------------------------------------


async def test_client_gone_mid_stream_stops_and_closes_the_app() -> None:
    closed = threading.Event()
    produced = 0

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])

        def forever() -> Iterator[bytes]:
            nonlocal produced
            try:
                while True:
                    produced += 1
                    yield b"x" * 8192
            finally:
                closed.set()

        return forever()

    handler = WSGIHandler(app)
    server = trioserve.Server(handler)
    async with open_connection(server, buffer_size=16384) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        received = await stream.receive_some(65536)
        assert received.startswith(b"HTTP/1.1 200 ")
        await stream.aclose()
        await wait_event(closed)
    # The thread did not run ahead of the client: a few pieces beyond what was read.
    assert produced < 20
    await wait_for(lambda: handler.statistics().threads_busy == 0)
    assert server.statistics().connections_aborted == 1


async def test_client_gone_while_the_app_computes_its_head() -> None:
    release = threading.Event()
    outcome: list[BaseException | None] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        release.wait(PATIENCE)
        write = start_response("200 OK", [])
        try:
            write(b"too late")
        except BaseException as exc:
            outcome.append(exc)
            raise
        outcome.append(None)
        return []

    handler = WSGIHandler(app)
    server = trioserve.Server(handler)
    async with open_connection(server) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_for(lambda: handler.statistics().threads_busy == 1)
        await stream.aclose()
        # The server notices at once, with the application still blocked.
        await wait_for(lambda: server.statistics().client_disconnects == 1)
        assert handler.statistics().threads_busy == 1
        release.set()
        await wait_for(lambda: handler.statistics().threads_busy == 0)
    [error] = outcome
    assert isinstance(error, trioserve.ClientDisconnected)


async def test_client_gone_mid_upload_unblocks_the_reading_app() -> None:
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        assert hasattr(stream, "read")
        try:
            stream.read()
        except trioserve.ClientDisconnected as exc:
            errors.append(exc)
            raise
        start_response("200 OK", [])
        return [b"unreachable"]

    handler = WSGIHandler(app)
    async with open_connection(handler) as stream:
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        await stream.send_all(b"x" * 1000)
        await wait_for(lambda: handler.statistics().threads_busy == 1)
        await stream.aclose()
        await wait_for(lambda: handler.statistics().threads_busy == 0)
    assert len(errors) == 1


async def test_a_write_timeout_stops_the_app() -> None:
    closed = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])

        def forever() -> Iterator[bytes]:
            try:
                while True:
                    yield b"x" * 65536
            finally:
                closed.set()

        return forever()

    config = trioserve.Config(write_timeout=0.2)
    handler = WSGIHandler(app)
    server = trioserve.Server(handler, config)
    async with open_connection(server, buffer_size=16384) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # The client reads nothing: the server's write times out.
        await wait_event(closed)
        await wait_for(lambda: handler.statistics().threads_busy == 0)
        assert server.statistics().write_timeouts == 1


async def test_shutdown_cuts_a_slow_app_off_and_its_thread_still_ends() -> None:
    release = threading.Event()
    outcome: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        release.wait(PATIENCE)
        write = start_response("200 OK", [])
        try:
            write(b"too late")
        except trioserve.ClientDisconnected as exc:
            outcome.append(exc)
            raise
        return []

    handler = WSGIHandler(app)
    config = trioserve.Config(shutdown_timeout=0.1)
    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(trioserve.serve, handler, 0, host="127.0.0.1", config=config)
            )
            client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await wait_for(lambda: handler.statistics().threads_busy == 1)
            await server.shutdown()  # returns at shutdown_timeout, the app still blocked
            assert await client.receive_some() == b""
            await client.aclose()
    assert server.statistics().shutdown_cutoffs == 1
    release.set()
    await wait_for(lambda: handler.statistics().threads_busy == 0)
    assert len(outcome) == 1


async def test_a_connection_cancelled_mid_body_read_still_frees_the_thread() -> None:
    """The connection task is cancelled (a hard stop, the shutdown cut-off, or the
    embedding program cancelling serve) while the thread waits in ``wsgi.input``: its
    read was taken off the mailbox but never answered. It must still be answered,
    else the thread and its limiter token leak for good; with ``max_threads=1`` the
    next request would then wait for a thread forever."""
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        assert hasattr(stream, "read")
        try:
            body = stream.read()
        except trioserve.ClientDisconnected as exc:
            errors.append(exc)
            raise
        start_response("200 OK", [])
        return [body]

    handler = WSGIHandler(app, max_threads=1)
    server = trioserve.Server(handler)
    client, server_end = stream_pair()
    with trio.fail_after(PATIENCE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_connection, server_end)
            await client.send_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
            )
            # 100 Continue goes out on the body's first read: the connection task
            # has taken the thread's read and now waits for bytes that never come.
            assert (await client.receive_some()).startswith(b"HTTP/1.1 100 ")
            nursery.cancel_scope.cancel()
    await wait_for(lambda: handler.statistics().threads_busy == 0)
    [error] = errors
    assert isinstance(error, trioserve.ClientDisconnected)
    async with open_client(handler) as http:
        with trio.fail_after(PATIENCE):
            response = await http.post("/", body=b"next")
    assert (response.status, response.body) == (200, b"next")


class SendFails(trio.abc.Stream):
    """Receives normally; every send fails, as on a connection reset mid-response."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("injected failure")

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def test_app_is_stopped_even_if_its_body_is_never_closed() -> None:
    """The head fails to send: the engine drops the body without aclose()."""
    closed = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])

        def forever() -> Iterator[bytes]:
            try:
                while True:
                    yield b"x"
            finally:
                closed.set()

        return forever()

    handler = WSGIHandler(app)
    async with open_connection(handler, wrap=SendFails) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_event(closed)
        await wait_for(lambda: handler.statistics().threads_busy == 0)


# --- Flask, over a real socket ---------------------------------------------------------------


@asynccontextmanager
async def serve_wsgi(app: object, **options: object) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``WSGIHandler(app, **options)`` on 127.0.0.1 and yield a client for it."""
    handler = WSGIHandler(app, **options)  # type: ignore[arg-type]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
            )
            base_url = f"http://127.0.0.1:{server.ports[0]}"
            try:
                async with httpx.AsyncClient(base_url=base_url) as client:
                    yield client
            finally:
                await server.shutdown()


async def test_flask_routes_and_json() -> None:
    async with serve_wsgi(flask_app.app) as client:
        response = await client.get("/")
        assert response.status_code == 200
        assert response.text == "Hello from Flask"
        response = await client.get("/items/42", params={"q": "trio"})
        assert response.json() == {
            "id": 42,
            "q": "trio",
            "url": "/items/42",
            "remote_addr": "127.0.0.1",
            "script_root": "",
        }
        response = await client.post("/echo-json", json={"a": [1, 2, 3]})
        assert response.json() == {"received": {"a": [1, 2, 3]}}
        assert (await client.get("/missing")).status_code == 404
        head = await client.head("/")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str(len("Hello from Flask"))


async def test_flask_under_a_root_path() -> None:
    async with serve_wsgi(flask_app.app, root_path="/api") as client:
        response = await client.get("/api/items/7")
    assert response.json()["url"] == "/api/items/7"
    assert response.json()["script_root"] == "/api"


async def test_flask_streams_with_stream_with_context() -> None:
    async with serve_wsgi(flask_app.app) as client:
        async with client.stream("GET", "/stream", params={"n": 50, "prefix": "p"}) as response:
            assert response.headers["transfer-encoding"] == "chunked"
            lines = [line async for line in response.aiter_lines()]
    assert lines == [f"p {i}" for i in range(50)]


async def test_flask_multipart_upload() -> None:
    data = bytes(range(256)) * 8192  # 2 MiB, every byte value
    async with serve_wsgi(flask_app.app) as client:
        response = await client.post(
            "/upload",
            files={"file": ("blob.bin", data, "application/octet-stream")},
            data={"note": "hello"},
        )
    assert response.status_code == 200
    assert response.json() == {
        "filename": "blob.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "note": "hello",
    }


async def test_flask_error_page(caplog: pytest.LogCaptureFixture) -> None:
    async with serve_wsgi(flask_app.app) as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    # Flask logs the exception to wsgi.errors, which lands in trioserve.error.
    assert "Exception on /boom" in caplog.text
