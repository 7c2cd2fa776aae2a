"""Behind a proxy, end to end: X-Forwarded-*, Forwarded and the PROXY protocol.

The parser's spoofing table is ``tests/test_forwarded.py`` and the PROXY header
reader's is ``tests/test_proxy_protocol.py``; here the same rules are checked
through the server, over real loopback sockets (the test client is 127.0.0.1, which
``Config.forwarded_allow_ips`` trusts by default) and memory streams (a peer with no
address, trusted only by ``"*"``). Each interface reports what it saw as JSON: a
native handler its ``request``, an ASGI application its scope, a WSGI application
its environ, so one table checks all three.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import fastapi
import pytest
import trio
from fastapi.responses import RedirectResponse

import trioserve
from trioserve import Config, Request, Response
from trioserve._cli import parse_args
from trioserve.asgi import ASGIHandler
from trioserve.testing import ResponseReader, TestResponse, open_client
from trioserve.wsgi import WSGIHandler

from .asgi_apps.serving import serve_asgi
from .processes import BOUND

if TYPE_CHECKING:
    from trioserve._server import Lifespan
    from trioserve.asgi import Receive, Scope, Send

#: What an application saw: client, server, scheme and Host, as plain values.
Seen = dict[str, object]
#: Host header the tests send (the forwarded one replaces it).
HOST = "test.local"


def seen(client: object, server: object, scheme: object, host: object) -> Seen:
    """Lists (JSON's tuples) back to tuples, so expectations are written as tuples."""
    return {
        "client": tuple(client) if isinstance(client, list) else client,
        "server": tuple(server) if isinstance(server, list) else server,
        "scheme": scheme,
        "host": host,
    }


# --- Three applications that say what they saw ----------------------------------------


async def native_where(request: Request) -> Response:
    report = {
        "client": request.client,
        "server": request.server,
        "scheme": request.scheme,
        "host": request.headers.get("host"),
    }
    return Response(200, headers=[("content-type", "application/json")], body=json.dumps(report))


async def asgi_where(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    headers = scope["headers"]
    assert isinstance(headers, list)
    hosts = [value for name, value in headers if name == b"host"]
    host = hosts[0] if hosts else None
    report = {
        "client": scope["client"],
        "server": scope["server"],
        "scheme": scope["scheme"],
        "host": host.decode("latin-1") if host is not None else None,
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(report).encode()})


def wsgi_where(
    environ: dict[str, object], start_response: Callable[[str, list[tuple[str, str]]], object]
) -> Iterable[bytes]:
    client = None
    if "REMOTE_ADDR" in environ:
        client = [environ["REMOTE_ADDR"], int(str(environ["REMOTE_PORT"]))]
    report = {
        "client": client,
        "server": [environ["SERVER_NAME"], int(str(environ["SERVER_PORT"]))],
        "scheme": environ["wsgi.url_scheme"],
        "host": environ.get("HTTP_HOST"),
    }
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(report).encode()]


INTERFACES = ("native", "asgi", "wsgi")


def handler_for(interface: str) -> tuple[trioserve.Handler, Lifespan | None]:
    """The interface's reporting application as a handler, and its lifespan."""
    if interface == "native":
        return native_where, None
    if interface == "asgi":
        asgi = ASGIHandler(asgi_where, lifespan="off")
        return asgi, asgi.lifespan
    return WSGIHandler(wsgi_where), None


# --- Serving and asking -----------------------------------------------------------------


@asynccontextmanager
async def serving(
    handler: trioserve.Handler = native_where,
    config: Config | None = None,
    *,
    lifespan: Lifespan | None = None,
    uds: str | os.PathLike[str] | None = None,
    uds_permissions: int | None = None,
) -> AsyncIterator[trioserve.Server]:
    """Serve ``handler`` (on 127.0.0.1, a free port; on ``uds`` instead when given)
    for the block, then shut down gracefully; bounded by ``BOUND``."""
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            server: trioserve.Server = await nursery.start(
                functools.partial(
                    trioserve.serve,
                    handler,
                    0 if uds is None else None,  # a port with uds would serve both
                    host="127.0.0.1",
                    config=config,
                    lifespan=lifespan,
                    uds=uds,
                    uds_permissions=uds_permissions,
                )
            )
            yield server
            await server.shutdown()


def request_bytes(*headers: bytes, host: bytes = HOST.encode()) -> bytes:
    lines = [b"GET /where HTTP/1.1", b"Host: " + host, b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def ask(
    stream: trio.SocketStream, *headers: bytes, before: bytes = b""
) -> tuple[TestResponse, Seen]:
    """Send ``before`` (a PROXY header), then a request with ``headers``; the reply
    and what the application reported."""
    with trio.fail_after(BOUND):
        async with stream:
            await stream.send_all(before + request_bytes(*headers))
            reply = await ResponseReader(stream).receive_response()
    assert reply.status == 200, reply.body
    report = json.loads(reply.body)
    return reply, seen(report["client"], report["server"], report["scheme"], report["host"])


async def ask_over_tcp(
    server: trioserve.Server, *headers: bytes, before: bytes = b""
) -> tuple[Seen, Seen]:
    """What the application saw, and what it would have seen of the socket alone."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
    local = stream.socket.getsockname()
    plain = seen(["127.0.0.1", local[1]], ["127.0.0.1", server.ports[0]], "http", HOST)
    _, report = await ask(stream, *headers, before=before)
    return report, plain


async def read_to_the_end(stream: trio.SocketStream) -> tuple[bytes, str]:
    """Everything the server sends until it closes, and how: "EOF" or "reset" (a close
    with our request still unread in its socket is a reset)."""
    data = b""
    with trio.fail_after(BOUND):
        try:
            while chunk := await stream.receive_some():
                data += chunk
        except trio.BrokenResourceError:
            return data, "reset"
    return data, "EOF"


def first_fields(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The first field (the client) of each access log line."""
    return [r.getMessage().split()[0] for r in caplog.records if r.name == "trioserve.access"]


# --- X-Forwarded-* and Forwarded from a trusted peer, three interfaces -------------------

XFF = b"X-Forwarded-For: 203.0.113.9, 127.0.0.1"
FORWARDED_ALL = (
    b"X-Forwarded-For: 203.0.113.9",
    b"X-Forwarded-Proto: https",
    b"X-Forwarded-Host: example.com",
    b"X-Forwarded-Port: 8443",
)

# (id, header lines, what changes from the socket's own values)
BELIEVED: list[tuple[str, tuple[bytes, ...], Seen]] = [
    ("nothing-forwarded", (), {}),
    ("x-forwarded-for", (XFF,), {"client": ("203.0.113.9", 0)}),
    ("x-forwarded-proto", (b"X-Forwarded-Proto: https",), {"scheme": "https"}),
    (
        "x-forwarded-host",
        (b"X-Forwarded-Host: example.com",),
        {"host": "example.com", "server": ("example.com", 80)},
    ),
    (
        "all-four",
        FORWARDED_ALL,
        {
            "client": ("203.0.113.9", 0),
            "scheme": "https",
            "host": "example.com:8443",
            "server": ("example.com", 8443),
        },
    ),
    (
        "rfc7239",
        (b'Forwarded: for="[2001:db8::7]:4711";proto=https;host=example.com',),
        {
            "client": ("2001:db8::7", 4711),
            "scheme": "https",
            "host": "example.com",
            "server": ("example.com", 443),
        },
    ),
]


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize(
    ("headers", "changes"), [pytest.param(h, c, id=i) for i, h, c in BELIEVED]
)
async def test_every_interface_sees_what_a_trusted_proxy_forwarded(
    interface: str, headers: tuple[bytes, ...], changes: Seen
) -> None:
    handler, lifespan = handler_for(interface)
    async with serving(handler, lifespan=lifespan) as server:
        report, plain = await ask_over_tcp(server, *headers)
    assert report == plain | changes


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize(
    "config",
    [Config(forwarded_allow_ips=("10.0.0.1",)), Config(proxy_headers=False)],
    ids=["peer-not-trusted", "proxy-headers-off"],
)
async def test_untrusted_or_switched_off_changes_nothing(interface: str, config: Config) -> None:
    handler, lifespan = handler_for(interface)
    rfc = b'Forwarded: for="[2001:db8::7]:4711";proto=https;host=example.com'
    async with serving(handler, config, lifespan=lifespan) as server:
        report, plain = await ask_over_tcp(server, *FORWARDED_ALL)
        rfc_report, rfc_plain = await ask_over_tcp(server, rfc)
    assert report == plain
    assert rfc_report == rfc_plain


async def test_a_memory_stream_peer_is_trusted_only_by_star() -> None:
    # A memory stream has no peer address: nobody vouches for it, unless "*".
    headers = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    async with open_client(native_where) as client:
        default = json.loads((await client.get("/", headers=headers)).body)
    async with open_client(native_where, Config(forwarded_allow_ips=("*",))) as client:
        star = json.loads((await client.get("/", headers=headers)).body)
        proto_only = json.loads((await client.get("/", headers=headers[1:])).body)
    assert (default["client"], default["scheme"]) == (None, "http")
    assert (star["client"], star["scheme"]) == (["203.0.113.9", 0], "https")
    # No X-Forwarded-For: the client stays what the stream says, unknown.
    assert (proto_only["client"], proto_only["scheme"]) == (None, "https")


# --- Spoofing, end to end -----------------------------------------------------------------

# (id, header lines, what changes from the socket's own values); the peer, 127.0.0.1,
# is the only trusted proxy.
SPOOFING: list[tuple[str, tuple[bytes, ...], Seen]] = [
    (
        "forged-leftmost",
        (b"X-Forwarded-For: 6.6.6.6, 203.0.113.9",),
        {"client": ("203.0.113.9", 0)},
    ),
    (
        "forged-trusted-looking-leftmost",
        (b"X-Forwarded-For: 127.0.0.1, 203.0.113.9",),
        {"client": ("203.0.113.9", 0)},
    ),
    (
        "trusted-entries-skipped-from-the-right",
        (b"X-Forwarded-For: 6.6.6.6, 203.0.113.9, 127.0.0.1, 127.0.0.1",),
        {"client": ("203.0.113.9", 0)},
    ),
    (
        "two-lines-combined",
        (b"X-Forwarded-For: 6.6.6.6", b"X-Forwarded-For: 203.0.113.9"),
        {"client": ("203.0.113.9", 0)},
    ),
    (
        "forwarded-and-xff-disagree",
        (
            b"Forwarded: for=198.51.100.1;proto=https;host=evil.example",
            b"X-Forwarded-For: 203.0.113.9",
            b"X-Forwarded-Proto: https",
        ),
        {"client": None},
    ),
    (
        "forwarded-and-xff-agree",
        (
            b"Forwarded: for=203.0.113.9;proto=https",
            b"X-Forwarded-For: 203.0.113.9",
            b"X-Forwarded-Proto: https",
        ),
        {"client": ("203.0.113.9", 0), "scheme": "https"},
    ),
    ("forwarded-unknown", (b"Forwarded: for=unknown",), {"client": None}),
    (
        "ipv6-brackets-and-port",
        (b"X-Forwarded-For: [2001:db8::1]:443",),
        {"client": ("2001:db8::1", 443)},
    ),
    ("ipv6-bare", (b"X-Forwarded-For: 2001:DB8:0::1",), {"client": ("2001:db8::1", 0)}),
    ("ipv6-rfc7239", (b'Forwarded: for="[2001:db8::1]"',), {"client": ("2001:db8::1", 0)}),
    (
        "ipv6-host",
        (b"X-Forwarded-Host: [2001:DB8::1]:8080",),
        {"host": "[2001:db8::1]:8080", "server": ("2001:db8::1", 8080)},
    ),
    ("garbage-xff", (b"X-Forwarded-For: not-an-address",), {}),
    ("garbage-right-of-the-client", (b"X-Forwarded-For: 203.0.113.9, nonsense",), {}),
    ("empty-xff", (b"X-Forwarded-For: ",), {}),
    ("scope-id", (b"X-Forwarded-For: fe80::1%eth0",), {}),
    ("obs-text", (b"X-Forwarded-For: \xff\xfe1.2.3.4",), {}),
    (
        "too-many-entries",
        (b"X-Forwarded-For: " + b", ".join([b"6.6.6.6"] * 150 + [b"203.0.113.9"]),),
        {"client": ("203.0.113.9", 0)},
    ),
    ("unclosed-quote", (b'Forwarded: for="203.0.113.9',), {}),
    ("parameter-twice", (b"Forwarded: for=203.0.113.9;for=6.6.6.6",), {}),
    ("unknown-scheme", (b"X-Forwarded-Proto: gopher",), {}),
    ("bad-host", (b"X-Forwarded-Host: exa mple.com",), {}),
    ("bad-port", (b"X-Forwarded-Port: 99999",), {}),
]


@pytest.mark.parametrize(
    ("headers", "changes"), [pytest.param(h, c, id=i) for i, h, c in SPOOFING]
)
async def test_spoofing_through_the_server(headers: tuple[bytes, ...], changes: Seen) -> None:
    async with serving() as server:
        report, plain = await ask_over_tcp(server, *headers)  # asserts a 200
        stats = server.statistics()
    assert report == plain | changes
    assert (stats.responses_5xx, stats.handler_errors) == (0, 0)


# --- The access log ----------------------------------------------------------------------


async def test_the_access_log_names_the_forwarded_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")
    async with serving() as server:
        await ask_over_tcp(server, XFF)
        await ask_over_tcp(server)
    async with serving(config=Config(forwarded_allow_ips=("10.0.0.1",))) as server:
        await ask_over_tcp(server, XFF)
    assert first_fields(caplog) == ["203.0.113.9", "127.0.0.1", "127.0.0.1"]


@pytest.mark.parametrize(
    "headers",
    [
        (b"Forwarded: for=unknown",),
        (b"Forwarded: for=198.51.100.1", b"X-Forwarded-For: 203.0.113.9"),
    ],
    ids=["said-unknown", "headers-disagree"],
)
async def test_the_access_log_of_an_unknown_forwarded_client_is_a_dash(
    caplog: pytest.LogCaptureFixture, headers: tuple[bytes, ...]
) -> None:
    # The application is told the client is unknown (request.client is None); the
    # log must not name the proxy as the client instead.
    caplog.set_level(logging.INFO, logger="trioserve.access")
    async with serving() as server:
        report, _ = await ask_over_tcp(server, *headers)
    assert report["client"] is None
    assert first_fields(caplog) == ["-"]


# --- A FastAPI application behind an HTTPS proxy (the motivating bug) -------------------


def redirecting_app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.get("/items")
    async def items(request: fastapi.Request) -> dict[str, str]:
        return {"scheme": request.url.scheme, "self": str(request.url_for("items"))}

    @app.get("/login")
    async def login(request: fastapi.Request) -> RedirectResponse:
        return RedirectResponse(request.url_for("items"), status_code=303)

    return app


@pytest.mark.parametrize(
    ("headers", "base"),
    [
        ({"X-Forwarded-Proto": "https"}, "https://127.0.0.1:{port}"),
        ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "example.com"}, "https://example.com"),
        ({}, "http://127.0.0.1:{port}"),
    ],
    ids=["proto", "proto-and-host", "direct"],
)
async def test_fastapi_behind_an_https_proxy_redirects_to_https(
    headers: dict[str, str], base: str
) -> None:
    async with serve_asgi(redirecting_app()) as client:
        base = base.format(port=client.base_url.port)
        items = await client.get("/items", headers=headers)
        login = await client.get("/login", headers=headers)
        slash = await client.get("/items/", headers=headers)  # FastAPI's redirect_slashes
    assert items.json() == {"scheme": base.partition(":")[0], "self": f"{base}/items"}
    assert (login.status_code, login.headers["location"]) == (303, f"{base}/items")
    assert (slash.status_code, slash.headers["location"]) == (307, f"{base}/items")


async def test_fastapi_behind_an_untrusted_proxy_stays_http() -> None:
    config = Config(forwarded_allow_ips=("10.0.0.1",))
    async with serve_asgi(redirecting_app(), config=config) as client:
        login = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert login.headers["location"] == f"http://127.0.0.1:{client.base_url.port}/items"


# --- The PROXY protocol over real sockets ----------------------------------------------

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int, family: int, block: bytes) -> bytes:
    return SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(block)) + block


V1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 56324 8080\r\n"
V1_FROM_10 = b"PROXY TCP4 10.1.2.3 127.0.0.1 56324 8080\r\n"
V2_TCP6 = v2(
    0x1,
    0x21,
    socket.inet_pton(socket.AF_INET6, "2001:db8::7")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + struct.pack("!HH", 4711, 443),
)
V2_TCP4 = v2(0x1, 0x11, bytes([198, 51, 100, 7, 127, 0, 0, 1]) + struct.pack("!HH", 56324, 8080))
V2_LOCAL = v2(0x0, 0x00, b"")
TRUST_10 = ("127.0.0.1", "10.0.0.0/8")
FROM_198: Seen = {"client": ("198.51.100.7", 56324), "server": ("127.0.0.1", 8080)}

#: Config changes of a PROXY case.
Changes = dict[str, bool | tuple[str, ...]]
# (id, PROXY header, forwarded header lines, Config changes, what changes)
PROXIED: list[tuple[str, bytes, tuple[bytes, ...], Changes, Seen]] = [
    ("v1", V1, (), {}, FROM_198),
    ("v2-tcp4", V2_TCP4, (), {}, FROM_198),
    (
        "v2-tcp6",
        V2_TCP6,
        (),
        {},
        {"client": ("2001:db8::7", 4711), "server": ("2001:db8::1", 443)},
    ),
    ("v2-local-keeps-the-socket", V2_LOCAL, (), {}, {}),
    # UNKNOWN: the balancer cannot say who the client is, and nobody else may.
    (
        "v1-unknown-is-an-unknown-client",
        b"PROXY UNKNOWN\r\n",
        (b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-Proto: https"),
        {},
        {"client": None, "server": None},
    ),
    (
        "xff-ignored-from-an-untrusted-source",
        V1,
        (b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-Proto: https"),
        {},
        FROM_198,
    ),
    (
        "xff-believed-from-a-trusted-source",
        V1_FROM_10,
        (b"X-Forwarded-For: 203.0.113.9", b"X-Forwarded-Proto: https"),
        {"forwarded_allow_ips": TRUST_10},
        {"client": ("203.0.113.9", 0), "server": ("127.0.0.1", 8080), "scheme": "https"},
    ),
    (
        "xff-ignored-with-proxy-headers-off",
        V1_FROM_10,
        (b"X-Forwarded-For: 203.0.113.9",),
        {"forwarded_allow_ips": TRUST_10, "proxy_headers": False},
        {"client": ("10.1.2.3", 56324), "server": ("127.0.0.1", 8080)},
    ),
]


@pytest.mark.parametrize(
    ("header", "headers", "changes", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in PROXIED],
)
async def test_proxy_protocol_header_then_request(
    header: bytes,
    headers: tuple[bytes, ...],
    changes: Changes,
    expected: Seen,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioserve.access")
    config = Config(proxy_protocol=True).replace(**changes)
    async with serving(config=config) as server:
        report, plain = await ask_over_tcp(server, *headers, before=header)
        stats = server.statistics()
    assert report == plain | expected
    assert (stats.proxy_header_errors, stats.requests_served) == (0, 1)
    client = report["client"]
    assert first_fields(caplog) == [client[0] if isinstance(client, tuple) else "-"]


@pytest.mark.parametrize(
    "before",
    [
        b"",
        b"PROXY TCP4 198.51.100.7\r\n",
        b"PROXY TCP9 198.51.100.7 127.0.0.1 1 2\r\n",
        SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
    ],
    ids=["missing", "v1-too-few-fields", "v1-unknown-protocol", "v2-bad-version"],
)
async def test_a_trusted_peer_without_a_valid_proxy_header_is_closed_quietly(
    before: bytes,
) -> None:
    async with serving(config=Config(proxy_protocol=True)) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        async with stream:
            await stream.send_all(before + request_bytes())
            answer, _ = await read_to_the_end(stream)
        stats = server.statistics()
    assert answer == b""
    assert (stats.proxy_header_errors, stats.requests_served, stats.responses_4xx) == (1, 0, 0)


@pytest.mark.parametrize("before", [b"", b"PROXY TCP4 198.51", SIGNATURE[:7]])
async def test_a_slow_proxy_header_is_closed_at_the_header_timeout(before: bytes) -> None:
    config = Config(proxy_protocol=True, header_timeout=0.5)
    async with serving(config=config) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        started = trio.current_time()
        async with stream:
            await stream.send_all(before)
            answer, _ = await read_to_the_end(stream)
        elapsed = trio.current_time() - started
        stats = server.statistics()
    assert answer == b""
    assert 0.45 <= elapsed < 5
    assert stats.proxy_header_errors == 1


async def test_an_untrusted_peer_sending_a_proxy_header_gets_400() -> None:
    # No PROXY header is read from an untrusted peer: its line is a (bad) request line.
    config = Config(proxy_protocol=True, forwarded_allow_ips=("10.0.0.1",))
    async with serving(config=config) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        async with stream:
            await stream.send_all(V1 + request_bytes())
            with trio.fail_after(BOUND):
                reply = await ResponseReader(stream).receive_response()
        stats = server.statistics()
    assert reply.status == 400
    assert stats.proxy_header_errors == 0


async def test_an_untrusted_peer_is_served_without_a_proxy_header() -> None:
    config = Config(proxy_protocol=True, forwarded_allow_ips=("10.0.0.1",))
    async with serving(config=config) as server:
        report, plain = await ask_over_tcp(server, XFF)
    assert report == plain


# --- The command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "bad",
            "forwarded_allow_ips: 'bad' is not an IP address, a CIDR range, 'unix' or '*'",
        ),
        (
            "127.0.0.1,10.0.0.1/8",
            "forwarded_allow_ips: '10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)",
        ),
    ],
    ids=["not-an-address", "host-bits"],
)
def test_bad_forwarded_allow_ips_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["m:app", "--forwarded-allow-ips", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("trioserve: argument --forwarded-allow-ips: ")
    assert message in err


def test_forwarded_allow_ips_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert parse_args(["m:app"]).config.forwarded_allow_ips == ("127.0.0.1",)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.0/8, unix")
    assert parse_args(["m:app"]).config.forwarded_allow_ips == ("10.0.0.0/8", "unix")
    # The flag wins over the environment.
    flag = parse_args(["m:app", "--forwarded-allow-ips", "*"])
    assert flag.config.forwarded_allow_ips == ("*",)


def test_bad_forwarded_allow_ips_in_the_environment_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1,nonsense")
    with pytest.raises(SystemExit) as info:
        parse_args(["m:app"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "'nonsense' is not an IP address" in err


def test_proxy_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    default = parse_args(["m:app"]).config
    assert (default.proxy_headers, default.proxy_protocol) == (True, False)
    flags = ["--no-proxy-headers", "--proxy-protocol", "--forwarded-allow-ips", "a::/16,unix"]
    config = parse_args(["m:app", *flags]).config
    assert (config.proxy_headers, config.proxy_protocol) == (False, True)
    assert config.forwarded_allow_ips == ("a::/16", "unix")
