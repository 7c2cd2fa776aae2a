"""HTTPS end to end: trustme's certificates, real clients, the command line, and the
handshake's deadlines in virtual time.

The clients are httpx, curl and ``openssl s_client`` over 127.0.0.1 (port 0), and raw
trio streams for the clients no library would be (plain HTTP on the TLS port, garbage,
a client that leaves mid-handshake). The deadlines run on in-memory streams under
``autojump_clock``. The command line runs as child processes (``tests/processes.py``).
Every wait is bounded by ``BOUND`` real seconds.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import trioserve
from trioserve import Request, Response
from trioserve._tracker import NEW_CONNECTION_GRACE
from trioserve.asgi import ASGIHandler, Receive, Scope, Send
from trioserve.testing import ResponseReader, open_connection, parse_responses
from trioserve.wsgi import WSGIHandler

from .processes import BOUND, ChildProcess, running
from .test_protocol import client_hello

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "open sesame"
#: What the command line prints once it serves HTTPS, with the port.
SERVING_HTTPS = rb"Serving on https://127\.0\.0\.1:(\d+) \(press CTRL\+C"
#: A keep-alive request, and one that asks the server to close after its answer.
GET = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
PLAIN_HTTP_BODY = b"The plain HTTP request was sent to HTTPS port\n"
TLS_VERSIONS = {ssl.TLSVersion.TLSv1_2: 0x0303, ssl.TLSVersion.TLSv1_3: 0x0304}

TLSStream = trio.SSLStream[trio.SocketStream]


# --- Certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    """trustme's CA and certificates, written to files."""

    ca: trustme.CA
    ca_pem: Path
    cert: Path  # for 127.0.0.1 and localhost, signed by ``ca``
    key: Path
    combined: Path  # ``key`` and ``cert`` in one file
    encrypted_key: Path  # ``key`` encrypted with PASSWORD
    other_key: Path  # the key of another certificate
    client: trustme.LeafCert  # CN=alice, for alice@example.org, signed by ``ca``
    client_cert: Path
    client_key: Path
    ca2_pem: Path  # a second CA, and a certificate for 127.0.0.1 it signed
    cert2: Path
    key2: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("alice@example.org", common_name="alice")
    other = ca.issue_cert("other.example")
    ca2 = trustme.CA()
    server2 = ca2.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(where / "ca.pem")
    ca2.cert_pem.write_to_path(where / "ca2.pem")
    server.cert_chain_pems[0].write_to_path(where / "cert.pem")
    server.private_key_pem.write_to_path(where / "key.pem")
    server.private_key_and_cert_chain_pem.write_to_path(where / "combined.pem")
    server2.cert_chain_pems[0].write_to_path(where / "cert2.pem")
    server2.private_key_pem.write_to_path(where / "key2.pem")
    other.private_key_pem.write_to_path(where / "other-key.pem")
    client.cert_chain_pems[0].write_to_path(where / "client.pem")
    client.private_key_pem.write_to_path(where / "client-key.pem")
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    (where / "encrypted-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    return PKI(
        ca=ca,
        ca_pem=where / "ca.pem",
        cert=where / "cert.pem",
        key=where / "key.pem",
        combined=where / "combined.pem",
        encrypted_key=where / "encrypted-key.pem",
        other_key=where / "other-key.pem",
        client=client,
        client_cert=where / "client.pem",
        client_key=where / "client-key.pem",
        ca2_pem=where / "ca2.pem",
        cert2=where / "cert2.pem",
        key2=where / "key2.pem",
    )


def der_of(pem: str | bytes) -> bytes:
    text = pem.decode("ascii") if isinstance(pem, bytes) else pem
    return ssl.PEM_cert_to_DER_cert(text)


def client_context(
    pki: PKI,
    *,
    with_cert: bool = False,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client that trusts both CAs, presents alice's certificate if ``with_cert``."""
    context = ssl.create_default_context(cafile=pki.ca_pem)
    context.load_verify_locations(pki.ca2_pem)
    if with_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    return context


# --- The application and its servers -----------------------------------------------------


class App:
    """A native handler that remembers each request it saw."""

    def __init__(self) -> None:
        self.seen: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        if request.path == "/echo":
            return Response(200, body=await request.body())
        if request.path == "/stream":
            return Response(200, headers=[("content-type", "text/plain")], body=count(200))
        return Response(200, headers=[("content-type", "text/plain")], body=b"Hello, TLS!")


async def count(n: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield b"line %d\n" % i
        await trio.lowlevel.checkpoint()


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Assert that the test logged nothing at WARNING or above, and no traceback."""
    caplog.set_level(logging.DEBUG, logger="trioserve")
    yield
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


async def start(
    nursery: trio.Nursery,
    handler: trioserve.Handler,
    context: ssl.SSLContext,
    lifespan: Callable[[], AbstractAsyncContextManager[object]] | None = None,
) -> trioserve.Server:
    server: trioserve.Server = await nursery.start(
        functools.partial(
            trioserve.serve, handler, 0, host="127.0.0.1", ssl_context=context, lifespan=lifespan
        )
    )
    return server


@pytest.fixture
async def server(nursery: trio.Nursery, app: App, pki: PKI) -> trioserve.Server:
    return await start(nursery, app, trioserve.create_ssl_context(pki.cert, pki.key))


@pytest.fixture
async def mtls_server(nursery: trio.Nursery, app: App, pki: PKI) -> trioserve.Server:
    """A server that requires a client certificate signed by ``pki.ca``."""
    context = trioserve.create_ssl_context(
        pki.cert, pki.key, ca_certs=pki.ca_pem, cert_reqs=ssl.CERT_REQUIRED
    )
    return await start(nursery, app, context)


def https_client(server: trioserve.Server, context: ssl.SSLContext) -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment must not intercept loopback.
    return httpx.AsyncClient(base_url=server.urls[0], verify=context, trust_env=False)


async def connect(port: int, context: ssl.SSLContext) -> TLSStream:
    """A TLS connection to 127.0.0.1:port, handshake done."""
    with trio.fail_after(BOUND):
        stream: TLSStream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", port, ssl_context=context, https_compatible=True
        )
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    return stream


async def read_until_the_end(stream: trio.abc.ReceiveStream) -> tuple[bytes, str]:
    """What came, and how the connection ended: "EOF" or "reset"."""
    chunks = []
    with trio.fail_after(BOUND):
        try:
            while data := await stream.receive_some(65536):
                chunks.append(data)
        except trio.BrokenResourceError:
            return b"".join(chunks), "reset"
    return b"".join(chunks), "EOF"


async def raw_exchange(port: int, data: bytes, *, eof: bool = False) -> tuple[bytes, str]:
    """Send ``data`` on a plain TCP connection (then EOF, if ``eof``); read to the end.

    The server counts a connection's outcome before it closes: once the client has
    read to the end, the server's statistics are final.
    """
    with trio.fail_after(BOUND):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if eof:
            await stream.send_eof()
        return await read_until_the_end(stream)


# --- httpx ---------------------------------------------------------------------------------


async def test_httpx_get_and_post_over_one_kept_alive_connection(
    server: trioserve.Server, app: App, pki: PKI, quiet: None
) -> None:
    port = server.ports[0]
    assert server.urls == [f"https://127.0.0.1:{port}"]
    upload = os.urandom(1024 * 1024)
    with trio.fail_after(BOUND):
        async with https_client(server, client_context(pki)) as client:
            hello = await client.get("/")
            echo = await client.post("/echo", content=upload)
    assert (hello.status_code, hello.text, hello.http_version) == (200, "Hello, TLS!", "HTTP/1.1")
    assert echo.status_code == 200
    assert echo.content == upload
    # Keep-alive: both requests came on the one connection (one client port).
    first, second = app.seen
    assert first.client == second.client
    assert server.statistics().connections_total == 1
    for request in app.seen:
        assert request.scheme == "https"
        assert request.server == ("127.0.0.1", port)
        tls = request.tls
        assert isinstance(tls, trioserve.TLSInfo)
        assert tls.version in (0x0303, 0x0304)
        assert isinstance(tls.cipher_suite, int)
        assert tls.alpn_protocol == "http/1.1"
        assert (tls.client_cert_chain, tls.client_cert_name) == ((), None)


async def test_httpx_streamed_response(server: trioserve.Server, pki: PKI) -> None:
    lines = []
    with trio.fail_after(BOUND):
        async with (
            https_client(server, client_context(pki)) as client,
            client.stream("GET", "/stream") as response,
        ):
            assert response.headers["transfer-encoding"] == "chunked"
            async for line in response.aiter_lines():
                lines.append(line)
    assert lines == [f"line {i}" for i in range(200)]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_request_tls_names_the_version(
    server: trioserve.Server, app: App, pki: PKI, version: ssl.TLSVersion
) -> None:
    with trio.fail_after(BOUND):
        async with https_client(server, client_context(pki, maximum_version=version)) as client:
            response = await client.get("/")
    assert response.status_code == 200
    [request] = app.seen
    assert request.tls is not None
    assert request.tls.version == TLS_VERSIONS[version]


# --- curl and openssl s_client ---------------------------------------------------------------


@pytest.mark.parametrize(("flag", "version"), [("--tls-max", "1.2"), ("--tls-max", "1.3")])
async def test_curl(
    server: trioserve.Server, app: App, pki: PKI, flag: str, version: str, quiet: None
) -> None:
    url = f"https://127.0.0.1:{server.ports[0]}/"
    command = ["curl", "--noproxy", "*", "--cacert", str(pki.ca_pem), flag, version]
    command += ["-s", "-S", "--max-time", str(BOUND), "-o", "-"]
    command += ["-w", "\n%{http_code} %{http_version} %{ssl_verify_result}", url]
    with trio.fail_after(BOUND):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"Hello, TLS!\n200 1.1 0"
    [request] = app.seen
    assert request.tls is not None
    assert request.tls.version == {"1.2": 0x0303, "1.3": 0x0304}[version]
    assert request.tls.alpn_protocol == "http/1.1"  # curl offers h2 first


async def s_client(
    port: int, *args: str, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args]
    with trio.fail_after(BOUND):
        return await trio.run_process(
            command, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )


async def test_openssl_s_client_tls12_with_alpn(
    server: trioserve.Server, app: App, pki: PKI, quiet: None
) -> None:
    # -ign_eof: read the answer to its end after stdin ends.
    done = await s_client(
        server.ports[0],
        *("-alpn", "h2,http/1.1", "-tls1_2", "-CAfile", str(pki.ca_pem)),
        *("-verify_return_error", "-ign_eof"),
        stdin=GET_CLOSE,
    )
    out = done.stdout.decode("latin-1")
    assert "ALPN protocol: http/1.1" in out
    assert re.search(r"Protocol\s*: TLSv1\.2\b", out)
    assert "Verify return code: 0 (ok)" in out
    answer = done.stdout[done.stdout.index(b"HTTP/1.1 ") :]
    [response] = parse_responses(answer.removesuffix(b"closed\n"))  # s_client's word
    assert (response.status, response.body) == (200, b"Hello, TLS!")
    [request] = app.seen
    assert request.tls is not None
    assert (request.tls.version, request.tls.alpn_protocol) == (0x0303, "http/1.1")


@pytest.mark.parametrize(
    ("choose", "suite"),
    [
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"), 0xC02B),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"), 0xCCA9),
        (("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"), 0x1301),
        (("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"), 0x1303),
    ],
)
async def test_cipher_suite_is_the_iana_number(
    server: trioserve.Server, app: App, pki: PKI, choose: tuple[str, ...], suite: int
) -> None:
    done = await s_client(
        server.ports[0], *choose, "-CAfile", str(pki.ca_pem), "-ign_eof", stdin=GET_CLOSE
    )
    assert b"HTTP/1.1 200 OK" in done.stdout, done.stderr
    [request] = app.seen
    assert request.tls is not None
    assert request.tls.cipher_suite == suite


async def test_openssl_s_client_tls11_is_refused(
    server: trioserve.Server, app: App, pki: PKI, quiet: None
) -> None:
    # @SECLEVEL=0 lets this OpenSSL offer TLS 1.1 at all: the refusal is the server's.
    done = await s_client(
        server.ports[0],
        *("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", str(pki.ca_pem)),
        stdin=GET_CLOSE,
    )
    assert done.returncode != 0
    assert b"HTTP/1.1" not in done.stdout
    assert server.statistics().handshake_failures == 1  # counted before the close
    assert app.seen == []
    assert server.statistics().requests_served == 0


# --- Clients that do not speak TLS, or stop speaking it ------------------------------------


async def test_plain_http_to_the_tls_port_gets_400_then_eof(
    server: trioserve.Server, app: App, quiet: None
) -> None:
    answer, end = await raw_exchange(server.ports[0], GET)
    assert end == "EOF"
    [response] = parse_responses(answer)
    assert response.status == 400
    assert response.headers["connection"] == "close"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.body == PLAIN_HTTP_BODY
    stats = server.statistics()
    assert (stats.handshake_failures, stats.responses_4xx) == (1, 1)
    assert (stats.handshake_timeouts, stats.connections_aborted) == (0, 0)
    assert app.seen == []


async def test_garbage_is_closed_quietly(
    server: trioserve.Server, app: App, pki: PKI, quiet: None
) -> None:
    answer, _ = await raw_exchange(server.ports[0], b"\x00\x01\x02 not TLS at all\r\n" * 8)
    assert answer == b""  # nothing sent back: a quiet close (EOF or reset)
    stats = server.statistics()
    assert (stats.handshake_failures, stats.connections_aborted) == (1, 0)
    assert app.seen == []
    # The server goes on.
    async with https_client(server, client_context(pki)) as client:
        with trio.fail_after(BOUND):
            assert (await client.get("/")).status_code == 200


async def test_client_that_leaves_mid_handshake(
    server: trioserve.Server, app: App, pki: PKI, quiet: None
) -> None:
    hello = client_hello()
    # Half a ClientHello, then EOF: what the server sees of a client that closed.
    answer, _ = await raw_exchange(server.ports[0], hello[: len(hello) // 2], eof=True)
    assert answer == b""
    stats = server.statistics()
    assert (stats.handshake_failures, stats.handshake_timeouts) == (1, 0)
    assert (stats.connections_aborted, stats.connections_open) == (0, 0)
    async with https_client(server, client_context(pki)) as client:
        with trio.fail_after(BOUND):
            assert (await client.get("/")).status_code == 200


async def test_a_stalled_handshake_holds_up_nobody(
    server: trioserve.Server, pki: PKI, quiet: None
) -> None:
    hello = client_hello()
    with trio.fail_after(BOUND):
        stalled = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
    async with stalled:
        await stalled.send_all(hello[: len(hello) // 2])  # and nothing more
        async with https_client(server, client_context(pki)) as client:
            with trio.fail_after(BOUND):
                assert (await client.get("/")).status_code == 200
            assert server.statistics().connections_open == 2


async def test_client_that_leaves_without_close_notify_is_an_ordinary_disconnect(
    server: trioserve.Server, app: App, pki: PKI, quiet: None
) -> None:
    stream = await connect(server.ports[0], client_context(pki))
    with trio.fail_after(BOUND):
        await stream.send_all(GET)
        response = await ResponseReader(stream).receive_response()
    assert (response.status, response.body) == (200, b"Hello, TLS!")
    # Gone without close_notify, as browsers go: a TCP FIN. The server closes too.
    transport = stream.transport_stream
    assert isinstance(transport, trio.SocketStream)
    await transport.send_eof()
    assert (await read_until_the_end(transport))[1] == "EOF"
    await transport.aclose()
    stats = server.statistics()
    assert (stats.handshake_failures, stats.connections_aborted) == (0, 0)
    assert (stats.requests_served, stats.client_disconnects) == (1, 0)
    assert stats.connections_open == 0
    # The next client is served as usual.
    async with https_client(server, client_context(pki)) as client:
        with trio.fail_after(BOUND):
            assert (await client.get("/")).status_code == 200
    assert server.statistics().requests_served == 2


# --- Deadlines, in virtual time over memory streams -----------------------------------------


class SlowStart(trio.abc.Stream):
    """A client's transport whose first send waits ``delay`` seconds: a slow handshake."""

    def __init__(self, stream: trio.abc.Stream, delay: float) -> None:
        self.stream = stream
        self.delay = delay

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.delay:
            await trio.sleep(self.delay)
            self.delay = 0
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


def memory_server(pki: PKI, app: App, config: trioserve.Config) -> trioserve.Server:
    context = trioserve.create_ssl_context(pki.cert, pki.key)
    return trioserve.Server(app, config, ssl_context=context)


@pytest.mark.parametrize("sends", ["nothing", "half a ClientHello"])
async def test_handshake_timeout(
    autojump_clock: trio.testing.MockClock, pki: PKI, app: App, sends: str, quiet: None
) -> None:
    server = memory_server(pki, app, trioserve.Config(handshake_timeout=2))
    begin = trio.current_time()
    async with open_connection(server) as stream:
        if sends != "nothing":
            hello = client_hello()
            await stream.send_all(hello[: len(hello) // 2])
        assert await stream.receive_some() == b""
        assert trio.current_time() == begin + 2
    stats = server.statistics()
    assert (stats.handshake_timeouts, stats.handshake_failures) == (1, 0)
    assert (stats.header_timeouts, stats.connections_open) == (0, 0)


async def test_graceful_shutdown_closes_a_stalled_handshake_after_the_grace(
    autojump_clock: trio.testing.MockClock, pki: PKI, app: App, quiet: None
) -> None:
    server = memory_server(pki, app, trioserve.Config(handshake_timeout=10))
    begin = trio.current_time()
    async with open_connection(server) as stream:
        hello = client_hello()
        await stream.send_all(hello[: len(hello) // 2])
        await trio.sleep(1)
        assert server.statistics().connections_idle == 1  # in the handshake: idle
        with trio.fail_after(5):  # virtual: not at the handshake deadline (10 s)
            await server.shutdown()
            assert await stream.receive_some() == b""
        # A new connection gets NEW_CONNECTION_GRACE to get its request in.
        assert trio.current_time() == begin + 1 + NEW_CONNECTION_GRACE
    stats = server.statistics()
    assert (stats.handshake_timeouts, stats.handshake_failures) == (0, 0)
    assert stats.connections_open == 0


@pytest.mark.parametrize("request_at", [17.0, None])
async def test_header_deadline_of_the_first_request_starts_after_the_handshake(
    autojump_clock: trio.testing.MockClock,
    pki: PKI,
    app: App,
    request_at: float | None,
    quiet: None,
) -> None:
    # The handshake takes 8 s of the 10 s handshake_timeout; the first request then
    # has its whole header_timeout (10 s), until 18 s after accept, not 10.
    server = memory_server(pki, app, trioserve.Config(handshake_timeout=10, header_timeout=10))
    begin = trio.current_time()
    async with open_connection(server) as end:
        stream = trio.SSLStream(
            SlowStart(end, 8),
            client_context(pki),
            server_hostname="localhost",
            https_compatible=True,
        )
        await stream.do_handshake()
        assert trio.current_time() == begin + 8
        if request_at is None:  # says nothing: closed quietly at 8 + 10 s
            assert await stream.receive_some() == b""
            assert trio.current_time() == begin + 18
            assert server.statistics().header_timeouts == 1
        else:
            await trio.sleep_until(begin + request_at)
            await stream.send_all(GET_CLOSE)
            response = await ResponseReader(stream).receive_response()
            assert (response.status, response.body) == (200, b"Hello, TLS!")
            assert server.statistics().header_timeouts == 0
            [request] = app.seen
            assert (request.scheme, request.client) == ("https", None)
    assert server.statistics().handshake_timeouts == 0


# --- Client certificates -------------------------------------------------------------------


async def test_client_certificate_reaches_the_handler(
    mtls_server: trioserve.Server, app: App, pki: PKI, quiet: None
) -> None:
    with trio.fail_after(BOUND):
        async with https_client(mtls_server, client_context(pki, with_cert=True)) as client:
            response = await client.get("/")
    assert response.status_code == 200
    [request] = app.seen
    tls = request.tls
    assert tls is not None
    alice = x509.load_pem_x509_certificate(pki.client.cert_chain_pems[0].bytes())
    assert tls.client_cert_name == alice.subject.rfc4514_string()
    assert tls.client_cert_name.startswith("CN=alice,OU=Testing cert #")
    [pem] = tls.client_cert_chain
    assert der_of(pem) == alice.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("common_name", "organization"),
    [
        pytest.param('a,b+c"d\\e<f>g;h', None, id="specials"),
        pytest.param("#hash first", None, id="hash-first"),
        pytest.param(" spaces around ", None, id="spaces-around"),
        pytest.param("Zoë 日本", None, id="utf-8"),
        pytest.param("alice", "Example, Inc.", id="comma-in-organization"),
        # RFC 4514 2.4: a NUL is escaped as \00, never passed on as it is (an
        # application comparing C strings would read "admin" here).
        pytest.param("admin\x00.evil.example", None, id="nul"),
    ],
)
async def test_client_cert_name_is_rfc4514(
    pki: PKI, app: App, common_name: str, organization: str | None, quiet: None
) -> None:
    context = trioserve.create_ssl_context(
        pki.cert, pki.key, ca_certs=pki.ca_pem, cert_reqs=ssl.CERT_REQUIRED
    )
    server = trioserve.Server(app, ssl_context=context)
    leaf = pki.ca.issue_cert(
        "someone@example.org", common_name=common_name, organization_name=organization
    )
    client = client_context(pki)
    leaf.configure_cert(client)
    with trio.fail_after(BOUND):
        async with open_connection(server) as end:
            stream = trio.SSLStream(
                end, client, server_hostname="localhost", https_compatible=True
            )
            await stream.send_all(GET_CLOSE)
            response = await ResponseReader(stream).receive_response()
    assert response.status == 200
    [request] = app.seen
    assert request.tls is not None
    subject = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).subject
    assert request.tls.client_cert_name == subject.rfc4514_string()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_client_without_certificate_is_refused(
    mtls_server: trioserve.Server, app: App, pki: PKI, version: ssl.TLSVersion, quiet: None
) -> None:
    context = client_context(pki, maximum_version=version)
    with trio.fail_after(BOUND):
        stream: TLSStream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", mtls_server.ports[0], ssl_context=context, https_compatible=True
        )
        async with stream:
            try:
                # TLS 1.2 fails here; in TLS 1.3 the client's handshake is over before
                # the server has seen (and refused) its empty certificate message.
                await stream.do_handshake()
                await stream.send_all(GET)
                answer, _ = await read_until_the_end(stream)
            except trio.BrokenResourceError:
                answer = b""
    assert answer == b""
    stats = mtls_server.statistics()
    assert (stats.handshake_failures, stats.requests_served) == (1, 0)
    assert app.seen == []


# --- ASGI and WSGI ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_cert", [False, True])
async def test_asgi_scope_has_https_and_the_tls_extension(
    nursery: trio.Nursery, pki: PKI, with_cert: bool, quiet: None
) -> None:
    scopes: list[Scope] = []

    async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"asgi"})

    handler = ASGIHandler(asgi_app, lifespan="off")
    cert_reqs = ssl.CERT_REQUIRED if with_cert else ssl.CERT_NONE
    context = trioserve.create_ssl_context(
        pki.cert, pki.key, ca_certs=pki.ca_pem, cert_reqs=cert_reqs
    )
    server = await start(nursery, handler, context, lifespan=handler.lifespan)
    with trio.fail_after(BOUND):
        async with https_client(server, client_context(pki, with_cert=with_cert)) as client:
            response = await client.get("/x")
    assert (response.status_code, response.content) == (200, b"asgi")
    [scope] = scopes
    assert scope["scheme"] == "https"
    extensions = scope["extensions"]
    assert isinstance(extensions, dict)
    tls = extensions["tls"]
    assert tls["server_cert"] is None
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int)
    if with_cert:
        alice = x509.load_pem_x509_certificate(pki.client.cert_chain_pems[0].bytes())
        assert [der_of(pem) for pem in tls["client_cert_chain"]] == [
            alice.public_bytes(serialization.Encoding.DER)
        ]
        assert tls["client_cert_name"] == alice.subject.rfc4514_string()
    else:
        assert (tls["client_cert_chain"], tls["client_cert_name"]) == ([], None)


async def test_wsgi_environ_has_https(nursery: trio.Nursery, pki: PKI, quiet: None) -> None:
    environs: list[WSGIEnvironment] = []

    def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        environs.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi"]

    context = trioserve.create_ssl_context(pki.cert, pki.key)
    server = await start(nursery, WSGIHandler(wsgi_app), context)
    with trio.fail_after(BOUND):
        async with https_client(server, client_context(pki)) as client:
            response = await client.get("/w")
    assert (response.status_code, response.content) == (200, b"wsgi")
    [environ] = environs
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["SERVER_PORT"] == str(server.ports[0])


# --- The command line ------------------------------------------------------------------------


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "trioserve", "examples.hello:handler", *map(str, args)]


def serving_https(*args: str | Path) -> AbstractAsyncContextManager[ChildProcess]:
    return running(cli("--host", "127.0.0.1", "--port", "0", *args), cwd=ROOT, ready=SERVING_HTTPS)


async def get_over_tls(child: ChildProcess, context: ssl.SSLContext) -> tuple[bytes, bytes]:
    """A response to ``GET /`` on a new TLS connection, and the server's certificate."""
    stream = await connect(child.port, context)
    async with stream:
        der = stream.getpeercert(binary_form=True)
        with trio.fail_after(BOUND):
            await stream.send_all(GET_CLOSE)
            answer, _ = await read_until_the_end(stream)
    assert der is not None
    return answer, der


@pytest.mark.parametrize("separate_key", [True, False])
async def test_cli_serves_https(pki: PKI, separate_key: bool) -> None:
    files: list[str | Path] = ["--ssl-certfile", pki.cert, "--ssl-keyfile", pki.key]
    if not separate_key:
        files = ["--ssl-certfile", pki.combined]
    async with serving_https(*files) as child:
        answer, der = await get_over_tls(child, client_context(pki))
    [response] = parse_responses(answer)
    assert (response.status, response.body) == (200, b"Hello, world!\n")
    assert der == der_of(pki.cert.read_bytes())
    assert b"Traceback" not in child.stderr


async def test_cli_with_encrypted_key_and_client_certificates(pki: PKI) -> None:
    args: list[str | Path] = ["--ssl-certfile", pki.cert, "--ssl-keyfile", pki.encrypted_key]
    args += ["--ssl-keyfile-password", PASSWORD, "--ssl-ca-certs", pki.ca_pem]
    args += ["--ssl-cert-reqs", "required"]
    async with serving_https(*args) as child:
        answer, _ = await get_over_tls(child, client_context(pki, with_cert=True))
        [response] = parse_responses(answer)
        assert response.status == 200
        refused = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
        with pytest.raises(trio.BrokenResourceError):
            await get_over_tls(child, refused)
    assert b"Traceback" not in child.stderr
    assert PASSWORD.encode() not in child.stderr


@pytest.mark.parametrize(
    ("files", "status", "message"),
    [
        pytest.param(
            lambda p: ["--ssl-certfile", p.cert.parent / "missing.pem", "--ssl-keyfile", p.key],
            1,
            "trioserve: cannot read certificate file '{dir}/missing.pem': "
            "No such file or directory",
            id="missing-certificate",
        ),
        pytest.param(
            lambda p: ["--ssl-certfile", p.cert, "--ssl-keyfile", p.other_key],
            1,
            "trioserve: the private key in '{dir}/other-key.pem' does not match the "
            "certificate in '{dir}/cert.pem'",
            id="key-of-another-certificate",
        ),
        pytest.param(
            lambda p: [
                *("--ssl-certfile", p.cert, "--ssl-keyfile", p.encrypted_key),
                *("--ssl-keyfile-password", "not the password"),
            ],
            1,
            "trioserve: cannot decrypt the private key in '{dir}/encrypted-key.pem': "
            "wrong password",
            id="wrong-password",
        ),
        pytest.param(
            lambda p: ["--ssl-certfile", p.cert, "--ssl-keyfile", p.encrypted_key],
            1,
            "trioserve: the private key in '{dir}/encrypted-key.pem' is encrypted and no "
            "password was given",
            id="no-password",
        ),
        pytest.param(
            lambda p: ["--ssl-keyfile", p.key],
            2,
            "trioserve: --ssl-keyfile needs --ssl-certfile (see python -m trioserve --help)",
            id="key-without-certificate",
        ),
    ],
)
async def test_cli_refuses_unusable_tls_files(
    pki: PKI, files: Callable[[PKI], list[str | Path]], status: int, message: str
) -> None:
    with trio.fail_after(BOUND):
        done = await trio.run_process(
            cli("--port", "0", *files(pki)),
            cwd=ROOT,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
        )
    stderr = done.stderr.decode()
    assert done.returncode == status, stderr
    assert stderr == message.format(dir=pki.cert.parent) + "\n"
    assert done.stdout == b""


async def test_cli_sighup_reloads_the_certificate(pki: PKI, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"

    def install(new_cert: Path, new_key: Path) -> None:
        # Replace each file at once (rename), as certbot's deploy does.
        for source, target in ((new_cert, cert), (new_key, key)):
            (tmp_path / "next").write_bytes(source.read_bytes())
            os.replace(tmp_path / "next", target)

    install(pki.cert, pki.key)
    first_der = der_of(pki.cert.read_bytes())
    second_der = der_of(pki.cert2.read_bytes())
    context = client_context(pki)
    async with serving_https("--ssl-certfile", cert, "--ssl-keyfile", key) as child:
        old = await connect(child.port, context)
        reader = ResponseReader(old)
        with trio.fail_after(BOUND):
            await old.send_all(GET)
            assert (await reader.receive_response()).status == 200
        assert old.getpeercert(binary_form=True) == first_der

        install(pki.cert2, pki.key2)
        child.process.send_signal(signal.SIGHUP)
        await child.wait_for(rb"SIGHUP: certificate reloaded")
        answer, der = await get_over_tls(child, context)
        assert der == second_der
        assert parse_responses(answer)[0].status == 200

        # A broken pair is refused, and the server keeps the certificate it has.
        install(pki.cert, pki.key2)
        child.process.send_signal(signal.SIGHUP)
        await child.wait_for(rb"SIGHUP: certificate not reloaded: [^\n]*does not match")
        answer, der = await get_over_tls(child, context)
        assert der == second_der
        assert parse_responses(answer)[0].status == 200

        # The connection opened before the reloads still answers, with its certificate.
        with trio.fail_after(BOUND):
            await old.send_all(GET_CLOSE)
            assert (await reader.receive_response()).status == 200
        assert old.getpeercert(binary_form=True) == first_der
        await old.aclose()
    assert b"Traceback" not in child.stderr


async def test_cli_sighup_replaces_an_rsa_certificate_by_an_ecdsa_one(tmp_path: Path) -> None:
    """certbot 2 renews with an ECDSA key by default. Loaded into the live context in
    place, the new certificate would sit beside the old RSA one (OpenSSL keeps one per
    key type), and clients that only speak RSA would keep getting the old one."""
    ca = trustme.CA()
    rsa = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    ecdsa = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.ECDSA)
    pem = tmp_path / "fullchain-and-key.pem"
    rsa.private_key_and_cert_chain_pem.write_to_path(str(pem))
    rsa_only = ssl.create_default_context()
    ca.configure_trust(rsa_only)
    rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
    rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    anyone = ssl.create_default_context()
    ca.configure_trust(anyone)
    async with serving_https("--ssl-certfile", pem) as child:
        _, der = await get_over_tls(child, rsa_only)
        assert der == der_of(rsa.cert_chain_pems[0].bytes())
        (tmp_path / "next.pem").write_bytes(ecdsa.private_key_and_cert_chain_pem.bytes())
        os.replace(tmp_path / "next.pem", pem)
        child.process.send_signal(signal.SIGHUP)
        await child.wait_for(rb"SIGHUP: certificate reloaded")
        _, der = await get_over_tls(child, anyone)
        assert der == der_of(ecdsa.cert_chain_pems[0].bytes())
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            await get_over_tls(child, rsa_only)  # no RSA certificate is left to offer


# --- WebSocket over TLS (wss) --------------------------------------------------------


async def test_wss_native_and_asgi(nursery: trio.Nursery, pki: PKI, quiet: None) -> None:
    from websockets.sync.client import connect as ws_connect

    schemes: list[object] = []

    async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
        schemes.append(scope["scheme"])
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": f"asgi {message['text']}"})

    async def native(request: Request) -> None:
        ws = await request.accept_websocket()
        await ws.send("native " + str(await ws.receive()))

    asgi = ASGIHandler(asgi_app, lifespan="off")
    context = trioserve.create_ssl_context(pki.cert, pki.key)
    native_server = await start(nursery, native, context)
    asgi_server = await start(nursery, asgi, context, lifespan=asgi.lifespan)

    def talk(port: int) -> str | bytes:
        with ws_connect(f"wss://127.0.0.1:{port}/", ssl=client_context(pki)) as ws:
            ws.send("hi")
            return ws.recv(timeout=BOUND)

    assert await trio.to_thread.run_sync(talk, native_server.ports[0]) == "native hi"
    assert await trio.to_thread.run_sync(talk, asgi_server.ports[0]) == "asgi hi"
    assert schemes == ["wss"]
    await native_server.shutdown()
    await asgi_server.shutdown()
