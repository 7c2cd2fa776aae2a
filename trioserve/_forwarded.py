"""Forwarded headers: what a trusted reverse proxy says about the client it forwarded.

Rules for this module:
1. Pure functions over header bytes: no I/O, no trio, only the standard library.
2. Nothing a client can forge may win. Lists are walked right to left (each proxy
   appends), entries from trusted proxies are skipped, and the first untrusted entry is
   the client: never the leftmost because it is leftmost.
3. A malformed header never raises: it changes nothing. ``resolve`` returns a value
   for any bytes at all.
4. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Forwarded", "TrustedPeers", "resolve"]

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = tuple[_IPAddress, int]  # a parsed node: address and port (0 if none given)

#: A forwarding header (all its lines combined) with more list entries or characters
#: than these is ignored, so a hostile value costs a ``len`` and a ``count`` before any
#: parsing. 100 entries as Config.max_header_count (Apache's LimitRequestFields), 8 KiB
#: as nginx's large_client_header_buffers; real proxy chains are a handful of hops.
_MAX_ENTRIES = 100
_MAX_LENGTH = 8 * 1024

#: Addresses whose trust is remembered (then forgotten all at once).
_KNOWN_ADDRESSES = 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
_X_NAMES = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")
_NAMES = frozenset((b"forwarded", *_X_NAMES))

# Character checks run before ipaddress so that it never sees text such as scope ids
# ("fe80::1%eth0"), which it accepts, or non-ASCII digits.
_IPV4 = re.compile(r"[0-9.]{7,15}")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 3986 3.2.2 host (reg-name, IPv4 or [IPv6]) and optional port, less the comma:
# a comma separates list entries in X-Forwarded-Host.
_HOST = re.compile(
    r"(?:\[([0-9A-Fa-f:.]{2,45})\]|((?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+))"
    r"(?::([0-9]{1,5}))?"
)
# RFC 7239 4: forwarded-pair = token "=" value, value = token / quoted-string (RFC 9110
# 5.6.2, 5.6.4), decoded as ISO-8859-1 so obs-text is \x80-\xff. Optional whitespace
# around ";" is tolerated (proxies write "for=a; proto=https").
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_PAIR = re.compile(
    rf"[ \t]*({_TCHAR}+)=(?:({_TCHAR}+)|"
    r'"((?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*)")[ \t]*'
)
_SEPARATOR = re.compile(r"[ \t]*([,;]|\Z)")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")


class _Node(enum.Enum):
    UNKNOWN = "unknown"  # RFC 7239 6.2 "unknown" or 6.3 an obfuscated "_identifier"
    # An element without for= says nothing about the client: the socket peer stays the
    # client, as when a proxy sends only X-Forwarded-Proto.
    UNSAID = "unsaid"
    INVALID = "invalid"


class TrustedPeers:
    """Parsed ``--forwarded-allow-ips``: the proxies whose forwarding headers we believe.

    Entries are IP addresses, CIDR ranges (IPv4 and IPv6), ``"unix"`` (peers on a Unix
    socket) or ``"*"`` (everyone)::

        trusted = TrustedPeers(["127.0.0.1", "10.0.0.0/8", "unix"])
        assert trusted.trusts_address("10.1.2.3")
        assert trusted.trusts_peer(None, unix=True)

    An IPv4-mapped IPv6 address (``::ffff:10.1.2.3``, as a dual-stack socket reports an
    IPv4 peer) is matched as its IPv4 address as well.

    Raises:
        TypeError: an entry is not a ``str``.
        ValueError: an entry is none of the above; the message names it.
    """

    __slots__ = ("_everyone", "_known", "_networks", "_unix")

    def __init__(self, entries: Iterable[str]) -> None:
        networks: list[_IPNetwork] = []
        self._everyone = self._unix = False
        for raw in entries:
            if not isinstance(raw, str):
                raise TypeError(f"forwarded_allow_ips: {raw!r} is not a str")
            entry = raw.strip()
            if entry == "*":
                self._everyone = True
            elif entry.lower() == "unix":
                self._unix = True
            elif entry:
                networks.append(_parse_network(entry))
        self._networks = tuple(dict.fromkeys(networks))
        # Addresses already judged: a server sees the same few proxies again and again,
        # and parsing one costs more than the rest of a connection's setup.
        self._known: dict[str, bool] = {}

    def trusts_peer(self, client: tuple[str, int] | None, *, unix: bool) -> bool:
        """Whether the socket peer is a trusted proxy.

        ``unix=True`` for a peer on a Unix socket (``client`` is ``None`` then). An
        unknown peer (``client`` is ``None``, for example an in-memory stream) is
        trusted only by ``"*"``.
        """
        if self._everyone:
            return True
        if unix:
            return self._unix
        return client is not None and self.trusts_address(client[0])

    def trusts_address(self, host: str) -> bool:
        """Whether ``host``, IPv4 or IPv6 text, is a trusted proxy; other text only by ``"*"``."""
        if self._everyone:
            return True
        known = self._known.get(host)
        if known is None:
            address = _parse_ip(host, version=4) or _parse_ip(host, version=6)
            known = address is not None and self._trusts_ip(address)
            if len(self._known) >= _KNOWN_ADDRESSES:
                self._known.clear()  # many clients: keep it bounded
            self._known[host] = known
        return known

    def _trusts_ip(self, address: _IPAddress) -> bool:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return self._everyone or any(
            address in net or (mapped is not None and mapped in net) for net in self._networks
        )

    def _key(self) -> tuple[bool, bool, frozenset[_IPNetwork]]:
        return (self._everyone, self._unix, frozenset(self._networks))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrustedPeers):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        names = [
            str(n.network_address) if n.num_addresses == 1 else str(n) for n in self._networks
        ]
        names += ["unix"] * self._unix + ["*"] * self._everyone
        return f"TrustedPeers({names!r})"


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What a trusted proxy says it forwarded; see :func:`resolve`."""

    #: The client; port 0 when the header gave none; ``None`` when the proxy says the
    #: client is unknown or the headers are ambiguous.
    client: tuple[str, int] | None
    #: ``"http"`` or ``"https"``: the connection's scheme unless a header says otherwise.
    scheme: str
    #: The new Host header value (``b"example.com:8443"``); ``None`` leaves Host as is.
    host: bytes | None
    #: ``(host, port)`` the client addressed, when a forwarded host or port was given.
    server: tuple[str, int] | None


def resolve(
    headers: Sequence[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    scheme: str,
    trusted: TrustedPeers,
) -> Forwarded | None:
    """Decide what a trusted proxy forwarded: client address, scheme and host.

    Call it only when ``trusted.trusts_peer(...)`` said the socket peer is a proxy of
    ours. Repeated header lines of one name are combined with commas (RFC 9110 5.3).

    Args:
        headers: the request's header lines, names lower-cased, values stripped.
        client: the socket peer.
        scheme: the connection's scheme, ``"http"`` or ``"https"``.
        trusted: which proxy addresses to skip when walking a list right to left.

    Returns:
        ``None`` when no ``Forwarded`` or ``X-Forwarded-*`` header is present (checked
        in one pass over the names); otherwise the resolved :class:`Forwarded`, equal
        to the connection's own values where the headers were malformed.

    Error handling:
        Never raises on any header bytes. A malformed header changes nothing.
    """
    for name, _ in headers:
        if name in _NAMES:
            break
    else:
        return None
    lines: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name in _NAMES or name == b"host":
            lines.setdefault(name, []).append(value)
    fields = {name: b",".join(values).decode("latin-1") for name, values in lines.items()}
    hosts = lines.get(b"host", [])
    host_header = hosts[0].decode("latin-1") if len(hosts) == 1 else None
    unchanged = Forwarded(client, scheme, None, None)

    rfc: Forwarded | None = unchanged
    forwarded = fields.get(b"forwarded")
    if forwarded is not None and (
        len(forwarded) > _MAX_LENGTH or forwarded.count(",") >= _MAX_ENTRIES
    ):
        # Too long to parse, and its quoting keeps us from reading only its right
        # end, where our proxy's element would be: the client is unknown (never the
        # proxy itself, which is what ignoring it would make it).
        return Forwarded(None, scheme, None, None)
    if b"forwarded" in fields:
        rfc = _from_forwarded(fields[b"forwarded"], client, scheme, trusted)
    if not any(name in fields for name in _X_NAMES):
        return rfc or unchanged
    legacy = _from_x_forwarded(fields, host_header, client, scheme, trusted)
    if b"forwarded" not in fields:
        return legacy or unchanged
    # Both Forwarded and X-Forwarded-* are present. Our proxy wrote one of them, the
    # client may have forged the other entirely (or broken ours: an unclosed quote
    # swallows what our proxy appended), and nothing says which is which. So a value
    # is believed only when both say the same; a malformed one agrees with nothing, and
    # when the clients differ the client is unknown and nothing else is believed.
    if rfc is None or legacy is None or rfc.client != legacy.client:
        return Forwarded(None, scheme, None, None)
    same_host = rfc.host == legacy.host and rfc.server == legacy.server
    return Forwarded(
        rfc.client,
        rfc.scheme if rfc.scheme == legacy.scheme else scheme,
        rfc.host if same_host else None,
        rfc.server if same_host else None,
    )


def _from_x_forwarded(
    fields: dict[bytes, str],
    host_header: str | None,
    client: tuple[str, int] | None,
    scheme: str,
    trusted: TrustedPeers,
) -> Forwarded | None:
    """X-Forwarded-For/-Proto/-Host/-Port; ``None`` when X-Forwarded-For is unusable."""
    index: int | None = None
    count = 0
    if b"x-forwarded-for" in fields:
        entries = _split(fields[b"x-forwarded-for"])
        walked = _walk(entries, trusted, rfc7239=False)
        if walked is None:
            return None
        index, count, client = walked[0], len(entries), _client(walked[1], client)

    def pick(name: bytes) -> str:
        # Several values: the one aligned with the chosen X-Forwarded-For entry when the
        # counts match (each proxy appended to both), else the rightmost, our proxy's.
        values = _split(fields.get(name, ""))
        if index is not None and len(values) == count:
            return values[index]
        return values[-1] if values else ""

    proto = pick(b"x-forwarded-proto").lower()
    if proto in _DEFAULT_PORTS:
        scheme = proto
    port = _parse_port(pick(b"x-forwarded-port"))
    host = _parse_host(pick(b"x-forwarded-host"))
    if host is not None:  # a port in the value wins over X-Forwarded-Port
        host = (host[0], host[1], host[2] or port)
    elif port is not None and host_header is not None:
        host = _parse_host(host_header)  # X-Forwarded-Port alone: Host's host, that port
        host = (host[0], host[1], port) if host is not None else None
    return _result(client, scheme, host)


def _from_forwarded(
    value: str, client: tuple[str, int] | None, scheme: str, trusted: TrustedPeers
) -> Forwarded | None:
    """RFC 7239 Forwarded; ``None`` when it is malformed or its chosen ``for=`` is."""
    elements = _parse_forwarded(value)
    if not elements:
        return None
    walked = _walk([e.get("for") for e in elements], trusted, rfc7239=True)
    if walked is None:
        return None
    chosen = elements[walked[0]]
    proto = chosen.get("proto", "").lower()
    if proto in _DEFAULT_PORTS:
        scheme = proto
    return _result(_client(walked[1], client), scheme, _parse_host(chosen.get("host", "")))


def _walk(
    entries: Sequence[str | None], trusted: TrustedPeers, *, rfc7239: bool
) -> tuple[int, _Address | _Node] | None:
    """Index and node of the client: the rightmost untrusted entry, else the leftmost.

    ``None`` when an entry at or right of that point is invalid: then we cannot tell
    where the proxies we trust end. Entries left of it are not even parsed.
    """
    node: _Address | _Node = _Node.INVALID
    for index in range(len(entries) - 1, -1, -1):
        text = entries[index]
        node = _Node.UNSAID if text is None else _parse_node(text, rfc7239=rfc7239)
        if node is _Node.INVALID:
            return None
        if isinstance(node, _Node) or not trusted._trusts_ip(node[0]):
            return index, node
    return (0, node) if entries else None  # every entry trusted: the leftmost


def _client(node: _Address | _Node, peer: tuple[str, int] | None) -> tuple[str, int] | None:
    if isinstance(node, tuple):
        return str(node[0]), node[1]
    return peer if node is _Node.UNSAID else None


def _result(
    client: tuple[str, int] | None, scheme: str, host: tuple[str, str, int | None] | None
) -> Forwarded:
    if host is None:
        return Forwarded(client, scheme, None, None)
    header, server_name, port = host
    default = _DEFAULT_PORTS.get(scheme, 80)
    if port is None:
        port = default
    value = header if port == default else f"{header}:{port}"
    return Forwarded(client, scheme, value.encode("ascii"), (server_name, port))


def _split(value: str) -> list[str]:
    """Comma-separated entries, stripped. Of a list too long, only the rightmost
    entries within the bounds: our proxies append on the right, and the client's
    part on the left is what gets cut, never the whole list (which would make the
    request look as if it came from the proxy itself)."""
    if len(value) <= _MAX_LENGTH and value.count(",") < _MAX_ENTRIES:
        return [entry.strip(" \t") for entry in value.split(",")]
    # The leftmost piece is cut mid-entry, or holds everything left of the rest.
    entries = value[-_MAX_LENGTH:].rsplit(",", _MAX_ENTRIES)[1:]
    return [entry.strip(" \t") for entry in entries]


def _parse_forwarded(value: str) -> list[dict[str, str]] | None:
    """RFC 7239 4 elements as ``{name: value}``; ``None`` on any syntax error."""
    if len(value) > _MAX_LENGTH or value.count(",") >= _MAX_ENTRIES:
        return None
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    position = 0
    while True:
        pair = _PAIR.match(value, position)
        if pair is not None:
            name = pair[1].lower()
            if name in pairs:  # RFC 7239 4: a parameter MUST NOT occur twice per element
                return None
            token, quoted = pair[2], pair[3]
            pairs[name] = token if token is not None else _QUOTED_PAIR.sub(r"\1", quoted)
            position = pair.end()
        separator = _SEPARATOR.match(value, position)
        if separator is None:
            return None
        position = separator.end()
        if separator[1] != ";":
            if pairs:  # empty list elements are ignored (RFC 9110 5.6.1)
                elements.append(pairs)
            pairs = {}
            if not separator[1]:
                return elements


def _parse_node(text: str, *, rfc7239: bool) -> _Address | _Node:
    """An address and port (0 if none) from X-Forwarded-For or RFC 7239 6 ``for=``.

    X-Forwarded-For also allows a bare IPv6 address; RFC 7239 requires brackets and
    allows ``unknown`` and ``_obfuscated`` names and ports.
    """
    name = ""
    port_text: str | None = None
    if text.startswith("["):
        address_text, bracket, rest = text[1:].partition("]")
        address = _parse_ip(address_text, version=6) if bracket else None
        if rest:
            if rest[0] != ":":
                return _Node.INVALID
            port_text = rest[1:]
    elif not rfc7239 and text.count(":") > 1:
        address = _parse_ip(text, version=6)
    else:
        name, colon, rest = text.partition(":")
        address = _parse_ip(name, version=4)
        port_text = rest if colon else None
    port = 0
    if port_text is not None:
        port = _parse_port(port_text) or 0
        if not port and not (rfc7239 and _OBFUSCATED.fullmatch(port_text)):
            return _Node.INVALID
    if address is not None:
        return address, port
    if rfc7239 and (name.lower() == "unknown" or _OBFUSCATED.fullmatch(name)):
        return _Node.UNKNOWN
    return _Node.INVALID


def _parse_host(text: str) -> tuple[str, str, int | None] | None:
    """RFC 3986 host[:port] as (Host header form, server form, port or None)."""
    match = _HOST.fullmatch(text) if len(text) <= _MAX_LENGTH else None
    if match is None:
        return None
    port_text = match[3]
    port = _parse_port(port_text) if port_text is not None else None
    if port_text is not None and port is None:
        return None
    if match[2] is not None:
        name = match[2].lower()
        return name, name, port
    address = _parse_ip(match[1], version=6)
    return (f"[{address}]", str(address), port) if address is not None else None


def _parse_ip(text: str, *, version: int) -> _IPAddress | None:
    try:
        if version == 4:
            return ipaddress.IPv4Address(text) if _IPV4.fullmatch(text) else None
        return ipaddress.IPv6Address(text) if _IPV6.fullmatch(text) else None
    except ValueError:
        return None


def _parse_port(text: str) -> int | None:
    port = int(text) if _PORT.fullmatch(text) else 0
    return port if 1 <= port <= 65535 else None


def _parse_network(entry: str) -> _IPNetwork:
    problem = f"forwarded_allow_ips: {entry!r} is not an IP address, a CIDR range, 'unix' or '*'"
    if "%" in entry:  # ipaddress accepts IPv6 scope ids; a peer address never has one
        raise ValueError(problem)
    try:
        return ipaddress.ip_network(entry)
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(problem) from None
    raise ValueError(
        f"forwarded_allow_ips: {entry!r} has host bits set (did you mean {str(network)!r}?)"
    )
