"""read_proxy_header on real socket pairs: v1 and v2 headers whole, byte by byte, followed
by a request that must stay unread, and a table of malformed ones."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trioserve._proxy_protocol import ProxyInfo, ProxyProtocolError, read_proxy_header

REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int, family: int, block: bytes, *, version: int = 2) -> bytes:
    return SIGNATURE + struct.pack("!BBH", version << 4 | command, family, len(block)) + block


V2_TCP4 = v2(0x1, 0x11, bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 443))
V2_TCP6 = v2(
    0x1,
    0x21,
    socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    + struct.pack("!HH", 1, 65535),
)
TCP4_INFO = ProxyInfo(client=("192.0.2.1", 56324), server=("198.51.100.7", 443))
NO_INFO = ProxyInfo(client=None, server=None)
LOCAL_INFO = ProxyInfo(client=None, server=None, local=True)


Pair = tuple[trio.SocketStream, trio.socket.SocketType]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """(the server's stream, the proxy's raw socket)."""
    a, b = trio.socket.socketpair()
    with a, b:
        yield trio.SocketStream(a), b


async def send(sock: trio.socket.SocketType, data: bytes) -> None:
    while data:
        data = data[await sock.send(data) :]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n", TCP4_INFO, id="v1-tcp4"),
        pytest.param(
            b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:192.0.2.1 0 65535\r\n",
            ProxyInfo(client=("2001:db8::1", 0), server=("::ffff:c000:201", 65535)),
            id="v1-tcp6",
        ),
        pytest.param(b"PROXY UNKNOWN\r\n", NO_INFO, id="v1-unknown"),
        pytest.param(b"PROXY UNKNOWN ffff::1 whatever  goes\r\n", NO_INFO, id="v1-unknown-rest"),
        # The longest line the spec allows, 107 bytes with CRLF.
        pytest.param(b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n", NO_INFO, id="v1-107-bytes"),
        pytest.param(V2_TCP4, TCP4_INFO, id="v2-tcp4"),
        pytest.param(
            V2_TCP6,
            ProxyInfo(client=("2001:db8::1", 1), server=("2001:db8::2", 65535)),
            id="v2-tcp6",
        ),
        pytest.param(v2(0x0, 0x00, b""), LOCAL_INFO, id="v2-local"),
        # LOCAL: addresses and family are discarded, but the block is consumed.
        pytest.param(v2(0x0, 0x11, V2_TCP4[16:]), LOCAL_INFO, id="v2-local-with-block"),
        pytest.param(v2(0x1, 0x00, b""), NO_INFO, id="v2-unspec"),
        pytest.param(v2(0x1, 0x31, b"/src".ljust(108, b"\0") * 2), NO_INFO, id="v2-unix"),
        # TLVs after the addresses: skipped, however long (here past the 107-byte peek).
        pytest.param(
            v2(0x1, 0x11, V2_TCP4[16:] + b"\x04\x01\x2c" + b"t" * 300 + b"\x03\x00\x04abcd"),
            TCP4_INFO,
            id="v2-tlvs",
        ),
    ],
)
async def test_header_then_request_stays_unread(
    pair: Pair, header: bytes, expected: ProxyInfo
) -> None:
    stream, proxy = pair
    await send(proxy, header + REQUEST)
    assert await read_proxy_header(stream) == expected
    assert await stream.receive_some(1000) == REQUEST


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n", id="v1"),
        pytest.param(V2_TCP4, id="v2"),
    ],
)
async def test_header_byte_by_byte(pair: Pair, header: bytes) -> None:
    """Each byte arrives only after the reader has blocked again; a reader that
    re-peeked at unread bytes would spin and never let the test task see it blocked."""
    stream, proxy = pair
    result: list[ProxyInfo] = []

    async def read() -> None:
        result.append(await read_proxy_header(stream))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            for byte in header:
                await trio.testing.wait_all_tasks_blocked()
                assert not result
                await send(proxy, bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()
            await send(proxy, REQUEST)
    assert result == [TCP4_INFO]
    assert await stream.receive_some(1000) == REQUEST


def v1_tcp4(source: bytes = b"192.0.2.1", sport: bytes = b"56324") -> bytes:
    return b"PROXY TCP4 " + source + b" 198.51.100.7 " + sport + b" 443\r\n"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"HELO there, " * 4, "not a PROXY", id="bad-signature"),
        pytest.param(b"PROXZ TCP4", "not a PROXY", id="bad-v1-prefix"),
        pytest.param(b"\r\n\r\n\x00\r\nQUIX\n" + b"\0" * 8, "not a PROXY", id="bad-v2-signature"),
        pytest.param(b"PROXY UNKNOWN " + b"x" * 93, "longer than 107", id="v1-no-crlf"),
        pytest.param(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "longer than 107", id="v1-108"),
        pytest.param(b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", "unknown protocol", id="v1-proto"),
        pytest.param(b"PROXY \r\n", "unknown protocol", id="v1-no-proto"),
        pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "6 space", id="v1-few-fields"),
        pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "6 space", id="v1-many-fields"),
        pytest.param(b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "6 space", id="v1-double-space"),
        pytest.param(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "6 space", id="v1-trailing-space"),
        pytest.param(v1_tcp4(b"192.0.2.256"), "bad IPv4", id="v1-bad-ipv4"),
        pytest.param(v1_tcp4(b"192.0.2.01"), "bad IPv4", id="v1-ipv4-leading-zero"),
        pytest.param(v1_tcp4(b"example.com"), "bad IPv4", id="v1-hostname"),
        pytest.param(v1_tcp4(b"2001:db8::1"), "bad IPv4", id="v1-tcp4-with-ipv6"),
        pytest.param(v1_tcp4(b"1.2.3.\xc4\xb0"), "bad IPv4", id="v1-non-ascii"),
        pytest.param(
            b"PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n", "bad IPv6", id="v1-tcp6-with-ipv4"
        ),
        pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad IPv6", id="v1-ipv6-scope"),
        pytest.param(v1_tcp4(sport=b"65536"), "bad port", id="v1-port-too-big"),
        pytest.param(v1_tcp4(sport=b"+80"), "bad port", id="v1-port-plus"),
        pytest.param(v1_tcp4(sport=b"-1"), "bad port", id="v1-port-negative"),
        pytest.param(v1_tcp4(sport=b"080"), "bad port", id="v1-port-leading-zero"),
        pytest.param(v1_tcp4(sport=b"8_0"), "bad port", id="v1-port-underscore"),
        pytest.param(v1_tcp4(sport=b"\xd9\xa1"), "bad port", id="v1-port-arabic-digit"),
        pytest.param(v1_tcp4(sport=b""), "bad port", id="v1-port-empty"),
        pytest.param(v2(0x1, 0x11, V2_TCP4[16:], version=1), "version 1", id="v2-version"),
        pytest.param(v2(0x2, 0x11, V2_TCP4[16:]), "command 2", id="v2-command"),
        pytest.param(v2(0x1, 0x12, V2_TCP4[16:]), "datagram", id="v2-udp4"),
        pytest.param(v2(0x1, 0x32, b"\0" * 216), "datagram", id="v2-unix-dgram"),
        pytest.param(v2(0x1, 0x41, b""), "0x41", id="v2-family"),
        pytest.param(v2(0x1, 0x10, V2_TCP4[16:]), "0x10", id="v2-inet-unspec-protocol"),
        pytest.param(v2(0x1, 0x11, V2_TCP4[16:-1]), "needs 12", id="v2-short-inet"),
        pytest.param(v2(0x1, 0x21, V2_TCP4[16:]), "needs 36", id="v2-short-inet6"),
        pytest.param(v2(0x1, 0x31, b"\0" * 215), "needs 216", id="v2-short-unix"),
        pytest.param(REQUEST, "not a PROXY", id="plain-http"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "not a PROXY", id="tls"),
    ],
)
async def test_malformed(pair: Pair, data: bytes, match: str) -> None:
    stream, proxy = pair
    await send(proxy, data)
    with trio.fail_after(10), pytest.raises(ProxyProtocolError, match=match):
        await read_proxy_header(stream)


async def test_not_a_header_is_left_unread(pair: Pair) -> None:
    stream, proxy = pair
    await send(proxy, REQUEST)
    with pytest.raises(ProxyProtocolError, match="not a PROXY"):
        await read_proxy_header(stream)
    assert await stream.receive_some(1000) == REQUEST


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"PRO", id="v1-prefix"),
        pytest.param(b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r", id="v1-no-lf"),
        pytest.param(SIGNATURE[:5], id="v2-signature"),
        pytest.param(V2_TCP4[:14], id="v2-fixed-part"),
        pytest.param(V2_TCP4[:-1], id="v2-block"),
    ],
)
async def test_eof_before_complete_header(pair: Pair, data: bytes) -> None:
    stream, proxy = pair
    await send(proxy, data)
    proxy.shutdown(socket.SHUT_WR)
    with trio.fail_after(10), pytest.raises(ProxyProtocolError, match="closed before"):
        await read_proxy_header(stream)
