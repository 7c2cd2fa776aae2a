"""The response helpers: ``Response.json``, ``.text``, ``.redirect``, ``set_cookie`` and
``delete_cookie``, checked as values and on the wire."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

import trioserve
from trioserve import Response
from trioserve.testing import open_client


def header(response: Response, name: bytes) -> list[bytes]:
    return [value for key, value in response.headers if key == name]


def test_json_is_compact_utf8_application_json() -> None:
    response = Response.json({"a": [1, None, "é"]}, status=201, headers=[("x-a", "1")])
    assert response.status == 201
    assert response.body == '{"a":[1,null,"é"]}'.encode()
    assert response.headers == ((b"content-type", b"application/json"), (b"x-a", b"1"))


def test_a_content_type_given_replaces_the_default() -> None:
    problem = Response.json({}, 400, headers=[("Content-Type", "application/problem+json")])
    assert problem.headers == ((b"Content-Type", b"application/problem+json"),)
    html = Response.text("<p>", headers=[(b"content-type", b"text/html; charset=utf-8")])
    assert header(html, b"content-type") == [b"text/html; charset=utf-8"]


@pytest.mark.parametrize("obj", [math.nan, [math.inf], {"a": object()}])
def test_json_refuses_what_is_not_json(obj: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Response.json(obj)


def test_text_is_utf8_text_plain() -> None:
    response = Response.text("héllo", 404)
    assert (response.status, response.body) == (404, "héllo".encode())
    assert header(response, b"content-type") == [b"text/plain; charset=utf-8"]
    with pytest.raises(TypeError):
        Response.text(b"bytes")  # type: ignore[arg-type]  # the point


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("/next?a=1&b=%20#frag", b"/next?a=1&b=%20#frag"),
        ("https://example.com/caf\u00e9 x", b"https://example.com/caf%C3%A9%20x"),
    ],
)
def test_redirect(url: str, location: bytes) -> None:
    response = Response.redirect(url)
    assert response.status == 307
    assert header(response, b"location") == [location]
    assert Response.redirect("/", 303).status == 303


@pytest.mark.parametrize("status", [200, 299, 400, 304.0])
def test_redirect_refuses_a_status_that_is_not_3xx(status: int) -> None:
    with pytest.raises(ValueError, match="3xx"):
        Response.redirect("/", status)


@pytest.mark.parametrize("url", ["/a\r\nSet-Cookie: x=1", "/a\nb", "/a\rb", "/\x00", ""])
def test_redirect_refuses_control_characters(url: str) -> None:
    with pytest.raises(ValueError, match="redirect URL"):
        Response.redirect(url)


def test_set_cookie_returns_a_new_response_with_the_header() -> None:
    original = Response.text("hi")
    response = original.set_cookie("session", "abc123")
    assert header(original, b"set-cookie") == []
    assert header(response, b"set-cookie") == [b"session=abc123; Path=/; SameSite=Lax"]
    assert (response.status, response.body) == (200, b"hi")


def test_set_cookie_with_every_attribute() -> None:
    expires = datetime(2030, 1, 2, 4, 5, 6, tzinfo=timezone(timedelta(hours=1)))
    response = Response().set_cookie(
        "id",
        "a.b-c",
        max_age=3600,
        expires=expires,
        path="/app",
        domain="example.com",
        secure=True,
        httponly=True,
        samesite="none",
    )
    assert header(response, b"set-cookie") == [
        b"id=a.b-c; Expires=Wed, 02 Jan 2030 03:05:06 GMT; Max-Age=3600; "
        b"Domain=example.com; Path=/app; Secure; HttpOnly; SameSite=None"
    ]
    bare = Response().set_cookie("a", "", path=None, samesite=None)
    assert header(bare, b"set-cookie") == [b"a="]


def test_cookies_accumulate() -> None:
    response = Response().set_cookie("a", "1").set_cookie("b", "2", samesite="strict")
    assert header(response, b"set-cookie") == [
        b"a=1; Path=/; SameSite=Lax",
        b"b=2; Path=/; SameSite=Strict",
    ]


def test_delete_cookie() -> None:
    response = Response().delete_cookie("session", path="/app")
    assert header(response, b"set-cookie") == [
        b"session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/app; SameSite=Lax"
    ]


@pytest.mark.parametrize(
    ("name", "value", "options"),
    [
        ("a b", "1", {}),
        ("a;b", "1", {}),
        ("", "1", {}),
        ("a\r\n", "1", {}),
        ("a", "1; Domain=evil.com", {}),
        ("a", "1\r\nX-Injected: yes", {}),
        ("a", "two words", {}),
        ("a", 'q"uote', {}),
        ("a", "caf\u00e9", {}),
        ("a", "1", {"path": "/; Secure"}),
        ("a", "1", {"path": "/\r\nX: y"}),
        ("a", "1", {"domain": "x.com;"}),
        ("a", "1", {"samesite": "none"}),  # without secure
        ("a", "1", {"samesite": "sometimes"}),
        ("a", "1", {"expires": datetime(2030, 1, 1)}),  # naive
    ],
)
def test_set_cookie_refuses_what_rfc_6265_does_not_allow(
    name: str, value: str, options: dict[str, object]
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  # the message varies with the case
        Response().set_cookie(name, value, **options)  # type: ignore[arg-type]


def test_set_cookie_refuses_a_max_age_that_is_not_an_int() -> None:
    with pytest.raises(TypeError):
        Response().set_cookie("a", "1", max_age=1.5)  # type: ignore[arg-type]


async def test_helpers_on_the_wire() -> None:
    async def handler(request: trioserve.Request) -> Response:
        if request.path == "/login":
            return Response.redirect("/home", 303).set_cookie("s", "t0k", httponly=True)
        return Response.json({"cookie": request.cookies.get("s")})

    async with open_client(handler) as client:
        login = await client.post("/login")
        home = await client.get("/home", headers=[("cookie", "s=t0k")])
    assert login.status == 303
    assert login.headers.get("location") == "/home"
    assert login.headers.getall("set-cookie") == ["s=t0k; Path=/; HttpOnly; SameSite=Lax"]
    assert home.headers.get("content-type") == "application/json"
    assert json.loads(home.body) == {"cookie": "t0k"}
