"""StaticFiles never serves a file outside its directory, hides dotfiles, and never
redirects off the site: the traversal table, sent as raw bytes over a real socket
(a client would normalise the paths before they left it)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import trio

import trioserve
from trioserve.static import StaticFiles
from trioserve.static._paths import split_path

SECRET = b"the secret outside the root"
PUBLIC = b"public content"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "secret.txt.gz").write_bytes(SECRET)
    public = tmp_path / "public"
    public.mkdir()
    (public / "ok.txt").write_bytes(PUBLIC)
    (public / ".env").write_bytes(SECRET)
    (public / "sub").mkdir()
    (public / "sub" / ".git").mkdir()
    (public / "sub" / ".git" / "config").write_bytes(SECRET)
    (public / "out-link").symlink_to(tmp_path / "secret.txt")
    (public / "out-dir").symlink_to(tmp_path)
    (public / "in-link").symlink_to(public / "ok.txt")
    # A sibling that points outside: never served in the file's place.
    (public / "ok.txt.gz").symlink_to(tmp_path / "secret.txt.gz")
    return public


async def raw_request(port: int, target: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"GET " + target + b" HTTP/1.1\r\nHost: site.example\r\nAccept-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n"
        )
        received = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


@asynccontextmanager
async def serving(handler: trioserve.Handler) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(trioserve.serve, handler, 0, host="127.0.0.1")
        )
        try:
            yield server.ports[0]
        finally:
            nursery.cancel_scope.cancel()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


TRAVERSALS = [
    b"/../secret.txt",
    b"/../../secret.txt",
    b"/%2e%2e/secret.txt",
    b"/%2E%2E/secret.txt",
    b"/.%2e/secret.txt",
    b"/..%2fsecret.txt",
    b"/..%2Fsecret.txt",
    b"/sub/..%2f..%2fsecret.txt",
    b"/..%5csecret.txt",
    b"/..%5Csecret.txt",
    b"/..\\secret.txt",
    b"/sub\\..\\..\\secret.txt",
    b"/%252e%252e/secret.txt",  # decoded once: a segment named "%2e%2e"
    b"/%c0%ae%c0%ae/secret.txt",  # overlong UTF-8 dots: not UTF-8, refused
    b"//host/..%2f..%2fsecret.txt",
    b"//site.example/..%2f",
    b"//secret.txt",
    b"/./../secret.txt",
    b"/ok.txt/../../secret.txt",
    b"/ok.txt%00",
    b"/ok.txt%00.html",
    b"/C:/secret.txt",
    b"/c:%5csecret.txt",
    b"/C%3A%5Csecret.txt",
    b"/out-link",
    b"/out-dir/secret.txt",
    b"/out-dir/secret.txt.gz",
    b"/.env",
    b"/%2eenv",
    b"/sub/.git/config",
    b"/sub/%2egit/config",
    b"http://site.example/../secret.txt",  # absolute-form
]


@pytest.mark.parametrize("target", TRAVERSALS, ids=lambda t: t.decode("latin-1"))
async def test_traversal_is_refused(root: Path, target: bytes) -> None:
    async with serving(StaticFiles(root, listing=True, html=True)) as port:
        response = await raw_request(port, target)
    assert SECRET not in response
    assert _status(response) in (400, 404)


async def test_absolute_path_in_the_url(root: Path, tmp_path: Path) -> None:
    absolute = quote(str(tmp_path / "secret.txt"), safe="").encode()
    async with serving(StaticFiles(root)) as port:
        for target in (b"/" + absolute, b"/" + absolute.replace(b"%2F", b"/")[1:]):
            response = await raw_request(port, target)
            assert SECRET not in response
            assert _status(response) == 404


async def test_the_table_is_not_vacuous(root: Path) -> None:
    async with serving(StaticFiles(root)) as port:
        plain = await raw_request(port, b"/ok.txt")
        inside_link = await raw_request(port, b"/in-link")
        encoded = await raw_request(port, b"/%6fk.txt")
    for response in (plain, inside_link, encoded):
        assert _status(response) == 200
        assert response.endswith(PUBLIC)
    # The .gz sibling is a symlink out of the root: not served for ok.txt.
    assert b"content-encoding" not in plain.lower()


async def test_follow_symlinks(root: Path) -> None:
    async with serving(StaticFiles(root, follow_symlinks=True)) as port:
        link = await raw_request(port, b"/out-link")
        still_refused = await raw_request(port, b"/%2e%2e/secret.txt")
    assert _status(link) == 200
    assert link.endswith(SECRET)
    assert _status(still_refused) == 404


@pytest.mark.parametrize(
    "target",
    [b"/sub", b"//site.example/sub", b"//evil.example/%2e%2e%2fsub", b"/sub?x=//evil"],
)
async def test_no_redirect_leaves_the_site(root: Path, target: bytes) -> None:
    async with serving(StaticFiles(root, listing=True)) as port:
        response = await raw_request(port, target)
    head = response.partition(b"\r\n\r\n")[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"location:"):
            location = line.split(b":", 1)[1].strip()
            assert location.startswith(b"./")
            assert not location.startswith(b"//")
    if target == b"/sub":
        assert _status(response) == 301


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ([], True)),
        ("/a/b", (["a", "b"], False)),
        ("/a%20b/", (["a b"], True)),
        ("/a%3Fb", (["a?b"], False)),
        ("a", None),
        ("/a//b", None),
        ("/.well-known/x", None),
        ("/%FF", None),
    ],
)
def test_split_path(path: str, expected: object) -> None:
    assert split_path(path) == expected
