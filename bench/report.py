"""The Markdown report: medians, ratios to each peer and to the limit."""

from collections.abc import Callable, Sequence

from results import Results
from scenarios import WS_MESSAGES
from servers import (
    ECHO,
    ENGINES,
    FAST_ENGINE,
    IDLE,
    PURE_H11,
    SLOWLORIS,
    THROUGHPUT,
    WEBSOCKET,
    Engine,
    ServerSpec,
)

RAW_SERVER = "trio-raw"
MISSING = "—"

Cells = Callable[[str], list[str] | None]


def markdown(results: Results, servers: Sequence[ServerSpec], concurrencies: Sequence[int]) -> str:
    ran = set(results.meta.scenarios)

    def running(*scenarios: str) -> list[ServerSpec]:
        """The servers that ran any of ``scenarios`` (none if the run left them out)."""
        wanted = ran.intersection(scenarios)
        return [spec for spec in servers if spec.scenarios & wanted]

    load = running(THROUGHPUT, ECHO)
    sections = [_header(results, running(*ran))]
    if THROUGHPUT in ran:
        sections += [
            _throughput(results, running(THROUGHPUT), concurrencies),
            _limit_ratios(results, running(THROUGHPUT), concurrencies),
        ]
    if load:
        sections.append(_peer_ratios(results, load, concurrencies))
    if THROUGHPUT in ran:
        sections.append(_limits(results, running(THROUGHPUT), concurrencies))
    sections += [
        _echo(results, running(ECHO)),
        _websocket(results, running(WEBSOCKET)),
        _websocket_ratios(results, running(WEBSOCKET)),
        _websocket_errors(results),
        _idle(results, running(IDLE)),
        _slowloris(results, running(SLOWLORIS)),
        _unavailable(results),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _header(results: Results, servers: Sequence[ServerSpec]) -> str:
    meta = results.meta
    versions = ", ".join(f"{name} {version}" for name, version in meta.versions.items())
    engines = "; ".join(
        f"{engine} for {', '.join(spec.name for spec in servers if spec.engine == engine)}"
        for engine in (FAST_ENGINE, PURE_H11)
        if any(spec.engine == engine for spec in servers)
    )
    return (
        f"Command: `{meta.command}`  \n"
        f"Date: {meta.date}; CPU: {meta.cpu}; server pinned to CPU {meta.server_cpu}, "
        f"wrk and clients to CPU {meta.load_cpu}; medians of {meta.repetitions} "
        f"interleaved repetition(s) of {meta.seconds} s each.  \n"
        + (f"trioserve's HTTP engine (`--http`): {engines}.  \n" if engines else "")
        + f"Versions: {versions}."
    )


def _section(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not rows:
        return ""
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "---|" * len(headers))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _rows(results: Results, servers: Sequence[ServerSpec], cells: Cells) -> list[list[str]]:
    """A row per server that has data; "unavailable" for one that did not run."""
    rows = []
    for spec in servers:
        row = cells(spec.name)
        if row is not None:
            rows.append([spec.name, *row])
        elif spec.name in results.unavailable:
            rows.append([spec.name, "unavailable"])
    return rows


def _columns(concurrencies: Sequence[int]) -> list[str]:
    return [f"c={connections}" for connections in concurrencies]


def _throughput(
    results: Results, servers: Sequence[ServerSpec], concurrencies: Sequence[int]
) -> str:
    def cells(name: str) -> list[str] | None:
        if name not in results.throughput:
            return None
        rps = [_rps(results.median_rps(name, c)) for c in concurrencies]
        p99 = [_ms(results.median_p99_ms(name, c)) for c in concurrencies]
        return [f"{value} ({latency})" for value, latency in zip(rps, p99, strict=True)]

    rows = _rows(results, servers, cells)
    rows += [
        [f"*{_limit_name(engine)}*", *_limit_cells(results, concurrencies, engine)]
        for engine in _limit_engines(results, servers)
    ]
    title = "Throughput, `GET /` → `Hello, world!`: req/s (p99 latency)"
    return _section(title, ["server", *_columns(concurrencies)], rows)


def _limit_engines(results: Results, servers: Sequence[ServerSpec]) -> list[Engine]:
    """The builds of h11 whose limit the report shows: those the servers are compared
    with and those measured, pure h11 at least."""
    used = {spec.limit_engine for spec in servers if spec.kind != "limit"}
    used |= set(results.h11_us) | {PURE_H11}
    return [engine for engine in ENGINES if engine in used]


def _limit_name(engine: Engine) -> str:
    return f"trio + {engine} limit"


def _limit_cells(results: Results, concurrencies: Sequence[int], engine: Engine) -> list[str]:
    return [_rps(results.limit_rps(RAW_SERVER, c, engine)) for c in concurrencies]


def _limit_ratios(
    results: Results, servers: Sequence[ServerSpec], concurrencies: Sequence[int]
) -> str:
    engines = {spec.name: spec.limit_engine for spec in servers}

    def cells(name: str) -> list[str] | None:
        if name not in results.throughput:
            return None
        engine = engines[name]
        limits = [results.limit_rps(RAW_SERVER, c, engine) for c in concurrencies]
        return [
            engine,
            *(
                _ratio(results.median_rps(name, c), limit)
                for c, limit in zip(concurrencies, limits, strict=True)
            ),
        ]

    measured = [spec for spec in servers if spec.kind != "limit"]
    title = (
        "Ratio to the limit with the server's engine (1.00x = as fast as that limit;"
        " the peers: the pure h11 one)"
    )
    headers = ["server", "limit with", *_columns(concurrencies)]
    return _section(title, headers, _rows(results, measured, cells))


def _peer_ratios(
    results: Results, servers: Sequence[ServerSpec], concurrencies: Sequence[int]
) -> str:
    title = "trioserve / each peer, req/s (above 1.00x = trioserve faster)"
    selected = [spec.name for spec in servers if spec.kind == "trioserve"]
    subjects = [name for name in selected if name in results.throughput]
    if selected and not subjects:
        return f"### {title}\n\ntrioserve did not run: see *Unavailable* below."
    peers = [spec.name for spec in servers if spec.kind != "trioserve"]
    rows = [
        [
            f"{subject} / {peer}",
            *(
                _ratio(results.median_rps(subject, c), results.median_rps(peer, c))
                for c in concurrencies
            ),
            _ratio(results.median_echo_rps(subject), results.median_echo_rps(peer)),
        ]
        for peer in peers  # by peer: each peer's rows list every trioserve server
        for subject in subjects
    ]
    return _section(title, ["ratio", *_columns(concurrencies), "1 MiB echo"], rows)


def _limits(results: Results, servers: Sequence[ServerSpec], concurrencies: Sequence[int]) -> str:
    engines = _limit_engines(results, servers)
    raw_us = [results.best_rps(RAW_SERVER, c) for c in concurrencies]
    rows = [
        [
            f"{engine} in memory, µs per request",
            *[_us(results.best_h11_us(engine))] * len(concurrencies),
        ]
        for engine in engines
    ]
    rows.append(
        ["raw trio socket loop, µs per request", *[_us(_per_request_us(rps)) for rps in raw_us]]
    )
    rows += [
        [f"{_limit_name(engine)}, req/s", *_limit_cells(results, concurrencies, engine)]
        for engine in engines
    ]
    title = (
        "The limits, one per engine, best repetition"
        " (limit = 10⁶ / (the engine's h11 µs + raw trio loop µs))"
    )
    return _section(title, ["", *_columns(concurrencies)], rows)


def _echo(results: Results, servers: Sequence[ServerSpec]) -> str:
    def cells(name: str) -> list[str] | None:
        if name not in results.echo:
            return None
        rps = results.median_echo_rps(name)
        return [_rps(rps), _rps(rps), _ms(results.median_echo_p99_ms(name))]

    title = "1 MiB POST echo (16 connections)"
    headers = ["server", "req/s", "MiB/s each way", "p99"]
    return _section(title, headers, _rows(results, servers, cells))


def _websocket(results: Results, servers: Sequence[ServerSpec]) -> str:
    def cells(name: str) -> list[str] | None:
        if name not in results.websocket and name not in results.websocket_errors:
            return None
        row = [_ws_cell(results, name, message.label) for message in WS_MESSAGES]
        large = WS_MESSAGES[-1]
        rate = results.median_ws_rate(name, large.label)
        row.append(_number(rate and rate * large.size / 2**20, "{:,.0f}"))
        cpu = [results.max_ws_client_cpu(name, message.label) for message in WS_MESSAGES]
        row.append(" / ".join(_number(share and share * 100, "{:.0f}%") for share in cpu))
        return row

    connections = results.meta.websocket_connections
    title = (
        f"WebSocket echo ({connections} connections, one message in flight on each):"
        " messages/s (p99 round trip)"
    )
    labels = [message.label for message in WS_MESSAGES]
    headers = [
        "server",
        *labels,
        f"{labels[-1]}: MiB/s each way",
        "client CPU, max (" + " / ".join(labels) + ")",
    ]
    return _section(title, headers, _rows(results, servers, cells))


def _ws_cell(results: Results, server: str, message: str) -> str:
    if results.websocket_failed(server, message):
        return "failed (below)"
    rate = results.median_ws_rate(server, message)
    if rate is None:
        return MISSING
    return f"{_rps(rate)} ({_ms(results.median_ws_p99_ms(server, message))})"


def _websocket_ratios(results: Results, servers: Sequence[ServerSpec]) -> str:
    subjects = [s.name for s in servers if s.kind == "trioserve" and s.name in results.websocket]
    peers = [spec.name for spec in servers if spec.kind != "trioserve"]
    rows = [
        [
            f"{subject} / {peer}",
            *(
                _ratio(
                    results.median_ws_rate(subject, message.label),
                    results.median_ws_rate(peer, message.label),
                )
                for message in WS_MESSAGES
            ),
        ]
        for subject in subjects
        for peer in peers
    ]
    title = "trioserve / each peer, WebSocket messages/s (above 1.00x = trioserve faster)"
    return _section(title, ["ratio", *(message.label for message in WS_MESSAGES)], rows)


def _websocket_errors(results: Results) -> str:
    if not results.websocket_errors:
        return ""
    lines = ["### WebSocket echo failures", ""]
    lines += [
        f"- **{name}**, {message}: {reason}"
        for name, failures in results.websocket_errors.items()
        for message, reason in failures.items()
    ]
    return "\n".join(lines)


def _idle(results: Results, servers: Sequence[ServerSpec]) -> str:
    def cells(name: str) -> list[str] | None:
        idle = results.idle.get(name)
        if idle is None:
            return None
        return [
            f"{idle.held:,} / {idle.requested:,}",
            f"{idle.rss_before_kib / 1024:.1f} MiB",
            f"{idle.rss_after_kib / 1024:.1f} MiB",
            _number(idle.kib_per_connection, "{:.1f} KiB"),
        ]

    title = "Idle keep-alive connections: server memory (RSS)"
    headers = [
        "server",
        "held / opened",
        "RSS before",
        "RSS holding them",
        "per connection",
    ]
    return _section(title, headers, _rows(results, servers, cells))


def _slowloris(results: Results, servers: Sequence[ServerSpec]) -> str:
    def cells(name: str) -> list[str] | None:
        run = results.slowloris.get(name)
        if run is None:
            return None
        return [
            f"{run.attack.still_open:,} / {run.attack.opened:,}",
            f"{_ms(run.baseline.p50_ms)} → {_ms(run.loaded.p50_ms)}",
            f"{_ms(run.baseline.p99_ms)} → {_ms(run.loaded.p99_ms)}",
            _ratio(run.loaded.p99_ms, run.baseline.p99_ms),
            f"{run.loaded.errors:,}",
        ]

    title = "Ordinary clients (16 connections) alone → with slowloris connections held"
    headers = [
        "server",
        "slowloris still open / opened",
        "p50",
        "p99",
        "p99 ratio",
        "errors",
    ]
    return _section(title, headers, _rows(results, servers, cells))


def _unavailable(results: Results) -> str:
    if not results.unavailable:
        return ""
    lines = ["### Unavailable", ""]
    lines += [f"- **{name}**: {reason}" for name, reason in results.unavailable.items()]
    return "\n".join(lines)


def _per_request_us(rps: float | None) -> float | None:
    return 1e6 / rps if rps else None


def _number(value: float | None, template: str) -> str:
    return MISSING if value is None else template.format(value)


def _rps(value: float | None) -> str:
    return _number(value, "{:,.0f}")


def _us(value: float | None) -> str:
    return _number(value, "{:.1f}")


def _ms(value: float | None) -> str:
    if value is not None and value >= 1000:
        return f"{value / 1000:.2f} s"
    return _number(value, "{:.2f} ms" if value is not None and value < 10 else "{:.0f} ms")


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return MISSING
    return f"{value / reference:.2f}x"
