"""The value objects handlers see: Request, Response, Headers, Config."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator

import pytest

import trioserve
from trioserve import Config, Headers, Request, Response

# --- Headers -----------------------------------------------------------------------------


def test_headers_are_case_insensitive_and_multi_valued() -> None:
    headers = Headers([("Accept", "text/html"), ("X-One", " padded "), (b"ACCEPT", b"*/*")])
    assert headers.get("accept") == headers.get("ACCEPT") == "text/html"
    assert headers["X-ONE"] == "padded"
    assert headers.getall("Accept") == ["text/html", "*/*"]
    assert headers.getall("missing") == []
    assert headers.get("missing") is None
    assert headers.get("missing", "fallback") == "fallback"
    assert headers.items() == [("accept", "text/html"), ("x-one", "padded"), ("accept", "*/*")]
    assert headers.raw == [(b"accept", b"text/html"), (b"x-one", b"padded"), (b"accept", b"*/*")]
    assert list(headers) == headers.keys() == ["accept", "x-one", "accept"]
    assert headers.values() == ["text/html", "padded", "*/*"]
    assert len(headers) == 3
    assert "x-ONE" in headers
    assert "nope" not in headers
    assert 1 not in headers
    with pytest.raises(KeyError):
        headers["nope"]


def test_headers_decode_values_as_latin1() -> None:
    headers = Headers([(b"x-name", "café".encode("latin-1"))])
    assert headers.get("x-name") == "café"


def test_headers_equality_and_hashing() -> None:
    assert Headers([("A", "1")]) == Headers([("a", "1 ")])
    assert Headers([("a", "1")]) != Headers([("a", "2")])
    assert Headers() != [("a", "1")]
    with pytest.raises(TypeError):
        hash(Headers())


def test_headers_returned_lists_are_copies() -> None:
    headers = Headers([("a", "1")])
    headers.items().append(("b", "2"))
    headers.raw.append((b"b", b"2"))
    assert len(headers) == 1
    assert repr(headers) == "Headers([('a', '1')])"


# --- Request -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "raw_path", "query_string", "query"),
    [
        ("/", "/", b"/", b"", {}),
        ("/a%20b/%C3%A9?x=1&x=2&y=", "/a b/é", b"/a%20b/%C3%A9", b"x=1&x=2&y=", None),
        ("/p?q=a%26b", "/p", b"/p", b"q=a%26b", {"q": ["a&b"]}),
        ("http://host:81/abs/path?k=v", "/abs/path", b"/abs/path", b"k=v", {"k": ["v"]}),
        ("http://host", "/", b"/", b"", {}),
        ("*", "*", b"*", b"", {}),
        ("example.com:443", "example.com:443", b"example.com:443", b"", {}),
    ],
    ids=["root", "encoded", "amp", "absolute", "absolute-bare", "asterisk", "authority"],
)
def test_request_target_parts(
    target: str,
    path: str,
    raw_path: bytes,
    query_string: bytes,
    query: dict[str, list[str]] | None,
) -> None:
    request = Request(method="GET", target=target)
    assert request.target == target
    assert request.path == path
    assert request.raw_path == raw_path
    assert request.query_string == query_string
    if query is not None:
        assert request.query == query
    else:
        assert request.query == {"x": ["1", "2"], "y": [""]}


def test_request_defaults_and_repr() -> None:
    request = Request(method="POST", target="/x", http_version="1.0")
    assert request.headers == Headers()
    assert (request.client, request.server, request.scheme) == (None, None, "http")
    assert request.http_version == "1.0"
    assert not request.server_shutting_down
    assert repr(request) == "<Request POST /x HTTP/1.0>"


async def test_request_body_reads_once() -> None:
    request = Request(method="POST", target="/", body=b"payload")
    assert await request.body() == b"payload"
    with pytest.raises(RuntimeError, match="only once"):
        await request.body()
    with pytest.raises(RuntimeError, match="only once"):
        async for _ in request.stream():
            pass


async def test_request_stream_yields_non_empty_pieces() -> None:
    request = Request(method="POST", target="/", body=b"abc")
    assert [piece async for piece in request.stream()] == [b"abc"]
    empty = Request(method="POST", target="/")
    assert [piece async for piece in empty.stream()] == []
    assert await Request(method="GET", target="/").body() == b""


# --- Response ------------------------------------------------------------------------------


def test_response_body_types() -> None:
    assert Response().status == 200
    assert Response(body="héllo").body == "héllo".encode()
    assert Response(body=bytearray(b"ab")).body == b"ab"
    assert Response(body=memoryview(b"cd")).body == b"cd"

    async def gen() -> AsyncIterator[bytes]:
        yield b"x"

    streamed = gen()
    assert Response(body=streamed).body is streamed
    assert repr(Response(404, body=b"abc")) == "<Response 404 (3 bytes)>"
    assert repr(Response(body=streamed)) == "<Response 200 (streamed)>"


def test_response_headers_accept_str_and_bytes() -> None:
    response = Response(headers=[("X-A", "1"), (b"x-b", b"2"), ("x-c", b"3")])
    assert response.headers == ((b"X-A", b"1"), (b"x-b", b"2"), (b"x-c", b"3"))


@pytest.mark.parametrize("status", [100, 101, 199, 1000, -1, 0])
def test_response_status_out_of_range(status: int) -> None:
    # 1xx interim responses are the server's business (100 Continue), never a handler's.
    with pytest.raises(ValueError, match="status"):
        Response(status)


@pytest.mark.parametrize("status", ["200", 200.0, True, None])
def test_response_status_must_be_an_int(status: object) -> None:
    with pytest.raises(TypeError, match="status"):
        Response(status)  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [123, ["a"], None, object()])
def test_response_body_type_is_checked(body: object) -> None:
    with pytest.raises(TypeError, match="body"):
        Response(body=body)  # type: ignore[arg-type]


def test_response_header_type_is_checked() -> None:
    with pytest.raises(TypeError, match="header"):
        Response(headers=[("x", 1)])  # type: ignore[list-item]


# --- Config --------------------------------------------------------------------------------


def test_config_defaults_are_finite_where_they_defend() -> None:
    config = Config()
    assert dataclasses.asdict(config) == {
        "keep_alive_timeout": 5.0,
        "header_timeout": 10.0,
        "body_timeout": 30.0,
        "body_min_rate": 1024.0,
        "body_rate_grace": 10.0,
        "write_timeout": 30.0,
        "handshake_timeout": 10.0,
        "shutdown_timeout": 30.0,
        "max_header_size": 16 * 1024,
        "max_target_length": 8 * 1024,
        "max_header_count": 100,
        "max_body_size": 100 * 1024 * 1024,
        "max_drain_size": 64 * 1024,
        "max_connections": 10_000,
        "max_requests_per_connection": math.inf,
        "backlog": 2048,
        "http": "auto",
        "server_header": "trioserve",
        "proxy_headers": True,
        "forwarded_allow_ips": ("127.0.0.1",),
        "proxy_protocol": False,
        "ws_max_size": 16 * 1024 * 1024,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "ws_close_timeout": 10.0,
        "ws_per_message_deflate": True,
    }
    # Every limit but the requests per connection defends by default: none is inf.
    for field in dataclasses.fields(Config):
        value = getattr(config, field.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if field.name != "max_requests_per_connection":
                assert math.isfinite(value), field.name
    assert isinstance(config.backlog, int)


def test_config_is_frozen_and_replace_validates() -> None:
    config = Config(keep_alive_timeout=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.keep_alive_timeout = 3.0  # type: ignore[misc]
    changed = config.replace(max_body_size=1024)
    assert (changed.keep_alive_timeout, changed.max_body_size) == (2.0, 1024)
    assert changed == Config(keep_alive_timeout=2.0, max_body_size=1024)
    assert changed != config
    assert "max_body_size=1024" in repr(changed)
    with pytest.raises(ValueError, match="max_body_size"):
        config.replace(max_body_size=-1)
    with pytest.raises(TypeError):
        Config(5.0)  # type: ignore[misc]  # keyword-only


def test_config_inf_means_no_limit() -> None:
    config = Config(max_body_size=math.inf, header_timeout=math.inf)
    assert config.max_body_size == math.inf


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"header_timeout": 0}, ValueError),
        ({"header_timeout": -1.0}, ValueError),
        ({"body_timeout": math.nan}, ValueError),
        ({"write_timeout": "30"}, TypeError),
        ({"keep_alive_timeout": True}, TypeError),
        ({"keep_alive_timeout": None}, TypeError),
        ({"max_header_size": 10.5}, ValueError),
        ({"max_header_size": 0}, ValueError),
        ({"body_min_rate": math.inf}, ValueError),
        ({"backlog": 0}, ValueError),
        ({"backlog": 10.0}, TypeError),
        ({"server_header": "bad\nvalue"}, ValueError),
        ({"server_header": "café"}, ValueError),
        ({"server_header": 5}, TypeError),
        ({"ws_max_size": 0}, ValueError),
        ({"ws_max_size": 1.5}, ValueError),
        ({"ws_ping_interval": 0}, ValueError),
        ({"ws_ping_timeout": -1}, ValueError),
        ({"ws_close_timeout": math.nan}, ValueError),
        ({"ws_per_message_deflate": 1}, TypeError),
    ],
)
def test_config_rejects_bad_values_naming_the_field(
    changes: dict[str, object], error: type[Exception]
) -> None:
    [name] = changes
    with pytest.raises(error, match=name):
        Config(**changes)  # type: ignore[arg-type]


def test_config_allows_zero_where_it_means_none() -> None:
    assert Config(max_drain_size=0).max_drain_size == 0
    assert Config(body_min_rate=0).body_min_rate == 0


def test_errors_know_their_status() -> None:
    statuses = {
        trioserve.BadRequest: 400,
        trioserve.RequestTimeout: 408,
        trioserve.ContentTooLarge: 413,
        trioserve.URITooLong: 414,
        trioserve.HeaderFieldsTooLarge: 431,
        trioserve.HTTPVersionNotSupported: 505,
    }
    for cls, status in statuses.items():
        assert issubclass(cls, trioserve.HTTPError)
        assert cls().status_code == status
        assert str(cls()) == cls.__name__
    assert trioserve.HTTPError("x", status_code=418).status_code == 418
    with pytest.raises(ValueError, match="4xx or 5xx"):
        trioserve.HTTPError(status_code=302)
    assert not issubclass(trioserve.ClientDisconnected, trioserve.HTTPError)


def test_response_is_frozen_and_with_body_keeps_the_head() -> None:
    response = Response(201, headers=[("x-a", "1")], body="first")
    with pytest.raises(AttributeError, match="frozen"):
        response.body = b"second"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="frozen"):
        del response.status  # type: ignore[misc]
    other = response.with_body("second")
    assert (other.status, other.headers, other.body) == (201, ((b"x-a", b"1"),), b"second")
    assert response.body == b"first"
    with pytest.raises(TypeError, match="body must be"):
        response.with_body(42)  # type: ignore[arg-type]
