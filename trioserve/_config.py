"""Config: every deadline and limit of the server, validated and frozen.

Rules for this module:
1. Every number the server acts on lives here, with its unit, its default, the attack it
   stops and the peer precedent for the default. Seconds are ``float``; "no limit" is
   ``math.inf``, never ``None``.
2. A Config is checked when it is built: a wrong type raises ``TypeError``, a value out
   of range raises ``ValueError``, naming the field. Nothing downstream re-validates.
3. This module imports nothing from the rest of trioserve but ``_forwarded``'s
   parser of trusted addresses (a leaf), so a bad address fails when the Config is
   built.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

from ._forwarded import TrustedPeers

__all__ = ["Config", "HTTPEngineName"]

#: ``Config.http``: the build of h11 to run (``_engines`` loads it).
HTTPEngineName = Literal["auto", "h11", "h11-mypyc"]

_KiB = 1024
_MiB = 1024 * _KiB


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Every deadline and limit of a trioserve server, in one frozen value.

    Build one with keyword arguments and pass it to :func:`trioserve.serve` or
    :class:`trioserve.Server`; use :meth:`replace` to derive a variant::

        config = trioserve.Config(keep_alive_timeout=2.0, max_body_size=1024 * 1024)
        strict = config.replace(header_timeout=5.0)

    Times are seconds (``float``) and sizes are bytes; ``math.inf`` means "no limit".
    README.md's "Deadlines and limits" table explains what each one defends against.

    Raises:
        TypeError: a field has the wrong type (for example a string, or a bool).
        ValueError: a field is out of range (negative, zero where that makes no sense,
            NaN, or a size that is not a whole number).
    """

    # --- Deadlines -------------------------------------------------------------------

    #: Idle time allowed between two requests on a kept-alive connection; then the
    #: connection is closed quietly. Stops idle connections from pinning sockets and
    #: memory. 5 s as uvicorn and hypercorn (nginx: 75 s, Apache: 5 s).
    keep_alive_timeout: float = 5.0

    #: Time allowed to receive a whole request head (request line and headers),
    #: counted from accept for a connection's first request and from the first byte of
    #: each later one. Never reset by progress, so a slowloris client trickling one
    #: byte a second is cut off with 408 at this deadline. A connection that has sent
    #: no byte at all by then is closed quietly instead (no one may be there to read a
    #: 408). 10 s (nginx client_header_timeout: 60 s; Apache mod_reqtimeout: 20-40 s;
    #: uvicorn and hypercorn have none).
    header_timeout: float = 10.0

    #: Time allowed without any body byte arriving while the request body is read;
    #: then 408 and close. Stops a client that starts a body and stalls.
    #: 30 s (nginx client_body_timeout: 60 s; Apache: 20 s; uvicorn, hypercorn: none).
    body_timeout: float = 30.0

    #: Minimum average body rate, bytes per second of time spent waiting for the
    #: body, enforced once ``body_rate_grace`` seconds of waiting have passed. Stops a
    #: client that drips a body just fast enough to beat ``body_timeout``.
    #: 1 KiB/s: 1 byte/s fails after the grace, a 64 KiB/s upload of 100 MB passes.
    #: Precedent: Apache mod_reqtimeout ``body=20,MinRate=500``.
    body_min_rate: float = 1024.0

    #: Seconds of waiting for the body before ``body_min_rate`` applies.
    body_rate_grace: float = 10.0

    #: Time allowed for a write to make progress (the client does not read its
    #: response): each write of up to 256 KiB must complete within it. Then the
    #: connection is aborted and the handler's streamed body closed. Stops a client
    #: from pinning a response buffer and a task forever. 30 s (nginx send_timeout:
    #: 60 s between two writes; uvicorn and hypercorn: none).
    write_timeout: float = 30.0

    #: Time allowed for a TLS handshake, counted from accept: a client that opens a
    #: connection and stalls mid-handshake is closed quietly at this deadline (and
    #: counted in ``statistics().handshake_timeouts``). 10 s, as ``header_timeout``
    #: which it precedes (nginx applies client_header_timeout, 60 s, to the handshake;
    #: Go's net/http counts it in ReadHeaderTimeout; uvicorn and hypercorn: none).
    handshake_timeout: float = 10.0

    #: On graceful shutdown, how long requests in flight may run before they are
    #: cancelled and their connections aborted. 30 s as gunicorn's graceful_timeout and
    #: Kubernetes' default termination grace period (hypercorn: 60 s; uvicorn: none).
    shutdown_timeout: float = 30.0

    # --- Limits ----------------------------------------------------------------------

    #: Largest request head (request line and headers) in bytes; larger gets 431
    #: (414 when the request line alone is too long). Passed to h11 as
    #: ``max_incomplete_event_size``. 16 KiB as h11, hypercorn and uvicorn.
    max_header_size: float = 16 * _KiB

    #: Longest request target in bytes; longer gets 414. 8 KiB (nginx
    #: large_client_header_buffers: 8 KiB; Apache LimitRequestLine: 8190).
    max_target_length: float = 8 * _KiB

    #: Most header fields in one request; more gets 431. 100 as Apache's
    #: LimitRequestFields and Node.js' maxHeadersCount.
    max_header_count: float = 100

    #: Largest request body in bytes. A declared Content-Length over it gets 413 before
    #: a byte of body is read (and before any 100 Continue); a chunked body gets 413 as
    #: soon as it crosses it. 100 MiB (nginx: 1 MiB; Django's upload handling streams).
    max_body_size: float = 100 * _MiB

    #: After a response, unread request body up to this many bytes is read and thrown
    #: away so the connection can be kept alive; a larger (or chunked) unread body
    #: closes the connection instead. 64 KiB (h11's example server drains likewise).
    max_drain_size: float = 64 * _KiB

    #: Most connections open at once. At the cap the longest-idle connection is closed
    #: to make room; when none is idle, accepting pauses and the kernel backlog holds
    #: new clients. 10 000 (hypercorn, uvicorn: unlimited; nginx worker_connections:
    #: 512 per worker).
    max_connections: float = 10_000

    #: Requests served on one connection before it is closed (``Connection: close`` on
    #: the last). No limit by default, as uvicorn's ``--limit-max-requests`` is per
    #: process; nginx keepalive_requests: 1000.
    max_requests_per_connection: float = math.inf

    #: Listen backlog passed to ``listen()`` (the kernel caps it at somaxconn).
    #: 2048 as uvicorn (hypercorn: 100).
    backlog: int = 2048

    # --- WebSocket ----------------------------------------------------------------------

    #: Largest WebSocket message in bytes, counted on the assembled message (all its
    #: fragments) after decompression; a larger one closes the connection with 1009
    #: before more than this much is held. Stops a peer from filling memory with one
    #: endless message, or with a small compressed one that inflates without bound (a
    #: deflate bomb). 16 MiB as uvicorn's --ws-max-size (websockets: 1 MiB).
    ws_max_size: float = 16 * _MiB

    #: Time between keepalive pings on an idle or busy WebSocket; ``math.inf`` sends
    #: none. With ``ws_ping_timeout`` it finds peers that vanished without a close
    #: (a dropped network, a sleeping laptop), so dead connections do not pile up.
    #: 20 s as uvicorn and websockets.
    ws_ping_interval: float = 20.0

    #: Time allowed for the pong that answers a keepalive ping; then the connection is
    #: closed with 1011 and aborted. 20 s as uvicorn and websockets.
    ws_ping_timeout: float = 20.0

    #: Time allowed for the peer's close frame once ours is sent (the closing
    #: handshake); then the connection is closed all the same. Stops a peer that never
    #: answers a close from holding the connection open. 10 s as websockets'
    #: close_timeout (uvicorn: none of its own).
    ws_close_timeout: float = 10.0

    #: Offer permessage-deflate (RFC 7692) to WebSocket clients that ask for it.
    #: Compression costs CPU and about 300 KiB of zlib state per connection; the
    #: decompressed size of every message is bounded by ``ws_max_size``. On, as uvicorn.
    ws_per_message_deflate: bool = True

    # --- Engine ------------------------------------------------------------------------

    #: The HTTP/1.1 engine: ``"h11"``, the pure-Python h11; ``"h11-mypyc"``, the same
    #: h11 source compiled with mypyc (2.2x faster at parsing and writing HTTP;
    #: ``pip install 'trioserve[fast]'``); ``"auto"``, h11-mypyc when installed, else
    #: h11. Both get the same strict checks. Chosen when the server starts (a server
    #: asking for h11-mypyc where it is not installed fails then, with ImportError).
    #: Precedent: uvicorn's ``--http auto|h11|httptools``.
    http: HTTPEngineName = "auto"

    # --- Identity ----------------------------------------------------------------------

    #: Value of the ``Server`` header on every response; ``None`` leaves it out.
    server_header: str | None = "trioserve"

    # --- Proxies -----------------------------------------------------------------------

    #: Believe ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` and RFC 7239
    #: ``Forwarded`` from trusted peers (``forwarded_allow_ips``): they set the client
    #: address, scheme and host that handlers see. On by default, as uvicorn; from an
    #: untrusted peer these headers change nothing.
    proxy_headers: bool = True

    #: The peers trusted to say who the client is: IP addresses, CIDR ranges
    #: (``"10.0.0.0/8"``), ``"unix"`` for peers on a Unix socket, ``"*"`` for every
    #: peer. ``("127.0.0.1",)`` as uvicorn and gunicorn.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1",)

    #: Expect a PROXY protocol header (v1 or v2, as HAProxy and cloud load balancers
    #: send it) before anything else on connections from trusted peers, read under
    #: ``header_timeout``: it replaces the connection's client and server addresses. A
    #: trusted peer that sends none is closed. Off by default.
    proxy_protocol: bool = False

    def __post_init__(self) -> None:
        for name in _SECONDS:
            _check_number(name, getattr(self, name), allow_zero=False)
        _check_number("body_min_rate", self.body_min_rate, allow_zero=True)
        if self.body_min_rate == math.inf:
            raise ValueError("body_min_rate must be finite (use 0 for no minimum rate)")
        for name in _SIZES:
            value = getattr(self, name)
            _check_number(name, value, allow_zero=name == "max_drain_size")
            if value != math.inf and value != int(value):
                raise ValueError(f"{name} must be a whole number or math.inf, not {value!r}")
        if type(self.backlog) is not int:
            raise TypeError(f"backlog must be an int, not {type(self.backlog).__name__}")
        if self.backlog < 1:
            raise ValueError(f"backlog must be at least 1, not {self.backlog!r}")
        for name in ("proxy_headers", "proxy_protocol", "ws_per_message_deflate"):
            if type(getattr(self, name)) is not bool:
                raise TypeError(f"{name} must be a bool, not {type(getattr(self, name)).__name__}")
        allowed = self.forwarded_allow_ips
        if not isinstance(allowed, tuple) or not all(isinstance(e, str) for e in allowed):
            raise TypeError("forwarded_allow_ips must be a tuple of str")
        TrustedPeers(allowed)  # raises ValueError naming a bad entry
        if not isinstance(self.http, str):
            raise TypeError(f"http must be a str, not {type(self.http).__name__}")
        if self.http not in typing.get_args(HTTPEngineName):
            names = ", ".join(repr(name) for name in typing.get_args(HTTPEngineName))
            raise ValueError(f"http must be one of {names}, not {self.http!r}")
        if self.server_header is not None:
            if not isinstance(self.server_header, str):
                raise TypeError("server_header must be a str or None")
            if not self.server_header.isprintable() or not self.server_header.isascii():
                raise ValueError("server_header must be printable ASCII")

    def replace(self, **changes: float | str | bool | tuple[str, ...] | None) -> Config:
        """Return a copy with the given fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # checked by __post_init__


_SECONDS = (
    "keep_alive_timeout",
    "header_timeout",
    "body_timeout",
    "body_rate_grace",
    "write_timeout",
    "handshake_timeout",
    "shutdown_timeout",
    "ws_ping_interval",
    "ws_ping_timeout",
    "ws_close_timeout",
)
_SIZES = (
    "max_header_size",
    "max_target_length",
    "max_header_count",
    "max_body_size",
    "max_drain_size",
    "max_connections",
    "max_requests_per_connection",
    "ws_max_size",
)


def _check_number(name: str, value: object, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{name} must be {bound} (math.inf for no limit), not {value!r}")
