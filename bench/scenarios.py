"""The measurements, each against one running server (see servers.py)."""

import json
import subprocess
import sys
import time
from dataclasses import dataclass

from clients import SlowlorisReport, idle_connections, under_slowloris
from servers import BENCH, SERVER_CPU, RunningServer
from wrk import WrkResult, run_wrk
from ws_client import WsResult, run_ws_client

ECHO_SCRIPT = BENCH / "lua" / "echo.lua"
ECHO_CONNECTIONS = 16
WARMUP_CONNECTIONS = 16
WARMUP_SECONDS = 1
ORDINARY_CLIENTS = 16
SETTLE_SECONDS = 1.0
SLOWLORIS_MARGIN_SECONDS = 3.0


@dataclass(frozen=True)
class IdleResult:
    """Server memory before and while it holds idle keep-alive connections."""

    requested: int
    completed: int
    held: int
    rss_before_kib: float
    rss_after_kib: float

    @property
    def kib_per_connection(self) -> float | None:
        if not self.held:
            return None
        return (self.rss_after_kib - self.rss_before_kib) / self.held


@dataclass(frozen=True)
class WsMessage:
    """A WebSocket message the echo scenario sends: its label, size and kind."""

    label: str
    size: int
    kind: str


WS_MESSAGES = (
    WsMessage("16 B text", 16, "text"),
    WsMessage("64 KiB binary", 64 * 1024, "binary"),
)


@dataclass(frozen=True)
class SlowlorisResult:
    """Ordinary clients' latency without and with slowloris connections held."""

    baseline: WrkResult
    loaded: WrkResult
    attack: SlowlorisReport


def warm_up(server: RunningServer) -> None:
    run_wrk(server.url, WARMUP_CONNECTIONS, WARMUP_SECONDS)


def throughput(server: RunningServer, connections: int, seconds: int) -> WrkResult:
    return run_wrk(server.url, connections, seconds)


def echo(server: RunningServer, seconds: int) -> WrkResult:
    """POST 1 MiB bodies that the server echoes back."""
    return run_wrk(server.url, ECHO_CONNECTIONS, seconds, script=ECHO_SCRIPT)


def websocket_echo(
    server: RunningServer, message: WsMessage, connections: int, seconds: int
) -> WsResult:
    """Each of ``connections`` WebSockets sends ``message`` and waits for its echo, in a
    loop (after the client's own 1 s warm-up)."""
    return run_ws_client(server.port, message.size, message.kind, connections, seconds)


def idle_memory(server: RunningServer, count: int) -> IdleResult:
    """RSS growth while ``count`` keep-alive connections sit idle."""
    rss_before = server.rss_bytes()
    with idle_connections(server.port, count) as completed:
        time.sleep(SETTLE_SECONDS)
        held = server.established_connections()
        rss_after = server.rss_bytes()
    return IdleResult(count, completed, held, rss_before / 1024, rss_after / 1024)


def slowloris_latency(
    server: RunningServer, connections: int, interval: float, seconds: int
) -> SlowlorisResult:
    """Latency of ORDINARY_CLIENTS alone, then while slowloris holds connections."""
    baseline = run_wrk(server.url, ORDINARY_CLIENTS, seconds)
    loaded, attack = under_slowloris(
        server.port,
        connections,
        interval,
        hold=seconds + SLOWLORIS_MARGIN_SECONDS,
        measure=lambda: run_wrk(server.url, ORDINARY_CLIENTS, seconds),
    )
    return SlowlorisResult(baseline, loaded, attack)


def h11_cost_us(requests: int) -> dict[str, float]:
    """Each build of h11's in-memory cost per request, measured on the server CPU, by
    engine name (``h11``, and ``h11-mypyc`` when it is installed)."""
    command = [
        "taskset", "-c", SERVER_CPU, sys.executable, str(BENCH / "limits.py"),
        "h11-cost", "--requests", str(requests),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    costs: dict[str, float] = json.loads(completed.stdout)
    return costs
