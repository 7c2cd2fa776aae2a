"""Forwarded headers: the spoofing cases as a table, TrustedPeers, and a property test.

Every case runs with the socket peer a trusted proxy (PEER, in 10.0.0.0/8) on an
"http" connection, unless it says otherwise.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import example, given

from trioserve._forwarded import Forwarded, TrustedPeers, resolve

TRUSTED = TrustedPeers(["10.0.0.0/8", "2001:db8:ffff::/48", "192.0.2.7", "unix"])
PEER = ("10.0.0.1", 5000)


def same(client: tuple[str, int] | None = PEER, scheme: str = "http") -> Forwarded:
    """A result that changes nothing but (maybe) the client and scheme."""
    return Forwarded(client, scheme, None, None)


# (id, header lines, expected Forwarded)
CASES: list[tuple[str, list[tuple[str, str]], Forwarded]] = [
    # --- X-Forwarded-For: forged leftmost entries ------------------------------------
    ("xff-one-entry", [("x-forwarded-for", "1.2.3.4")], same(("1.2.3.4", 0))),
    (
        "xff-forged-leftmost-one-proxy",
        [("x-forwarded-for", "6.6.6.6, 1.2.3.4")],
        same(("1.2.3.4", 0)),
    ),
    (
        "xff-forged-trusted-looking-leftmost",
        [("x-forwarded-for", "10.9.9.9, 1.2.3.4")],
        same(("1.2.3.4", 0)),
    ),
    (
        "xff-two-trusted-proxies-chain",
        [("x-forwarded-for", "6.6.6.6, 1.2.3.4, 192.0.2.7, 10.0.0.2")],
        same(("1.2.3.4", 0)),
    ),
    (
        "xff-untrusted-in-the-middle",
        [("x-forwarded-for", "1.2.3.4, 5.6.7.8, 10.0.0.2")],
        same(("5.6.7.8", 0)),
    ),
    (
        "xff-every-entry-trusted",
        [("x-forwarded-for", "10.1.1.1, 10.0.0.2")],
        same(("10.1.1.1", 0)),
    ),
    ("xff-with-port", [("x-forwarded-for", "1.2.3.4:5678")], same(("1.2.3.4", 5678))),
    ("xff-ipv6-bare", [("x-forwarded-for", "2001:DB8:0::1")], same(("2001:db8::1", 0))),
    ("xff-ipv6-brackets", [("x-forwarded-for", "[2001:db8::1]")], same(("2001:db8::1", 0))),
    (
        "xff-ipv6-brackets-port",
        [("x-forwarded-for", "[2001:db8::1]:443")],
        same(("2001:db8::1", 443)),
    ),
    (
        "xff-ipv6-trusted-cidr-skipped",
        [("x-forwarded-for", "[2001:db8::1]:443, 2001:db8:ffff::9")],
        same(("2001:db8::1", 443)),
    ),
    (
        "xff-ipv4-mapped-trusted",
        [("x-forwarded-for", "1.2.3.4, ::ffff:10.0.0.3")],
        same(("1.2.3.4", 0)),
    ),
    (
        "xff-multiple-lines",
        [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "1.2.3.4")],
        same(("1.2.3.4", 0)),
    ),
    # Garbage right of (or at) the stopping point: unusable, nothing changes.
    ("xff-garbage", [("x-forwarded-for", "not an address")], same()),
    ("xff-unknown", [("x-forwarded-for", "unknown")], same()),
    ("xff-hostname", [("x-forwarded-for", "client.example")], same()),
    ("xff-empty", [("x-forwarded-for", "")], same()),
    ("xff-empty-element-right", [("x-forwarded-for", "1.2.3.4, , 10.0.0.2")], same()),
    ("xff-port-zero", [("x-forwarded-for", "1.2.3.4:0")], same()),
    ("xff-port-too-big", [("x-forwarded-for", "1.2.3.4:65536")], same()),
    ("xff-scope-id", [("x-forwarded-for", "fe80::1%eth0")], same()),
    ("xff-leading-zero", [("x-forwarded-for", "01.2.3.4")], same()),
    ("xff-unclosed-bracket", [("x-forwarded-for", "[2001:db8::1")], same()),
    ("xff-junk-after-bracket", [("x-forwarded-for", "[2001:db8::1]x")], same()),
    ("xff-bracketed-ipv4", [("x-forwarded-for", "[1.2.3.4]")], same()),
    ("xff-non-ascii", [("x-forwarded-for", "1.2.3.\u0664")], same()),
    # Garbage left of the stopping point is the client's own business.
    ("xff-garbage-left", [("x-forwarded-for", "garbage, , 1.2.3.4")], same(("1.2.3.4", 0))),
    # Too long: the rightmost entries are walked (our proxy's is there), never none.
    (
        "xff-too-many-entries",
        [("x-forwarded-for", ", ".join(["6.6.6.6"] * 200 + ["1.2.3.4"]))],
        same(("1.2.3.4", 0)),
    ),
    (
        "xff-too-long",
        [("x-forwarded-for", "6" * 9000 + ", 10.0.0.2, 1.2.3.4, 10.0.0.3")],
        same(("1.2.3.4", 0)),
    ),
    ("xff-too-long", [("x-forwarded-for", " " * 8200 + "1.2.3.4")], same()),
    ("xff-100-entries", [("x-forwarded-for", ", ".join(["1.2.3.4"] * 100))], same(("1.2.3.4", 0))),
    # --- X-Forwarded-Proto ------------------------------------------------------------
    ("xfp-alone", [("x-forwarded-proto", "HTTPS")], same(scheme="https")),
    ("xfp-unsupported", [("x-forwarded-proto", "ws")], same()),
    ("xfp-garbage", [("x-forwarded-proto", "ht\xe9tp")], same()),
    (
        "xfp-aligned-with-xff",
        [("x-forwarded-for", "1.2.3.4, 10.0.0.2"), ("x-forwarded-proto", "https, http")],
        same(("1.2.3.4", 0), "https"),
    ),
    (
        "xfp-forged-leftmost-aligned",
        [("x-forwarded-for", "6.6.6.6, 1.2.3.4"), ("x-forwarded-proto", "https, http")],
        same(("1.2.3.4", 0), "http"),
    ),
    (
        "xfp-count-mismatch-rightmost",
        [("x-forwarded-for", "1.2.3.4, 10.0.0.2"), ("x-forwarded-proto", "http, http, https")],
        same(("1.2.3.4", 0), "https"),
    ),
    (
        "xfp-ignored-when-xff-unusable",
        [("x-forwarded-for", "garbage"), ("x-forwarded-proto", "https")],
        same(),
    ),
    # --- X-Forwarded-Host and -Port ---------------------------------------------------
    (
        "xfh",
        [("x-forwarded-host", "Example.COM"), ("x-forwarded-proto", "https")],
        Forwarded(PEER, "https", b"example.com", ("example.com", 443)),
    ),
    (
        "xfh-with-port",
        [("x-forwarded-host", "example.com:8443")],
        Forwarded(PEER, "http", b"example.com:8443", ("example.com", 8443)),
    ),
    (
        "xfh-default-port-dropped",
        [("x-forwarded-host", "example.com:80")],
        Forwarded(PEER, "http", b"example.com", ("example.com", 80)),
    ),
    (
        "xfh-ipv6",
        [("x-forwarded-host", "[2001:db8::0:1]:8080")],
        Forwarded(PEER, "http", b"[2001:db8::1]:8080", ("2001:db8::1", 8080)),
    ),
    (
        "xfh-and-xfport",
        [("x-forwarded-host", "example.com"), ("x-forwarded-port", "8080")],
        Forwarded(PEER, "http", b"example.com:8080", ("example.com", 8080)),
    ),
    (
        "xfh-port-wins-over-xfport",
        [("x-forwarded-host", "example.com:9000"), ("x-forwarded-port", "8080")],
        Forwarded(PEER, "http", b"example.com:9000", ("example.com", 9000)),
    ),
    (
        "xfh-aligned-with-xff",
        [("x-forwarded-for", "1.2.3.4, 10.0.0.2"), ("x-forwarded-host", "a.example, b.example")],
        Forwarded(("1.2.3.4", 0), "http", b"a.example", ("a.example", 80)),
    ),
    ("xfh-garbage", [("x-forwarded-host", "exa mple.com")], same()),
    ("xfh-bad-port", [("x-forwarded-host", "example.com:99999")], same()),
    ("xfh-empty-port", [("x-forwarded-host", "example.com:")], same()),
    ("xfh-bad-ipv6", [("x-forwarded-host", "[::g]")], same()),
    ("xfh-control-char", [("x-forwarded-host", "example.com\x00")], same()),
    (
        "xfport-alone-uses-host",
        [
            ("host", "example.com:8000"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-proto", "https"),
        ],
        Forwarded(PEER, "https", b"example.com", ("example.com", 443)),
    ),
    ("xfport-alone-no-host", [("x-forwarded-port", "8080")], same()),
    ("xfport-garbage", [("host", "example.com"), ("x-forwarded-port", "80a")], same()),
    # --- RFC 7239 Forwarded -----------------------------------------------------------
    ("fwd-simple", [("forwarded", "for=1.2.3.4")], same(("1.2.3.4", 0))),
    (
        "fwd-forged-leftmost",
        [("forwarded", 'for=6.6.6.6;proto=https;host=evil.example, for="1.2.3.4"')],
        same(("1.2.3.4", 0)),
    ),
    (
        "fwd-chain-with-params",
        [
            (
                "forwarded",
                "for=6.6.6.6, For=1.2.3.4;Proto=HTTPS;host=example.com;by=10.0.0.2, "
                "for=10.0.0.2;proto=http",
            )
        ],
        Forwarded(("1.2.3.4", 0), "https", b"example.com", ("example.com", 443)),
    ),
    (
        "fwd-quoted-ipv6-port",
        [("forwarded", 'for="[2001:db8:cafe::17]:4711"')],
        same(("2001:db8:cafe::17", 4711)),
    ),
    ("fwd-ipv6-unquoted", [("forwarded", "for=[2001:db8::1]")], same()),
    ("fwd-ipv6-unbracketed", [("forwarded", 'for="2001:db8::1"')], same()),
    ("fwd-unknown", [("forwarded", "for=unknown;proto=https")], same(None, "https")),
    ("fwd-obfuscated", [("forwarded", 'for="_hidden", for=10.0.0.2')], same(None)),
    (
        "fwd-obfuscated-port",
        [("forwarded", 'for="1.2.3.4:_p1"')],
        same(("1.2.3.4", 0)),
    ),
    ("fwd-escaped-quote", [("forwarded", r'for="1.2.3.\4"')], same(("1.2.3.4", 0))),
    ("fwd-without-for", [("forwarded", "proto=https")], same(scheme="https")),
    (
        "fwd-host-with-port",
        [("forwarded", 'for=1.2.3.4;host="example.com:8443"')],
        Forwarded(("1.2.3.4", 0), "http", b"example.com:8443", ("example.com", 8443)),
    ),
    ("fwd-empty-elements", [("forwarded", ", for=1.2.3.4 ,, ")], same(("1.2.3.4", 0))),
    (
        "fwd-ows-around-semicolon",
        [("forwarded", "for=1.2.3.4 ; proto=https")],
        same(("1.2.3.4", 0), "https"),
    ),
    (
        "fwd-multiple-lines",
        [("forwarded", "for=6.6.6.6"), ("forwarded", "for=1.2.3.4;proto=https")],
        same(("1.2.3.4", 0), "https"),
    ),
    ("fwd-syntax-error", [("forwarded", "for=1.2.3.4;proto")], same()),
    ("fwd-unclosed-quote", [("forwarded", 'for="6.6.6.6, for=1.2.3.4')], same()),
    ("fwd-duplicate-param", [("forwarded", "for=1.2.3.4;for=5.6.7.8")], same()),
    (
        "fwd-garbage-left-of-stop",
        [("forwarded", 'for="bogus", for=1.2.3.4')],
        same(("1.2.3.4", 0)),
    ),
    ("fwd-garbage-at-stop", [("forwarded", 'for=1.2.3.4, for="bogus"')], same()),
    ("fwd-non-ascii-quoted", [("forwarded", 'for="\xe9", for=1.2.3.4')], same(("1.2.3.4", 0))),
    ("fwd-control-char", [("forwarded", "for=1.2.3.4\x01")], same()),
    ("fwd-empty", [("forwarded", "")], same()),
    (
        "fwd-without-for-in-chain",
        [("forwarded", "for=6.6.6.6, proto=https")],
        same(PEER, "https"),
    ),
    # Too long to parse: the client is unknown, never the proxy itself.
    ("fwd-too-many-elements", [("forwarded", ", ".join(["for=1.2.3.4"] * 101))], same(None)),
    ("fwd-too-long", [("forwarded", "for=1.2.3.4;x=" + "y" * 8200)], same(None)),
    # --- Forwarded and X-Forwarded-* together -----------------------------------------
    (
        "mixed-agree-on-everything",
        [
            ("forwarded", "for=1.2.3.4;proto=https;host=a.example"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "a.example"),
        ],
        Forwarded(("1.2.3.4", 0), "https", b"a.example", ("a.example", 443)),
    ),
    (
        "mixed-agree",
        [
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
        ],
        same(("1.2.3.4", 0), "https"),
    ),
    (
        "mixed-agree-on-client-only",
        [
            ("forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
        same(("1.2.3.4", 0)),
    ),
    (
        "mixed-disagree",
        [("forwarded", "for=1.2.3.4;proto=https"), ("x-forwarded-for", "6.6.6.6")],
        same(None),
    ),
    (
        "mixed-forged-xfp-next-to-forwarded",
        [("forwarded", "for=1.2.3.4"), ("x-forwarded-proto", "https")],
        same(None),
    ),
    (
        "mixed-forged-forwarded-broken-xff-ok",
        [("forwarded", 'for="oops'), ("x-forwarded-for", "1.2.3.4")],
        same(None),
    ),
    (
        "mixed-xff-unusable",
        [("forwarded", "for=1.2.3.4"), ("x-forwarded-for", "garbage")],
        same(None),
    ),
]


@pytest.mark.parametrize(("headers", "expected"), [pytest.param(h, e, id=i) for i, h, e in CASES])
def test_spoofing_table(headers: list[tuple[str, str]], expected: Forwarded) -> None:
    # UTF-8, so that the table can hold non-ASCII bytes too (a peer may send any).
    raw = [(name.encode(), value.encode()) for name, value in headers]
    assert resolve(raw, PEER, "http", TRUSTED) == expected


def test_no_forwarding_header_is_none() -> None:
    headers = [(b"host", b"example.com"), (b"x-forwarded", b"1.2.3.4"), (b"accept", b"*/*")]
    assert resolve(headers, PEER, "http", TRUSTED) is None
    assert resolve([], None, "https", TRUSTED) is None


def test_connection_scheme_kept() -> None:
    headers = [(b"x-forwarded-for", b"1.2.3.4")]
    assert resolve(headers, PEER, "https", TRUSTED) == same(("1.2.3.4", 0), "https")
    headers = [(b"x-forwarded-host", b"example.com")]
    expected = Forwarded(PEER, "https", b"example.com", ("example.com", 443))
    assert resolve(headers, PEER, "https", TRUSTED) == expected


def test_trust_everyone_takes_leftmost() -> None:
    everyone = TrustedPeers(["*"])
    headers = [(b"x-forwarded-for", b"6.6.6.6, 1.2.3.4, 10.0.0.2")]
    assert resolve(headers, PEER, "http", everyone) == same(("6.6.6.6", 0))
    headers = [(b"forwarded", b"for=6.6.6.6;proto=https, for=1.2.3.4")]
    assert resolve(headers, PEER, "http", everyone) == same(("6.6.6.6", 0), "https")


def test_trust_nobody_but_the_peer() -> None:
    # The caller checked the peer; with no address trusted the rightmost entry wins.
    nobody = TrustedPeers([])
    headers = [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.2")]
    assert resolve(headers, PEER, "http", nobody) == same(("10.0.0.2", 0))


def test_unknown_peer_without_for() -> None:
    headers = [(b"forwarded", b"proto=https")]
    assert resolve(headers, None, "http", TRUSTED) == same(None, "https")


@pytest.mark.parametrize(
    ("entries", "address", "trusted"),
    [
        (["127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.1"], "127.0.0.2", False),
        (["10.0.0.0/8"], "10.255.1.2", True),
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["10.0.0.0/8"], "::ffff:10.1.2.3", True),
        (["::1"], "::1", True),
        (["::1"], "0:0:0:0:0:0:0:1", True),
        (["2001:db8::/32"], "2001:db8:1::5", True),
        (["2001:db8::/32"], "2001:db9::5", False),
        (["10.0.0.0/8", "2001:db8::/32"], "2001:db8::1", True),
        (["unix"], "127.0.0.1", False),
        (["*"], "127.0.0.1", True),
        (["*"], "not an address", True),
        (["10.0.0.0/8"], "not an address", False),
        (["10.0.0.0/8"], "", False),
        (["10.0.0.0/8"], "10.0.0.1:80", False),
        ([], "127.0.0.1", False),
    ],
)
def test_trusts_address(entries: list[str], address: str, trusted: bool) -> None:
    assert TrustedPeers(entries).trusts_address(address) is trusted


def test_trusts_peer() -> None:
    ips = TrustedPeers(["10.0.0.0/8"])
    assert ips.trusts_peer(("10.0.0.1", 1234), unix=False)
    assert not ips.trusts_peer(("1.2.3.4", 1234), unix=False)
    assert not ips.trusts_peer(None, unix=True)
    assert not ips.trusts_peer(None, unix=False)
    unix = TrustedPeers(["unix"])
    assert unix.trusts_peer(None, unix=True)
    assert not unix.trusts_peer(("127.0.0.1", 1), unix=False)
    everyone = TrustedPeers([" * "])
    assert everyone.trusts_peer(None, unix=False)
    assert everyone.trusts_peer(None, unix=True)
    assert everyone.trusts_peer(("1.2.3.4", 1), unix=False)


def test_trusted_peers_value() -> None:
    peers = TrustedPeers([" 127.0.0.1 ", "", "10.0.0.0/8", "UNIX", "::1", "127.0.0.1"])
    assert repr(peers) == "TrustedPeers(['127.0.0.1', '10.0.0.0/8', '::1', 'unix'])"
    assert peers == TrustedPeers(["unix", "::1/128", "10.0.0.0/8", "127.0.0.1/32"])
    assert hash(peers) == hash(TrustedPeers(["unix", "::1", "10.0.0.0/8", "127.0.0.1"]))
    assert peers != TrustedPeers(["127.0.0.1"])
    assert peers != "127.0.0.1"
    assert repr(TrustedPeers(["*"])) == "TrustedPeers(['*'])"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.0.300", "'10.0.0.300' is not an IP address, a CIDR range, 'unix' or '*'"),
        ("localhost", "'localhost' is not an IP address"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IP address"),
        ("fe80::1%eth0", "'fe80::1%eth0' is not an IP address"),
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)"),
        ("1.2.3.4, 5.6.7.8", "'1.2.3.4, 5.6.7.8' is not an IP address"),
    ],
)
def test_trusted_peers_errors(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^forwarded_allow_ips: ") as info:
        TrustedPeers(["127.0.0.1", entry])
    assert message in str(info.value)


def test_trusted_peers_type_error() -> None:
    with pytest.raises(TypeError, match="forwarded_allow_ips"):
        TrustedPeers([b"127.0.0.1"])  # type: ignore[list-item]  # the error under test


NAMES = [b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"]
NAMES += [b"x-forwarded-port", b"host"]
VALUE_ALPHABET = st.sampled_from(list(b'0123456789abcdef:.[]_,;="\\ \tfor=proto=host=unknown'))
VALUES = st.one_of(
    st.binary(max_size=200),
    st.lists(VALUE_ALPHABET, max_size=80).map(bytes),
)


@given(
    st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=6),
    st.sampled_from(["http", "https"]),
    st.sampled_from([TRUSTED, TrustedPeers(["*"]), TrustedPeers([])]),
)
@example([(b"forwarded", b'for="\\'), (b"x-forwarded-for", b"[")], "http", TRUSTED)
@example([(b"x-forwarded-for", b"\xff" * 10_000 + b"," * 500)], "http", TRUSTED)
def test_resolve_never_raises(
    headers: list[tuple[bytes, bytes]], scheme: str, trusted: TrustedPeers
) -> None:
    result = resolve(headers, PEER, scheme, trusted)
    assert result is not None or not any(name != b"host" for name, _ in headers)
    if result is not None:
        assert result.scheme in ("http", "https")
        assert result.host is None or result.host.isascii()
