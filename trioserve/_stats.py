"""Counters a server keeps, and the frozen snapshot ``Server.statistics()`` returns.

Rules for this module:
1. Connection tasks only increment counters on the ``Counters`` object they were
   given; nothing reads them on the hot path.
2. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

from dataclasses import dataclass

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


class Counters:
    """The mutable counters behind :class:`ServerStatistics` (one per server)."""

    __slots__ = (
        "bad_requests",
        "bodies_too_large",
        "body_timeouts",
        "client_disconnects",
        "connections_aborted",
        "connections_evicted",
        "connections_open",
        "connections_total",
        "handler_errors",
        "header_timeouts",
        "headers_too_large",
        "keep_alive_timeouts",
        "requests_served",
        "responses_1xx",
        "responses_2xx",
        "responses_3xx",
        "responses_4xx",
        "responses_5xx",
        "shutdown_cutoffs",
        "targets_too_long",
        "write_timeouts",
    )

    def __init__(self) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.requests_served = 0
        self.responses_1xx = 0
        self.responses_2xx = 0
        self.responses_3xx = 0
        self.responses_4xx = 0
        self.responses_5xx = 0
        self.header_timeouts = 0
        self.body_timeouts = 0
        self.write_timeouts = 0
        self.keep_alive_timeouts = 0
        self.bad_requests = 0
        self.bodies_too_large = 0
        self.targets_too_long = 0
        self.headers_too_large = 0
        self.handler_errors = 0
        self.client_disconnects = 0
        self.connections_evicted = 0
        self.connections_aborted = 0
        self.shutdown_cutoffs = 0

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
        return ServerStatistics(
            connections_idle=connections_idle,
            connections_open=self.connections_open,
            connections_total=self.connections_total,
            requests_served=self.requests_served,
            responses_1xx=self.responses_1xx,
            responses_2xx=self.responses_2xx,
            responses_3xx=self.responses_3xx,
            responses_4xx=self.responses_4xx,
            responses_5xx=self.responses_5xx,
            header_timeouts=self.header_timeouts,
            body_timeouts=self.body_timeouts,
            write_timeouts=self.write_timeouts,
            keep_alive_timeouts=self.keep_alive_timeouts,
            bad_requests=self.bad_requests,
            bodies_too_large=self.bodies_too_large,
            targets_too_long=self.targets_too_long,
            headers_too_large=self.headers_too_large,
            handler_errors=self.handler_errors,
            client_disconnects=self.client_disconnects,
            connections_evicted=self.connections_evicted,
            connections_aborted=self.connections_aborted,
            shutdown_cutoffs=self.shutdown_cutoffs,
        )
