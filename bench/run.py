"""Benchmark trioserve against hypercorn and uvicorn: the one command.

Starts each server pinned to CPU 0 with wrk (or the WebSocket client) on CPU 1,
runs the throughput and echo scenarios in interleaved repetitions (A B C A B C
...), then the WebSocket echo the same way, then idle-connection memory and
slowloris latency, and writes bench/results/latest.json, bench/results/latest.md
and bench/results/chart.png. See bench/README.md.

Usage: ``python bench/run.py`` (about 16 minutes) or ``python bench/run.py --quick``
"""

import argparse
import functools
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import report
import scenarios
from results import Results, RunInfo
from servers import (
    ALL_SCENARIOS,
    BENCH,
    ECHO,
    IDLE,
    SERVER_CPU,
    SERVER_NAMES,
    SLOWLORIS,
    THROUGHPUT,
    WEBSOCKET,
    RunningServer,
    ServerSpec,
    running,
    server_spec,
)
from wrk import LOAD_CPU
from ws_client import WsClientError

RESULTS_DIR = BENCH / "results"
VERSIONED = (
    "trioserve", "trio", "h11", "h11-mypyc", "wsproto", "hypercorn", "uvicorn", "httptools",
    "uvloop", "websockets",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    servers: list[ServerSpec]
    scenarios: frozenset[str]
    concurrencies: list[int]
    repetitions: int
    seconds: int
    idle_connections: int
    slowloris_connections: int
    slowloris_interval: float
    websocket_connections: int
    h11_requests: int
    output: Path

    def runs(self, scenario: str) -> list[ServerSpec]:
        if scenario not in self.scenarios:
            return []
        return [spec for spec in self.servers if scenario in spec.scenarios]


def parse_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 3.5 minutes)")
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=SERVER_NAMES,
        default=list(SERVER_NAMES),
        metavar="NAME",
        help=f"servers to run (default: all): {', '.join(SERVER_NAMES)}",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=sorted(ALL_SCENARIOS),
        default=sorted(ALL_SCENARIOS),
        help="scenarios to run (default: all)",
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16, 128, 1000])
    parser.add_argument("--repetitions", type=int, help="default 4, quick 1")
    parser.add_argument("--seconds", type=int, help="per wrk run (whole); default 3, quick 1")
    parser.add_argument("--idle-connections", type=int, help="default 5000, quick 1000")
    parser.add_argument("--slowloris-connections", type=int, help="default 500, quick 100")
    parser.add_argument(
        "--ws-connections", type=int, default=16, help="WebSocket echo connections (default 16)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    positive = ("repetitions", "seconds", "idle_connections", "slowloris_connections")
    for option in (*positive, "ws_connections"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    quick = args.quick
    return Settings(
        servers=[server_spec(name) for name in args.servers],
        scenarios=frozenset(args.scenarios),
        concurrencies=args.concurrency,
        repetitions=args.repetitions or (1 if quick else 4),
        seconds=args.seconds or (1 if quick else 3),
        idle_connections=args.idle_connections or (1000 if quick else 5000),
        slowloris_connections=args.slowloris_connections or (100 if quick else 500),
        slowloris_interval=1.0,
        websocket_connections=args.ws_connections,
        h11_requests=5000 if quick else 20000,
        output=args.output,
    )


def main() -> None:
    argv = sys.argv[1:]
    settings = parse_args(argv)
    _prepare_process(settings)
    results = Results(meta=_meta(settings, argv))
    started = time.monotonic()
    _measure_h11(settings, results)
    _load_phase(settings, results)
    _websocket_phase(settings, results)
    _connection_phase(settings, results)
    table = report.markdown(results, settings.servers, settings.concurrencies)
    _write(settings, results, table)
    print(table)
    _progress(f"done in {time.monotonic() - started:.0f} s; wrote {settings.output}/")


def _prepare_process(settings: Settings) -> None:
    """Raise the open-file limit (inherited by servers and wrk); pin to LOAD_CPU."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = max(settings.idle_connections, *settings.concurrencies) + 100
    if hard != resource.RLIM_INFINITY and hard < needed:
        _progress(f"warning: open-file limit {hard} is below the {needed} needed")
    os.sched_setaffinity(0, {int(LOAD_CPU)})


def _meta(settings: Settings, argv: Sequence[str]) -> RunInfo:
    return RunInfo(
        command=shlex.join(["python", "bench/run.py", *argv]),
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cpu=_cpu_model(),
        server_cpu=SERVER_CPU,
        load_cpu=LOAD_CPU,
        scenarios=sorted(settings.scenarios),
        repetitions=settings.repetitions,
        seconds=settings.seconds,
        concurrencies=settings.concurrencies,
        idle_connections=settings.idle_connections,
        slowloris_connections=settings.slowloris_connections,
        websocket_connections=settings.websocket_connections,
        servers={spec.name: spec.description for spec in settings.servers},
        versions=_versions(),
    )


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    return f"{platform.processor() or 'unknown'}, {os.cpu_count()} CPUs"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    banner = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    versions["wrk"] = banner.split()[1] if banner.startswith("wrk ") else "unknown"
    return versions


def _measure_h11(settings: Settings, results: Results) -> None:
    if THROUGHPUT not in settings.scenarios:
        return
    for _ in range(settings.repetitions):
        results.add_h11_costs(scenarios.h11_cost_us(settings.h11_requests))
    for engine in results.h11_us:
        best = results.best_h11_us(engine)
        _progress(f"{engine} in memory: {best:.1f} µs per request (best)")


def _load_phase(settings: Settings, results: Results) -> None:
    """Throughput at each concurrency and the echo, interleaved: A B C A B C ..."""
    servers = _union(settings.runs(THROUGHPUT), settings.runs(ECHO))
    for repetition in range(1, settings.repetitions + 1):
        for spec in servers:
            label = f"[{repetition}/{settings.repetitions}] {spec.name}"
            _with_server(spec, results, functools.partial(_load, settings, results, label))


def _load(settings: Settings, results: Results, label: str, server: RunningServer) -> None:
    scenarios.warm_up(server)
    if server.spec in settings.runs(THROUGHPUT):
        for connections in settings.concurrencies:
            run = scenarios.throughput(server, connections, settings.seconds)
            results.add_throughput(server.spec.name, connections, run)
            _progress(f"{label} c={connections}: {run.requests_per_second:,.0f} req/s")
    if server.spec in settings.runs(ECHO):
        run = scenarios.echo(server, settings.seconds)
        results.add_echo(server.spec.name, run)
        _progress(f"{label} echo: {run.requests_per_second:,.0f} MiB/s")


def _websocket_phase(settings: Settings, results: Results) -> None:
    """The WebSocket echo, each message size in turn, interleaved: A B C A B C ..."""
    servers = settings.runs(WEBSOCKET)
    for repetition in range(1, settings.repetitions + 1):
        for spec in servers:
            label = f"[{repetition}/{settings.repetitions}] {spec.name}"
            measure = functools.partial(_websocket, settings, results, label)
            _with_server(spec, results, measure)


def _websocket(settings: Settings, results: Results, label: str, server: RunningServer) -> None:
    """Both message sizes; a client failure is recorded for that size alone (the
    server runs on, and its other scenarios are not affected)."""
    name = server.spec.name
    for message in scenarios.WS_MESSAGES:
        if results.websocket_failed(name, message.label):
            continue
        try:
            run = scenarios.websocket_echo(
                server, message, settings.websocket_connections, settings.seconds
            )
        except WsClientError as error:
            results.websocket_errors.setdefault(name, {})[message.label] = str(error)
            _progress(f"{label} websocket {message.label}: FAILED: {error}")
            continue
        results.add_websocket(name, message.label, run)
        _progress(
            f"{label} websocket {message.label}: {run.messages_per_second:,.0f} msg/s,"
            f" p99 {run.p99_ms} ms, client CPU {run.client_cpu:.0%}"
        )


def _connection_phase(settings: Settings, results: Results) -> None:
    """Idle-connection memory, then slowloris, each on a fresh server."""
    for spec in settings.runs(IDLE):
        _with_server(spec, results, functools.partial(_idle, settings, results))
    for spec in settings.runs(SLOWLORIS):
        _with_server(spec, results, functools.partial(_slowloris, settings, results))


def _idle(settings: Settings, results: Results, server: RunningServer) -> None:
    idle = scenarios.idle_memory(server, settings.idle_connections)
    results.idle[server.spec.name] = idle
    per_connection = idle.kib_per_connection or 0.0
    _progress(f"{server.spec.name} idle: {idle.held} held, {per_connection:.1f} KiB each")


def _slowloris(settings: Settings, results: Results, server: RunningServer) -> None:
    scenarios.warm_up(server)
    run = scenarios.slowloris_latency(
        server, settings.slowloris_connections, settings.slowloris_interval, settings.seconds
    )
    results.slowloris[server.spec.name] = run
    _progress(
        f"{server.spec.name} slowloris: p99 {run.baseline.p99_ms} → {run.loaded.p99_ms} ms,"
        f" {run.attack.still_open}/{run.attack.opened} held"
    )


def _with_server(
    spec: ServerSpec, results: Results, measure: Callable[[RunningServer], None]
) -> None:
    """Run ``measure`` against a fresh ``spec`` server, unless it already failed.

    A server that fails to start or to serve is recorded as unavailable and
    skipped from then on; the run goes on with the others.
    """
    if spec.name in results.unavailable:
        return
    try:
        with running(spec) as server:
            measure(server)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        results.unavailable[spec.name] = f"{type(error).__name__}: {error}"
        _progress(f"{spec.name} unavailable: {error}")


def _union(*groups: list[ServerSpec]) -> list[ServerSpec]:
    """The servers in any of ``groups``, in their first order, once each."""
    return list({spec.name: spec for group in groups for spec in group}.values())


def _write(settings: Settings, results: Results, table: str) -> None:
    settings.output.mkdir(parents=True, exist_ok=True)
    (settings.output / "latest.json").write_text(json.dumps(results.to_json(), indent=2))
    (settings.output / "latest.md").write_text(table)
    try:
        from chart import write_chart
    except ModuleNotFoundError as error:
        if error.name != "matplotlib":
            raise
        _progress("matplotlib is not installed: no chart (pip install matplotlib)")
        return
    write_chart(results, settings.servers, settings.concurrencies, settings.output / "chart.png")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
