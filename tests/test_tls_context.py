"""create_ssl_context, parse_cert_reqs and reload_certificates, on trustme's files.

Handshakes run on trio.testing.memory_stream_pair(): no sockets, both ends in-process.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from cryptography.hazmat.primitives import serialization

from trioserve._tls import (
    TLSConfigError,
    create_ssl_context,
    parse_cert_reqs,
    reload_certificates,
)

PASSWORD = "correct-horse-battery"
WRONG_PASSWORD = "tr0ub4dor-and-3"

TLSStream = trio.SSLStream[trio.abc.Stream]


@dataclass(frozen=True)
class Files:
    ca: trustme.CA
    ca_pem: Path
    cert: Path  # CN "first", valid for localhost
    key: Path
    combined: Path  # key and certificate in one PEM file
    encrypted_key: Path  # `key`, encrypted with PASSWORD
    cert2: Path  # CN "second", valid for localhost
    key2: Path
    garbage: Path
    empty: Path
    der_cert: Path
    damaged_cert: Path
    damaged_key: Path
    missing: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    first = ca.issue_cert("localhost", "127.0.0.1", common_name="first")
    second = ca.issue_cert("localhost", common_name="second")
    paths = {name: tmp / f"{name}.pem" for name in Files.__dataclass_fields__ if name != "ca"}
    ca.cert_pem.write_to_path(paths["ca_pem"])
    first.cert_chain_pems[0].write_to_path(paths["cert"])
    first.private_key_pem.write_to_path(paths["key"])
    first.private_key_and_cert_chain_pem.write_to_path(paths["combined"])
    second.cert_chain_pems[0].write_to_path(paths["cert2"])
    second.private_key_pem.write_to_path(paths["key2"])
    key = serialization.load_pem_private_key(first.private_key_pem.bytes(), password=None)
    paths["encrypted_key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode()),
        )
    )
    paths["garbage"].write_text("this is not PEM\n")
    paths["empty"].write_bytes(b"")
    cert_pem = first.cert_chain_pems[0].bytes().decode()
    paths["der_cert"].write_bytes(ssl.PEM_cert_to_DER_cert(cert_pem))
    lines = cert_pem.splitlines(keepends=True)
    paths["damaged_cert"].write_text(lines[0] + "AAAA" + "".join(lines[2:]))
    lines = first.private_key_pem.bytes().decode().splitlines(keepends=True)
    paths["damaged_key"].write_text(lines[0] + "AAAA\n" + "".join(lines[2:]))
    paths["missing"].unlink(missing_ok=True)
    return Files(ca=ca, **paths)


def client_context(files: Files) -> ssl.SSLContext:
    context = ssl.create_default_context()
    files.ca.configure_trust(context)
    return context


async def handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[TLSStream, TLSStream]:
    """Both ends of a completed handshake: (client, server)."""
    client_end, server_end = trio.testing.memory_stream_pair()
    client: TLSStream = trio.SSLStream(client_end, client_context, server_hostname="localhost")
    server: TLSStream = trio.SSLStream(server_end, server_context, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def server_refusal(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> BaseException | None:
    """Run a handshake that may fail; return why the server's side failed, or None.

    A side that fails closes its transport, so the other side cannot wait forever
    (with TLS 1.3 the client finishes before the server has checked its certificate).
    """
    client_end, server_end = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_end, client_context, server_hostname="localhost")
    server = trio.SSLStream(server_end, server_context, server_side=True)
    refusal: BaseException | None = None

    async def client_side() -> None:
        try:
            await client.do_handshake()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(client_end)

    async def server_side() -> None:
        nonlocal refusal
        try:
            await server.do_handshake()
        except trio.BrokenResourceError as exc:
            refusal = exc.__cause__ or exc
            await trio.aclose_forcefully(server_end)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        nursery.start_soon(server_side)
    return refusal


def common_name(stream: TLSStream) -> str:
    cert = stream.getpeercert()
    assert cert
    name = dict(pair[0] for pair in cert["subject"])["commonName"]
    assert isinstance(name, str)
    return name


async def assert_talks(client: TLSStream, server: TLSStream) -> None:
    await client.send_all(b"ping")
    assert await server.receive_some(4) == b"ping"
    await server.send_all(b"pong")
    assert await client.receive_some(4) == b"pong"


# --- Building a context ------------------------------------------------------------------


async def test_separate_cert_and_key(files: Files) -> None:
    context = create_ssl_context(files.cert, files.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.verify_mode == ssl.CERT_NONE
    client, server = await handshake(context, client_context(files))
    assert common_name(client) == "first"
    assert server.getpeercert() is None
    await assert_talks(client, server)


async def test_combined_pem_and_str_paths(files: Files) -> None:
    context = create_ssl_context(str(files.combined))
    client, _ = await handshake(context, client_context(files))
    assert common_name(client) == "first"


async def test_encrypted_key_with_the_right_password(files: Files) -> None:
    context = create_ssl_context(files.cert, files.encrypted_key, password=PASSWORD)
    client, _ = await handshake(context, client_context(files))
    assert common_name(client) == "first"


def test_ciphers_are_applied(files: Files) -> None:
    context = create_ssl_context(files.cert, files.key, ciphers="ECDHE+AESGCM")
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all("ECDHE" in name and "GCM" in name for name in tls12)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_1_1_is_refused(files: Files) -> None:
    # Lower the client's security level so it can offer TLS 1.1 at all. If the local
    # OpenSSL still cannot (NO_PROTOCOLS_AVAILABLE on the client), the handshake must
    # fail anyway, which is what a server operator cares about; on OpenSSL 3.0 the
    # client does offer it and the server answers UNSUPPORTED_PROTOCOL.
    server_context = create_ssl_context(files.cert, files.key)
    old_client = client_context(files)
    old_client.minimum_version = ssl.TLSVersion.TLSv1
    old_client.maximum_version = ssl.TLSVersion.TLSv1_1
    old_client.set_ciphers("DEFAULT:@SECLEVEL=0")
    refusal = await server_refusal(server_context, old_client)
    assert refusal is not None
    if isinstance(refusal, ssl.SSLError) and refusal.reason is not None:
        assert refusal.reason in {"UNSUPPORTED_PROTOCOL", "UNEXPECTED_EOF_WHILE_READING"}
    # The same client allowed TLS 1.2 gets in: it was the version that was refused.
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await server_refusal(server_context, old_client) is None


@pytest.mark.parametrize(
    ("offered", "selected"), [(["h2", "http/1.1"], "http/1.1"), (["h2"], None)]
)
async def test_alpn_selects_only_http_1_1(
    files: Files, offered: list[str], selected: str | None
) -> None:
    context = client_context(files)
    context.set_alpn_protocols(offered)
    client, server = await handshake(create_ssl_context(files.cert, files.key), context)
    assert client.selected_alpn_protocol() == selected
    assert server.selected_alpn_protocol() == selected


# --- Client certificates -----------------------------------------------------------------


async def test_required_client_certificate(files: Files) -> None:
    server_context = create_ssl_context(
        files.cert, files.key, ca_certs=files.ca_pem, cert_reqs=ssl.CERT_REQUIRED
    )
    refusal = await server_refusal(server_context, client_context(files))
    assert isinstance(refusal, ssl.SSLError)
    assert refusal.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"

    with_cert = client_context(files)
    files.ca.issue_cert("client.example.org").configure_cert(with_cert)
    _, server = await handshake(server_context, with_cert)
    peer = server.getpeercert()
    assert peer
    assert ("DNS", "client.example.org") in peer["subjectAltName"]


async def test_optional_client_certificate(files: Files) -> None:
    server_context = create_ssl_context(
        files.cert, files.key, ca_certs=files.ca_pem, cert_reqs=ssl.CERT_OPTIONAL
    )
    _, server = await handshake(server_context, client_context(files))
    assert not server.getpeercert()


@pytest.mark.parametrize("cert_reqs", [ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED])
def test_client_certificates_need_ca_certs(files: Files, cert_reqs: ssl.VerifyMode) -> None:
    with pytest.raises(TLSConfigError, match=r"need ca_certs \(--ssl-ca-certs\)"):
        create_ssl_context(files.cert, files.key, cert_reqs=cert_reqs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", ssl.CERT_NONE),
        ("1", ssl.CERT_OPTIONAL),
        ("2", ssl.CERT_REQUIRED),
        ("none", ssl.CERT_NONE),
        ("Optional", ssl.CERT_OPTIONAL),
        ("REQUIRED", ssl.CERT_REQUIRED),
        ("CERT_NONE", ssl.CERT_NONE),
        ("cert_optional", ssl.CERT_OPTIONAL),
        (" 2 ", ssl.CERT_REQUIRED),
    ],
)
def test_parse_cert_reqs(value: str, expected: ssl.VerifyMode) -> None:
    assert parse_cert_reqs(value) is expected


@pytest.mark.parametrize("value", ["", "3", "-1", "yes", "CERT_", "cert_2", "requires"])
def test_parse_cert_reqs_rejects(value: str) -> None:
    with pytest.raises(TLSConfigError) as info:
        parse_cert_reqs(value)
    assert str(info.value) == (
        f"--ssl-cert-reqs must be 0, 1, 2, none, optional or required, not {value!r}"
    )


# --- Errors --------------------------------------------------------------------------------

# Each case: the call, given the files, and the message it must give.
ErrorCase = tuple[Callable[[Files], object], Callable[[Files], str]]

ERROR_CASES: dict[str, ErrorCase] = {
    "missing certificate": (
        lambda f: create_ssl_context(f.missing, f.key),
        lambda f: f"cannot read certificate file '{f.missing}': No such file or directory",
    ),
    "certificate is a directory": (
        lambda f: create_ssl_context(f.cert.parent, f.key),
        lambda f: f"cannot read certificate file '{f.cert.parent}': Is a directory",
    ),
    "missing key": (
        lambda f: create_ssl_context(f.cert, f.missing),
        lambda f: f"cannot read private key file '{f.missing}': No such file or directory",
    ),
    "certificate not PEM": (
        lambda f: create_ssl_context(f.garbage, f.key),
        lambda f: f"'{f.garbage}' holds no PEM certificate",
    ),
    "certificate empty": (
        lambda f: create_ssl_context(f.empty, f.key),
        lambda f: f"'{f.empty}' holds no PEM certificate",
    ),
    "certificate in DER": (
        lambda f: create_ssl_context(f.der_cert, f.key),
        lambda f: f"'{f.der_cert}' holds no PEM certificate",
    ),
    "key given as certificate": (
        lambda f: create_ssl_context(f.key, f.key),
        lambda f: f"'{f.key}' holds no PEM certificate",
    ),
    "certificate damaged": (
        lambda f: create_ssl_context(f.damaged_cert, f.key),
        lambda f: f"'{f.damaged_cert}' holds a damaged PEM certificate",
    ),
    "key not PEM": (
        lambda f: create_ssl_context(f.cert, f.garbage),
        lambda f: f"'{f.garbage}' holds no PEM private key",
    ),
    "certificate given as key": (
        lambda f: create_ssl_context(f.cert, f.cert),
        lambda f: f"'{f.cert}' holds no PEM private key",
    ),
    "no key anywhere": (
        lambda f: create_ssl_context(f.cert),
        lambda f: f"'{f.cert}' holds no PEM private key and no key file was given",
    ),
    "key damaged": (
        lambda f: create_ssl_context(f.cert, f.damaged_key),
        lambda f: f"'{f.damaged_key}' holds a damaged PEM private key",
    ),
    "key mismatch": (
        lambda f: create_ssl_context(f.cert, f.key2),
        lambda f: f"the private key in '{f.key2}' does not match the certificate in '{f.cert}'",
    ),
    "wrong password": (
        lambda f: create_ssl_context(f.cert, f.encrypted_key, password=WRONG_PASSWORD),
        lambda f: f"cannot decrypt the private key in '{f.encrypted_key}': wrong password",
    ),
    "encrypted key, no password": (
        # Without a password callback OpenSSL would prompt on the terminal instead.
        lambda f: create_ssl_context(f.cert, f.encrypted_key),
        lambda f: f"the private key in '{f.encrypted_key}' is encrypted and no password was given",
    ),
    "password too long": (
        lambda f: create_ssl_context(f.cert, f.encrypted_key, password="x" * 2000),
        lambda f: f"the password for '{f.encrypted_key}' is longer than 1024 bytes",
    ),
    "missing CA file": (
        lambda f: create_ssl_context(f.cert, f.key, ca_certs=f.missing),
        lambda f: f"cannot read CA file '{f.missing}': No such file or directory",
    ),
    "CA file not PEM": (
        lambda f: create_ssl_context(f.cert, f.key, ca_certs=f.garbage),
        lambda f: f"CA file '{f.garbage}' holds no PEM certificate",
    ),
    "CA file holds only a key": (
        lambda f: create_ssl_context(f.cert, f.key, ca_certs=f.key),
        lambda f: f"CA file '{f.key}' holds no PEM certificate",
    ),
    "CA file damaged": (
        lambda f: create_ssl_context(f.cert, f.key, ca_certs=f.damaged_cert),
        lambda f: f"CA file '{f.damaged_cert}' holds a damaged PEM certificate",
    ),
    "ciphers select nothing": (
        lambda f: create_ssl_context(f.cert, f.key, ciphers="NO-SUCH-CIPHER"),
        lambda f: "the cipher string 'NO-SUCH-CIPHER' selects no cipher",
    ),
    "cert_reqs not a mode": (
        lambda f: create_ssl_context(f.cert, f.key, cert_reqs=7),  # type: ignore[arg-type]  # the check under test
        lambda f: "cert_reqs must be an ssl.VerifyMode, not 7",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_are_one_clear_line(files: Files, case: str) -> None:
    call, message = ERROR_CASES[case]
    with pytest.raises(TLSConfigError) as info:
        call(files)
    text = str(info.value)
    assert text == message(files)
    assert "\n" not in text
    assert "_ssl.c" not in text
    assert PASSWORD not in text
    assert WRONG_PASSWORD not in text


# --- Reloading -----------------------------------------------------------------------------


async def test_reload_serves_the_new_certificate_to_new_handshakes(files: Files) -> None:
    context = create_ssl_context(files.cert, files.key)
    before_client, before_server = await handshake(context, client_context(files))

    reload_certificates(context, files.cert2, files.key2)

    after_client, after_server = await handshake(context, client_context(files))
    assert common_name(after_client) == "second"
    await assert_talks(after_client, after_server)
    # The connection opened before the reload keeps its certificate and keeps working.
    assert common_name(before_client) == "first"
    await assert_talks(before_client, before_server)


@pytest.mark.parametrize(
    "bad_reload",
    [
        # The mismatch is the case OpenSSL itself gets wrong: load_cert_chain installs
        # the new certificate, drops the old key that no longer matches it, then fails
        # on the new key and leaves the context with no usable key at all.
        pytest.param(lambda f: ((f.cert2, f.key), {}), id="key mismatch"),
        pytest.param(lambda f: ((f.cert2, f.garbage), {}), id="key not PEM"),
        pytest.param(lambda f: ((f.cert2, f.damaged_key), {}), id="key damaged"),
        pytest.param(lambda f: ((f.cert2, f.missing), {}), id="key missing"),
        pytest.param(lambda f: ((f.garbage, f.key2), {}), id="certificate not PEM"),
        pytest.param(
            lambda f: ((f.cert, f.encrypted_key), {"password": WRONG_PASSWORD}),
            id="wrong password",
        ),
        pytest.param(lambda f: ((f.cert, f.encrypted_key), {}), id="no password"),
    ],
)
async def test_failed_reload_keeps_the_old_certificate(
    files: Files,
    bad_reload: Callable[[Files], tuple[tuple[Path, Path], dict[str, str]]],
) -> None:
    context = create_ssl_context(files.cert, files.key)
    before_client, before_server = await handshake(context, client_context(files))
    args, kwargs = bad_reload(files)

    with pytest.raises(TLSConfigError):
        reload_certificates(context, *args, **kwargs)

    client, server = await handshake(context, client_context(files))
    assert common_name(client) == "first"
    await assert_talks(client, server)
    await assert_talks(before_client, before_server)


async def test_reload_with_an_encrypted_key(files: Files) -> None:
    context = create_ssl_context(files.cert2, files.key2)
    reload_certificates(context, files.cert, files.encrypted_key, password=PASSWORD)
    client, _ = await handshake(context, client_context(files))
    assert common_name(client) == "first"
