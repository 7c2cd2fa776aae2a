"""PROXY protocol: the client's address as a load balancer in front of us saw it.

HAProxy's PROXY protocol (https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt)
puts one header at the very start of a connection, before the HTTP request or the TLS
ClientHello: a text line (v1) or a binary block (v2) naming the original source and
destination addresses.

Rules for this module:
1. Consume exactly the header's bytes and nothing after them: what follows belongs to the
   next reader (h11 or the TLS layer). We look with ``MSG_PEEK`` and take only bytes
   known to be part of the header.
2. Never peek twice at the same unread bytes: readiness is level-triggered, so waiting
   for "more" while bytes sit unread would spin. An incomplete header is consumed as far
   as it goes, and the next peek waits for new bytes.
3. Be strict: anything that is not a well-formed header raises ``ProxyProtocolError``
   with a short message for a debug log. Socket errors (``OSError``) propagate as they
   are; deadlines are the caller's cancel scope.
4. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

import trio

__all__ = ["ProxyInfo", "ProxyProtocolError", "read_proxy_header"]

_V1_PREFIX: Final = b"PROXY "
#: Longest v1 line including CRLF (spec 2.1: "PROXY UNKNOWN" and two full IPv6
#: addresses and ports). It is also all we ever peek: v2's fixed part fits in it.
_V1_MAX_LENGTH: Final = 107
_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Signature, version/command, family/protocol and the 16-bit block length (spec 2.2).
_V2_FIXED: Final = struct.Struct("!12sBBH")
_V2_INET: Final = struct.Struct("!4s4sHH")
_V2_INET6: Final = struct.Struct("!16s16sHH")
#: Address block length by family/protocol byte, for the combinations we accept:
#: UNSPEC (0x00), TCP over IPv4 (0x11), TCP over IPv6 (0x21), UNIX stream (0x31).
_V2_ADDRESS_LENGTHS: Final = {0x00: 0, 0x11: _V2_INET.size, 0x21: _V2_INET6.size, 0x31: 216}
#: UDP over IPv4/IPv6 and UNIX datagram: valid PROXY headers, but we serve streams.
_V2_DGRAM: Final = frozenset({0x12, 0x22, 0x32})
_EOF_MESSAGE: Final = "connection closed before the PROXY header was complete"


class ProxyProtocolError(Exception):
    """The connection did not start with a valid PROXY protocol header.

    The message says what was wrong, short, for a debug log line.
    """


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """The connection's endpoints as the proxy saw them.

    ``client`` is the source address and port, ``server`` the destination. Both are
    ``None`` when the header carries no usable address: a v2 LOCAL command (a proxy's
    health check), v1 UNKNOWN, and the AF_UNIX and unspecified families.
    """

    client: tuple[str, int] | None
    server: tuple[str, int] | None
    #: A v2 LOCAL command: the proxy's own connection (a health check), which the
    #: spec says to take with its real endpoints.
    local: bool = False


_NO_ADDRESSES: Final = ProxyInfo(client=None, server=None)
_LOCAL: Final = ProxyInfo(client=None, server=None, local=True)


async def read_proxy_header(stream: trio.SocketStream) -> ProxyInfo:
    """Read a PROXY protocol v1 or v2 header from the start of ``stream``.

    Exactly the header's bytes are consumed; the bytes after it stay in the socket for
    the next reader. Normally this is one peek and one read.

    Args:
        stream: a freshly accepted connection from a proxy that sends the header.

    Returns:
        The addresses the header carries.

    Raises:
        ProxyProtocolError: the connection does not start with a header, the header is
            malformed or unsupported (v2 datagram families), or the peer closed the
            connection before the header was complete.
        OSError: from the socket, unchanged.

    Error handling:
        This function sets no deadline: run it under the caller's cancel scope.
    """
    sock = stream.socket
    consumed = b""  # bytes of an incomplete header, already read (rule 2)
    while True:
        # consumed + peeked never exceeds _V1_MAX_LENGTH: enough to decide.
        peeked = await sock.recv(_V1_MAX_LENGTH - len(consumed), socket.MSG_PEEK)
        if not peeked:
            raise ProxyProtocolError(_EOF_MESSAGE)
        data = consumed + peeked
        if data.startswith(_V2_SIGNATURE) and len(data) >= _V2_FIXED.size:
            # The fixed part says how long the rest is: check it before reading the
            # (up to 64 KiB) block, then read exactly that much.
            family, length = _v2_fixed(data[: _V2_FIXED.size])
            header = consumed + await _recv_exactly(sock, _V2_FIXED.size + length - len(consumed))
            return _v2_addresses(family, header[_V2_FIXED.size :])
        if data.startswith(_V1_PREFIX):
            end = data.find(b"\r\n")
            if end >= 0:
                line = consumed + await _recv_exactly(sock, end + 2 - len(consumed))
                return _v1(line[:-2])
            if len(data) >= _V1_MAX_LENGTH:
                raise ProxyProtocolError(f"PROXY v1 line longer than {_V1_MAX_LENGTH} bytes")
        elif not (_V2_SIGNATURE.startswith(data[:12]) or _V1_PREFIX.startswith(data[:6])):
            # Unread, so the caller could still look at it; usually it just closes.
            raise ProxyProtocolError("not a PROXY protocol header")
        # A valid beginning: every byte so far is header, so take them (rule 2).
        consumed += await _recv_exactly(sock, len(peeked))


async def _recv_exactly(sock: trio.socket.SocketType, count: int) -> bytes:
    """Read exactly ``count`` bytes (normally already waiting: one call)."""
    received = bytearray()
    while len(received) < count:
        chunk = await sock.recv(count - len(received))
        if not chunk:
            raise ProxyProtocolError(_EOF_MESSAGE)
        received += chunk
    return bytes(received)


def _v1(line: bytes) -> ProxyInfo:
    """Parse ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>`` or ``PROXY UNKNOWN ...``.

    Fields are separated by exactly one space: ``split(b" ")`` turns a doubled space
    into an empty field, which then fails its check.
    """
    fields = line.split(b" ")
    if fields[1] == b"UNKNOWN":
        return _NO_ADDRESSES  # spec 2.1: ignore whatever follows, up to CRLF
    if fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {fields[1][:8]!r}")
    if len(fields) != 6:
        raise ProxyProtocolError("PROXY v1: expected 6 space-separated fields")
    version = 4 if fields[1] == b"TCP4" else 6
    _, _, source, destination, source_port, destination_port = fields
    return ProxyInfo(
        client=(_v1_address(source, version), _v1_port(source_port)),
        server=(_v1_address(destination, version), _v1_port(destination_port)),
    )


def _v1_address(raw: bytes, version: int) -> str:
    try:
        text = raw.decode("ascii")
        if "%" in text:
            raise ValueError("scope id")  # fe80::1%eth0 is not an address on the wire
        # ipaddress rejects IPv4 octets with leading zeros (ambiguous: octal?).
        address = ipaddress.IPv4Address(text) if version == 4 else ipaddress.IPv6Address(text)
    except ValueError:  # includes UnicodeDecodeError
        raise ProxyProtocolError(f"PROXY v1: bad IPv{version} address {raw[:45]!r}") from None
    return str(address)


def _v1_port(raw: bytes) -> int:
    # Plain decimal 0-65535: no sign, no spaces, no leading zeros (bytes.isdigit is
    # ASCII-only, unlike str.isdigit).
    if not raw.isdigit() or (raw.startswith(b"0") and raw != b"0") or int(raw) > 65535:
        raise ProxyProtocolError(f"PROXY v1: bad port {raw[:8]!r}")
    return int(raw)


def _v2_fixed(fixed: bytes) -> tuple[int | None, int]:
    """Check v2's 16-byte fixed part; return (family/protocol byte, block length).

    The family is ``None`` for LOCAL: spec 2.2 says to discard the whole block,
    family included, and use the real endpoints.
    """
    _, version_command, family, length = _V2_FIXED.unpack(fixed)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: unsupported version {version_command >> 4}")
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL
        return None, length
    if command != 0x1:  # PROXY
        raise ProxyProtocolError(f"PROXY v2: unknown command {command}")
    if family in _V2_DGRAM:
        raise ProxyProtocolError("PROXY v2: datagram protocols are not supported")
    required = _V2_ADDRESS_LENGTHS.get(family)
    if required is None:
        raise ProxyProtocolError(f"PROXY v2: unknown family/protocol 0x{family:02x}")
    if length < required:
        raise ProxyProtocolError(f"PROXY v2: {length} address bytes, family needs {required}")
    return family, length


def _v2_addresses(family: int | None, block: bytes) -> ProxyInfo:
    """Read the addresses from a v2 block checked by ``_v2_fixed``; TLVs after them
    (spec 2.2.7) are skipped: we have read them, and nothing here needs them."""
    if family is None:
        return _LOCAL
    if family == 0x11:
        source, destination, source_port, destination_port = _V2_INET.unpack_from(block)
    elif family == 0x21:
        source, destination, source_port, destination_port = _V2_INET6.unpack_from(block)
    else:
        return _NO_ADDRESSES  # UNSPEC or AF_UNIX
    # ip_address takes packed bytes: 4 make an IPv4 address, 16 an IPv6 one.
    return ProxyInfo(
        client=(str(ipaddress.ip_address(source)), source_port),
        server=(str(ipaddress.ip_address(destination)), destination_port),
    )
