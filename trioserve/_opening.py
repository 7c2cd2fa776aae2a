"""Opening a connection: who is at each end, and what comes before its first request.

Rules for this module:
1. A connection's ends are read once, from its socket, when it opens: a TCP peer has
   an address; a Unix-socket peer has none (logs name the socket's path instead); any
   other stream (a memory stream) has neither.
2. A peer's word about the client is believed only when the socket peer is trusted
   (``Config.forwarded_allow_ips``): a PROXY protocol header (``Config.proxy_protocol``,
   then required from trusted peers) replaces the connection's addresses;
   ``X-Forwarded-*`` and ``Forwarded`` (``Config.proxy_headers``) rewrite each
   request's client, scheme and host (``_forwarded`` decides how).
3. What comes before the first request (the PROXY header, the TLS handshake) is read
   here, by the connection task under its scope (``_connection`` sets the deadlines);
   a failure is a quiet close (or, for plain HTTP sent to the TLS port, one
   plain-text 400), logged at DEBUG, never a traceback.
"""

from __future__ import annotations

import logging
import socket as stdlib_socket
import ssl
from dataclasses import dataclass
from typing import Final

import trio

from ._config import Config
from ._forwarded import TrustedPeers, resolve
from ._headers import Headers
from ._logging import access_logger, error_logger, log_refusal
from ._proxy_protocol import ProxyProtocolError, read_proxy_header
from ._request import Request, TLSInfo
from ._stats import Counters

__all__ = [
    "PLAIN_HTTP_ANSWER",
    "Ends",
    "ends_of",
    "forward",
    "open_tls",
    "read_proxy",
    "tls_info",
]

#: The answer to a plain-HTTP request on the TLS port, in plain HTTP (nginx answers
#: the same with 400 "The plain HTTP request was sent to HTTPS port"): a person who
#: typed http:// learns what to type instead of reading a dropped connection.
PLAIN_HTTP_ANSWER: Final = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 46\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"The plain HTTP request was sent to HTTPS port\n"
)

_TLS_VERSIONS: Final = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
# OpenSSL cipher names to their IANA numbers, filled from each context on a miss.
_cipher_ids: dict[str, int] = {}
# RFC 4514's short names for the attributes ssl.getpeercert() spells out.
_RDN_NAMES: Final = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    # No RFC 4514 short name: the dotted OID, as the cryptography package writes it.
    "emailAddress": "1.2.840.113549.1.9.1",
}


@dataclass(slots=True)
class Ends:
    """What a connection knows of its two ends when it opens.

    Attributes:
        client: the peer's ``(host, port)``; None on a Unix socket or a memory stream.
        server: our ``(host, port)``; None likewise.
        scheme: ``"https"`` over TLS, else ``"http"``.
        label: the peer for log lines: its host, ``unix:<path>``, or ``-``.
        trusted: the socket peer may speak for the client (PROXY header, proxy
            headers).
        forwarding: each request's proxy headers are believed (``proxy_headers``
            and a trusted peer; after a PROXY header, the peer it names).
    """

    client: tuple[str, int] | None
    server: tuple[str, int] | None
    scheme: str
    label: str
    trusted: bool
    forwarding: bool


def ends_of(
    stream: trio.abc.Stream,
    config: Config,
    trust: TrustedPeers,
    *,
    client: tuple[str, int] | None = None,
    server: tuple[str, int] | None = None,
    scheme: str = "http",
) -> Ends:
    """The ends of ``stream``; ``client`` and ``server``, when given, win over its socket."""
    transport = stream
    while isinstance(transport, trio.SSLStream):
        transport = transport.transport_stream
    if isinstance(stream, trio.SSLStream):
        scheme = "https"
    unix_path: str | None = None
    if client is None and server is None and isinstance(transport, trio.SocketStream):
        client, server, unix_path = _socket_ends(transport.socket)
    if unix_path is not None:
        label = f"unix:{unix_path}"
    else:
        label = client[0] if client is not None else "-"
    trusted = (config.proxy_headers or config.proxy_protocol) and trust.trusts_peer(
        client, unix=unix_path is not None
    )
    return Ends(client, server, scheme, label, trusted, trusted and config.proxy_headers)


def _socket_ends(
    sock: trio.socket.SocketType,
) -> tuple[tuple[str, int] | None, tuple[str, int] | None, str | None]:
    try:
        if sock.family == stdlib_socket.AF_UNIX:
            path = sock.getsockname()
            return None, None, path if isinstance(path, str) and path else "?"
        if sock.family in (stdlib_socket.AF_INET, stdlib_socket.AF_INET6):
            peer = sock.getpeername()
            local = sock.getsockname()
            return (peer[0], peer[1]), (local[0], local[1]), None
    except OSError:  # the peer left already: it will be seen as gone
        pass
    return None, None, None


def forward(request: Request, headers: list[tuple[bytes, bytes]], trust: TrustedPeers) -> None:
    """Set what a trusted proxy says it forwarded on ``request``: its client, scheme,
    server and Host header (``_forwarded`` decides what the headers say)."""
    forwarded = resolve(headers, request.client, request.scheme, trust)
    if forwarded is None:
        return
    request.client = forwarded.client
    request.scheme = forwarded.scheme
    if forwarded.server is not None:
        request.server = forwarded.server
    if forwarded.host is not None:
        host = forwarded.host
        rewritten = [(name, value) for name, value in headers if name != b"host"]
        rewritten.append((b"host", host))
        request.headers = Headers.from_raw(rewritten)


async def read_proxy(
    stream: trio.abc.Stream, ends: Ends, config: Config, trust: TrustedPeers
) -> bool:
    """Read the PROXY header a trusted peer must send first; its addresses replace
    those of the socket in ``ends``. False when it is missing or malformed."""
    transport = stream
    while isinstance(transport, trio.SSLStream):  # the header comes before TLS
        transport = transport.transport_stream
    if not isinstance(transport, trio.SocketStream):
        return False  # read from sockets only (it peeks)
    try:
        info = await read_proxy_header(transport)
    except (ProxyProtocolError, OSError) as exc:
        error_logger.debug("PROXY header from %s refused: %s", ends.label, exc)
        return False
    if info.local:  # the balancer's own connection (a health check): as it is
        return True
    # The client the balancer names (None: it could not say, as for UNKNOWN);
    # X-Forwarded-* are believed only from a peer it names that we trust.
    ends.client = info.client
    ends.server = info.server
    ends.label = info.client[0] if info.client is not None else "-"
    ends.forwarding = info.client is not None and (
        config.proxy_headers and trust.trusts_peer(info.client, unix=False)
    )
    return True


async def open_tls(
    stream: trio.SSLStream[trio.abc.Stream], ends: Ends, counters: Counters
) -> TLSInfo | bool:
    """Run the TLS handshake (the caller's scope holds its deadline).

    Returns the connection's :class:`TLSInfo`; or, when the handshake failed (plain
    HTTP, garbage, no common version or cipher, a refused certificate, a client that
    left), True once a plain-HTTP client got its 400 (close gracefully) and False
    otherwise (close quietly).
    """
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        counters.handshake_failures += 1
        cause = exc.__cause__
        reason = getattr(cause, "reason", None) if isinstance(cause, ssl.SSLError) else None
        error_logger.debug("TLS handshake with %s failed: %s", ends.label, reason or cause)
        # OpenSSL recognises an HTTP method where a ClientHello should be.
        if reason not in ("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
            return False
        try:
            await stream.transport_stream.send_all(PLAIN_HTTP_ANSWER)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        counters.count_response(400)
        if access_logger.isEnabledFor(logging.INFO):
            log_refusal(ends.label, 400)
        return True
    return tls_info(stream)


def tls_info(stream: trio.SSLStream[trio.abc.Stream]) -> TLSInfo:
    """What a handler may know of a connection's TLS (the ASGI TLS extension's fields)."""
    # trio's SSLStream forwards these to its ssl.SSLObject.
    cipher: tuple[str, str, int] | None = stream.cipher()
    version: str | None = stream.version()
    alpn: str | None = stream.selected_alpn_protocol()
    context: ssl.SSLContext = stream.context
    der: bytes | None = stream.getpeercert(binary_form=True)
    chain: tuple[str, ...] = ()
    name: str | None = None
    if der:
        chain = (ssl.DER_cert_to_PEM_cert(der),)
        name = _rfc4514(stream.getpeercert())
    return TLSInfo(
        version=_TLS_VERSIONS.get(version or "", 0),
        cipher_suite=_cipher_id(context, cipher[0]) if cipher else None,
        client_cert_chain=chain,
        client_cert_name=name,
        alpn_protocol=alpn,
    )


def _cipher_id(context: ssl.SSLContext, name: str) -> int | None:
    if name not in _cipher_ids:
        for cipher in context.get_ciphers():
            # OpenSSL's id is 0x0300xxxx for TLS; its low 16 bits are the IANA number.
            _cipher_ids[str(cipher["name"])] = int(str(cipher["id"])) & 0xFFFF
    return _cipher_ids.get(name)


def _rfc4514(cert: object) -> str | None:
    """The subject of a verified peer certificate as an RFC 4514 string."""
    if not isinstance(cert, dict):
        return None
    subject = cert.get("subject")
    if not isinstance(subject, tuple):
        return None
    parts = []
    for rdn in reversed(subject):  # RFC 4514 2.1: the last RDN first
        pairs = [f"{_RDN_NAMES.get(str(k), str(k))}={_escape(str(v))}" for k, v in rdn]
        parts.append("+".join(pairs))
    return ",".join(parts)


def _escape(value: str) -> str:
    out = []
    for i, char in enumerate(value):
        edge = (i == 0 and char in " #") or (i == len(value) - 1 and char == " ")
        if char == "\0":
            out.append("\\00")  # RFC 4514 2.4: a NUL is hex-escaped, never raw
        elif edge or char in ',+"\\<>;':
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)
