"""Counters a server keeps, and the frozen snapshot ``Server.statistics()`` returns.

Rules for this module:
1. Connection tasks only increment counters on the ``Counters`` object they were
   given; nothing reads them on the hot path.
2. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

__all__ = ["Counters", "ServerStatistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStatistics:
    """A snapshot of a server's counters, from :meth:`trioserve.Server.statistics`.

    Attributes:
        connections_open: connections being served now.
        connections_idle: of those, how many wait between requests (or for a first one).
        connections_total: connections accepted (or handed in) since start.
        requests_served: responses completed.
        responses_1xx ... responses_5xx: responses sent, by status class (1xx counts
            ``100 Continue``).
        header_timeouts: 408s for a request head that came too slowly, and quiet
            closes of connections that sent no byte within ``header_timeout``.
        body_timeouts: 408s (or aborts) for a body that came too slowly.
        write_timeouts: connections aborted because the client did not read.
        keep_alive_timeouts: idle connections closed at ``keep_alive_timeout``.
        bad_requests: 400 (and other 4xx/5xx refusals of malformed requests).
        bodies_too_large: 413s.
        targets_too_long: 414s.
        headers_too_large: 431s.
        handler_errors: handlers that raised (500, or an abort mid-response).
        client_disconnects: clients that went away mid-exchange.
        connections_evicted: idle connections closed to make room at
            ``max_connections``.
        connections_aborted: connections cut off (write timeout, handler failure
            mid-response, client gone).
        shutdown_cutoffs: connections cancelled at ``Config.shutdown_timeout`` (or by
            a forced shutdown).
        handshake_timeouts: TLS connections closed at ``Config.handshake_timeout``.
        handshake_failures: TLS handshakes that failed: plain HTTP on the TLS port
            (answered with 400), garbage, no common version or cipher, a refused
            client certificate, or a client that left mid-handshake.
        proxy_header_errors: connections from trusted peers closed because their
            PROXY protocol header was missing, malformed or too slow.
    """

    connections_open: int = 0
    connections_idle: int = 0
    connections_total: int = 0
    requests_served: int = 0
    responses_1xx: int = 0
    responses_2xx: int = 0
    responses_3xx: int = 0
    responses_4xx: int = 0
    responses_5xx: int = 0
    header_timeouts: int = 0
    body_timeouts: int = 0
    write_timeouts: int = 0
    keep_alive_timeouts: int = 0
    bad_requests: int = 0
    bodies_too_large: int = 0
    targets_too_long: int = 0
    headers_too_large: int = 0
    handler_errors: int = 0
    client_disconnects: int = 0
    connections_evicted: int = 0
    connections_aborted: int = 0
    shutdown_cutoffs: int = 0
    handshake_timeouts: int = 0
    handshake_failures: int = 0
    proxy_header_errors: int = 0


#: The counters: every field of the snapshot but ``connections_idle``, which the
#: connection tracker knows (the connections waiting for a request now).
COUNTER_NAMES: Final = tuple(
    field.name for field in fields(ServerStatistics) if field.name != "connections_idle"
)


class Counters:
    """The mutable counters behind :class:`ServerStatistics` (one per server).

    Each counter is named once, as a field of :class:`ServerStatistics`; here they
    are slots made from those names (as fast to increment as any attribute).
    """

    __slots__ = COUNTER_NAMES

    if TYPE_CHECKING:  # the slots are made from names: tell the type checker they hold ints

        def __getattr__(self, name: str) -> int: ...
        def __setattr__(self, name: str, value: int) -> None: ...

    def __init__(self) -> None:
        for name in COUNTER_NAMES:
            setattr(self, name, 0)

    def count_response(self, status: int) -> None:
        if status < 200:
            self.responses_1xx += 1
        elif status < 300:
            self.responses_2xx += 1
        elif status < 400:
            self.responses_3xx += 1
        elif status < 500:
            self.responses_4xx += 1
        else:
            self.responses_5xx += 1

    def count_refusal(self, status: int) -> None:
        """Count a request refused with ``status`` (a 4xx/5xx the server chose)."""
        if status == 408:
            self.header_timeouts += 1
        elif status == 413:
            self.bodies_too_large += 1
        elif status == 414:
            self.targets_too_long += 1
        elif status == 431:
            self.headers_too_large += 1
        else:
            self.bad_requests += 1

    def snapshot(self, *, connections_idle: int) -> ServerStatistics:
        counts = {name: getattr(self, name) for name in COUNTER_NAMES}
        return ServerStatistics(connections_idle=connections_idle, **counts)
