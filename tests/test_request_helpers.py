"""The request helpers: ``json()``, ``form()``, ``cookies`` and ``url``.

Forms and JSON are driven through a real server (``trioserve.testing``) with the
bodies a browser or an HTTP client sends; multipart cases are also fed byte by byte
and behind a pipelined request (``tests.helpers.open_feed``).
"""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator

import pytest
import trio

import trioserve
from trioserve import _forms
from trioserve.testing import open_client, open_connection, receive_all

from .helpers import FEEDS, open_feed

BOUNDARY = "----trioserveBoundary7MA4YWxk"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts: tuple[str, bytes | str, str | None, str | None]) -> bytes:
    """A multipart/form-data body: parts are ``(name, data, filename, content_type)``."""
    out = b""
    for name, data, filename, content_type in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + (data.encode() if isinstance(data, str) else data) + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def describe(form: trioserve.FormData) -> list[list[object]]:
    described: list[list[object]] = []
    for name, value in form.multi_items():
        if isinstance(value, trioserve.UploadFile):
            data = value.file.read()
            described.append([name, value.filename, value.content_type, value.size, data.hex()])
        else:
            described.append([name, value])
    return described


def form_handler(**limits: int) -> trioserve.Handler:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        with await request.form(**limits) as form:
            return trioserve.Response.json(describe(form))

    return handler


async def post(
    handler: trioserve.Handler,
    content_type: str | None,
    body: bytes,
    config: trioserve.Config | None = None,
) -> trioserve.testing.TestResponse:
    headers = [] if content_type is None else [("content-type", content_type)]
    async with open_client(handler, config) as client:
        return await client.post("/", headers=headers, body=body)


# --- json() ---------------------------------------------------------------------------


async def echo_json(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response.json({"got": await request.json()})


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=utf-8", "application/problem+json"],
)
async def test_json_parses_a_json_body(content_type: str) -> None:
    response = await post(echo_json, content_type, '{"a": [1, 2.5, "é"]}'.encode())
    assert response.status == 200
    assert json.loads(response.body) == {"got": {"a": [1, 2.5, "é"]}}


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/jsonx", "text/json", "application/x-json+xml"],
)
async def test_json_refuses_another_content_type_with_415(content_type: str | None) -> None:
    response = await post(echo_json, content_type, b"{}")
    assert response.status == 415


@pytest.mark.parametrize(
    "body", [b"{", b"", b"{'a': 1}", b'"\xff"', "[1]".encode("utf-16"), b"[" * 100_000, b"NaNx"]
)
async def test_json_refuses_bad_json_or_bad_utf8_with_400(body: bytes) -> None:
    response = await post(echo_json, "application/json", body)
    assert response.status == 400


async def test_json_body_is_bounded_by_max_body_size() -> None:
    config = trioserve.Config(max_body_size=10)
    response = await post(echo_json, "application/json", b'{"a": "' + b"x" * 20 + b'"}', config)
    assert response.status == 413


# --- cookies ----------------------------------------------------------------------------


def request_with(*headers: tuple[str, str], **fields: object) -> trioserve.Request:
    return trioserve.Request(
        method="GET",
        target=str(fields.pop("target", "/")),
        headers=trioserve.Headers(headers),
        **fields,  # type: ignore[arg-type]  # the tests pass the right types
    )


def test_cookies_parse_pairs_and_skip_bad_ones() -> None:
    request = request_with(
        ("cookie", 'a=1; b="quoted value"; bad; =nameless; c d=spaced; e=; a=second'),
        ("cookie", "f=2;g=x=y"),
    )
    assert dict(request.cookies) == {
        "a": "1",
        "b": "quoted value",
        "e": "",
        "f": "2",
        "g": "x=y",
    }


def test_cookies_are_read_only_and_empty_without_a_header() -> None:
    request = request_with(("cookie", "a=1"))
    with pytest.raises(TypeError):
        request.cookies["a"] = "2"  # type: ignore[index]  # the point: it is read-only
    assert dict(request_with().cookies) == {}


async def test_cookies_through_the_server() -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response.json(dict(request.cookies))

    async with open_client(handler) as client:
        response = await client.get("/", headers=[("cookie", "session=abc; theme=dark")])
    assert json.loads(response.body) == {"session": "abc", "theme": "dark"}


# --- url --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fields", "url"),
    [
        ([("host", "example.com")], {"target": "/a%20b?x=1&y"}, "http://example.com/a%20b?x=1&y"),
        ([("host", "h:8443")], {"target": "/", "scheme": "https"}, "https://h:8443/"),
        ([("host", "[::1]:8000")], {"target": "/p"}, "http://[::1]:8000/p"),
        ([], {"target": "/p", "server": ("10.0.0.1", 80)}, "http://10.0.0.1/p"),
        ([], {"target": "/p", "server": ("::1", 8080)}, "http://[::1]:8080/p"),
        ([], {"target": "/p?q", "scheme": "https", "server": ("h", 443)}, "https://h/p?q"),
        ([], {"target": "/p"}, "http://localhost/p"),
        ([("host", "evil.com/x?")], {"target": "/p", "server": ("h", 80)}, "http://h/p"),
        ([("host", "u@evil.com")], {"target": "/p"}, "http://localhost/p"),
        ([("host", "h")], {"target": "http://other/q?z=1"}, "http://h/q?z=1"),
        ([("host", "h")], {"target": "*"}, "http://h/"),
    ],
)
def test_url(headers: list[tuple[str, str]], fields: dict[str, object], url: str) -> None:
    assert request_with(*headers, **fields).url == url


async def test_url_through_the_server() -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        return trioserve.Response.text(request.url)

    async with open_client(handler) as client:
        response = await client.get("/x?y=1", headers=[("host", "example.org:8080")])
    assert response.text == "http://example.org:8080/x?y=1"


# --- form(): urlencoded ----------------------------------------------------------------

URLENCODED = "application/x-www-form-urlencoded"


async def test_urlencoded_form() -> None:
    body = b"name=J%C3%A9r%C3%B4me&tag=a&tag=b+c&empty="
    response = await post(form_handler(), URLENCODED + "; charset=utf-8", body)
    assert response.status == 200
    assert json.loads(response.body) == [
        ["name", "Jérôme"],
        ["tag", "a"],
        ["tag", "b c"],
        ["empty", ""],
    ]


async def test_form_mapping_getlist_and_first_value() -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        form = await request.form()
        assert form is await request.form()  # read once, then the same form
        return trioserve.Response.json(
            [form["tag"], form.getlist("tag"), form.getlist("none"), list(form), len(form)]
        )

    response = await post(handler, URLENCODED, b"tag=a&x=1&tag=b")
    assert json.loads(response.body) == ["a", ["a", "b"], [], ["tag", "x"], 2]


@pytest.mark.parametrize("body", [b"a=1&&b=2", b"novalue", b"a=%ff", b"a=\xff", b"a=1&"], ids=repr)
async def test_malformed_urlencoded_form_is_400(body: bytes) -> None:
    assert (await post(form_handler(), URLENCODED, body)).status == 400


async def test_urlencoded_limits() -> None:
    assert (await post(form_handler(max_fields=3), URLENCODED, b"a=1&b=2&c=3")).status == 200
    assert (await post(form_handler(max_fields=3), URLENCODED, b"a=1&b=2&c=3&d=4")).status == 400
    body = b"a=" + b"x" * 100
    assert (await post(form_handler(max_field_size=102), URLENCODED, body)).status == 200
    assert (await post(form_handler(max_field_size=101), URLENCODED, body)).status == 413


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json"])
async def test_form_refuses_another_content_type_with_415(content_type: str | None) -> None:
    assert (await post(form_handler(), content_type, b"a=1")).status == 415


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=\x01"])
async def test_a_refused_form_leaves_the_body_unread(content_type: str) -> None:
    async def handler(request: trioserve.Request) -> trioserve.Response:
        with pytest.raises(trioserve.HTTPError):
            await request.form()
        return trioserve.Response(body=await request.body())

    assert (await post(handler, content_type, b"a=1")).body == b"a=1"


# --- form(): multipart ----------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDS)
async def test_multipart_fields_and_files(feed: str) -> None:
    png = bytes(range(256)) * 4
    body = multipart(
        ("title", "Hello, wörld", None, None),
        ("tag", "a", None, None),
        ("tag", "b", None, None),
        ("upload", png, "picture.png", "image/png"),
        ("upload", b"", "", "application/octet-stream"),
        ("note", "line 1\r\nline 2", None, "text/plain; charset=utf-8"),
    )
    head = (
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with open_feed(form_handler(), feed) as client:
        await client.send(head + body)
        response = await client.read("POST")
    assert response.status == 200
    assert json.loads(response.body) == [
        ["title", "Hello, wörld"],
        ["tag", "a"],
        ["tag", "b"],
        ["upload", "picture.png", "image/png", len(png), png.hex()],
        ["upload", "", "application/octet-stream", 0, ""],
        ["note", "line 1\r\nline 2"],
    ]


async def test_multipart_large_file_spools_to_disk_and_reads_back() -> None:
    data = bytes(range(251)) * 1000  # 251 000 bytes, over a 4 KiB spool
    seen: list[object] = []

    async def handler(request: trioserve.Request) -> trioserve.Response:
        with await request.form(spool_size=4096) as form:
            upload = form["f"]
            assert isinstance(upload, trioserve.UploadFile)
            seen.append(upload.file)
            seen.append(upload.file._rolled)  # type: ignore[attr-defined]  # on disk?
            first = await upload.read(10)
            rest = await upload.read()
            await upload.seek(0)
            again = await upload.read()
            assert first + rest == again
            return trioserve.Response.text(f"{upload.size} {again == data}")

    response = await post(handler, MULTIPART, multipart(("f", data, "big.bin", None)))
    assert response.text == f"{len(data)} True"
    assert seen[1] is True
    assert seen[0].closed  # type: ignore[attr-defined]  # the `with` closed it


@pytest.mark.parametrize(
    ("limits", "parts", "status"),
    [
        ({"max_fields": 2}, [("a", "1", None, None)] * 2, 200),
        ({"max_fields": 2}, [("a", "1", None, None)] * 3, 400),
        ({"max_files": 1}, [("f", "1", "x", None), ("a", "1", None, None)], 200),
        ({"max_files": 1}, [("f", "1", "x", None)] * 2, 400),
        ({"max_field_size": 5}, [("a", "12345", None, None)], 200),
        ({"max_field_size": 5}, [("a", "123456", None, None)], 413),
        ({"max_file_size": 5}, [("f", "12345", "x", None)], 200),
        ({"max_file_size": 5}, [("f", "123456", "x", None)], 413),
        ({}, [("n" * 20_000, "1", None, None)], 413),
    ],
)
async def test_multipart_limits(
    limits: dict[str, int],
    parts: list[tuple[str, str, str | None, str | None]],
    status: int,
) -> None:
    assert (await post(form_handler(**limits), MULTIPART, multipart(*parts))).status == status


GOOD_PART = multipart(("a", "1", None, None))


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", GOOD_PART),  # no boundary
        ("multipart/form-data; boundary=", GOOD_PART),
        ("multipart/form-data; boundary=" + "b" * 71, GOOD_PART),  # RFC 2046: 1-70
        ('multipart/form-data; boundary="a\x01b"', GOOD_PART),
        ("multipart/form-data; boundary=other", GOOD_PART),  # not the body's boundary
        (MULTIPART, GOOD_PART[: len(GOOD_PART) // 2]),  # cut before the end
        (MULTIPART, GOOD_PART.replace(b'form-data; name="a"', b"attachment")),
        (MULTIPART, GOOD_PART.replace(b"Content-Disposition", b"Content-Type")),
        (MULTIPART, GOOD_PART.replace(b"1\r\n--", b"\xff\r\n--")),  # not UTF-8
        (MULTIPART, GOOD_PART.replace(b'name="a"', b'name="\xff"')),
        (MULTIPART, GOOD_PART.replace(b"\r\n\r\n", b"\r\n" + b"X-A: 1\r\n" * 9 + b"\r\n")),
    ],
)
async def test_malformed_multipart_is_400(content_type: str, body: bytes) -> None:
    assert (await post(form_handler(), content_type, body)).status == 400


async def test_multipart_body_over_max_body_size_is_413() -> None:
    config = trioserve.Config(max_body_size=1000)
    body = multipart(("f", b"x" * 2000, "x", None))
    assert (await post(form_handler(), MULTIPART, body, config)).status == 413


async def test_a_stalled_upload_hits_body_timeout(autojump_clock: trio.testing.MockClock) -> None:
    body = multipart(("f", b"x" * 1000, "x", None))
    head = (
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    config = trioserve.Config(body_timeout=7.0)
    async with open_connection(form_handler(), config) as stream:
        await stream.send_all(head + body[:500])
        start = trio.current_time()
        answer = await receive_all(stream)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert 7.0 <= trio.current_time() - start < 8.0


async def test_files_are_closed_when_reading_fails() -> None:
    closed: list[str] = []

    class Tracked(_forms.UploadFile):
        def close(self) -> None:
            closed.append(self.filename)
            super().close()

    async def chunks() -> AsyncIterator[bytes]:
        yield multipart(("f", b"data", "one", None)).rpartition(b"--" + BOUNDARY.encode())[0]
        raise trioserve.ClientDisconnected

    original = _forms.UploadFile
    _forms.UploadFile = Tracked  # type: ignore[misc]  # the reader builds this class
    try:
        with pytest.raises(trioserve.ClientDisconnected):
            await _forms.read_form(
                MULTIPART,
                chunks,
                max_fields=10,
                max_files=10,
                max_field_size=100,
                max_file_size=100,
                spool_size=100,
            )
    finally:
        _forms.UploadFile = original  # type: ignore[misc]
    assert closed == ["one"]


async def test_multipart_without_python_multipart_is_a_500(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_module(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(_forms, "_loaded", [])
    # _forms' importlib alone: the server goes on importing what it needs (its HTTP engine).
    monkeypatch.setattr(_forms, "importlib", types.SimpleNamespace(import_module=no_module))
    assert (await post(form_handler(), MULTIPART, GOOD_PART)).status == 500
    assert "pip install 'trioserve[multipart]'" in caplog.text


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (multipart(("n" * 20_000, "1", None, None)), 413),  # part headers too large
        (GOOD_PART.replace(b"\r\n\r\n", b"\r\n" + b"X-A: 1\r\n" * 9 + b"\r\n"), 400),
        (multipart(("a", "x" * 2000, None, None)), 413),  # over max_field_size
        (GOOD_PART.replace(b"1\r\n--", b"\xff\r\n--"), 400),
    ],
)
async def test_multipart_refusals_whatever_the_feed(feed: str, body: bytes, status: int) -> None:
    head = (
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {MULTIPART}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    async with open_feed(form_handler(max_field_size=1000), feed) as client:
        await client.send(head + body)
        response = await client.read("POST")
    assert response.status == status
