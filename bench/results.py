"""Everything one benchmark run measured, and its medians."""

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from scenarios import IdleResult, SlowlorisResult
from wrk import WrkResult
from ws_client import WsResult


@dataclass(frozen=True)
class RunInfo:
    """How, where and with what a run was made."""

    command: str
    date: str
    cpu: str
    server_cpu: str
    load_cpu: str
    scenarios: list[str]
    repetitions: int
    seconds: int
    concurrencies: list[int]
    idle_connections: int
    slowloris_connections: int
    websocket_connections: int
    servers: dict[str, str]
    versions: dict[str, str]


@dataclass
class Results:
    """Raw measurements of one run, keyed by server name."""

    meta: RunInfo
    #: engine ("h11", "h11-mypyc") -> h11's in-memory cost per request on that build,
    #: one per repetition
    h11_us: dict[str, list[float]] = field(default_factory=dict)
    throughput: dict[str, dict[int, list[WrkResult]]] = field(default_factory=dict)
    echo: dict[str, list[WrkResult]] = field(default_factory=dict)
    idle: dict[str, IdleResult] = field(default_factory=dict)
    slowloris: dict[str, SlowlorisResult] = field(default_factory=dict)
    #: server -> message label ("16 B text") -> one result per repetition
    websocket: dict[str, dict[str, list[WsResult]]] = field(default_factory=dict)
    #: server -> message label -> why the client failed (the server kept running)
    websocket_errors: dict[str, dict[str, str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def add_h11_costs(self, costs: dict[str, float]) -> None:
        for engine, cost in costs.items():
            self.h11_us.setdefault(engine, []).append(cost)

    def add_throughput(self, server: str, connections: int, result: WrkResult) -> None:
        self.throughput.setdefault(server, {}).setdefault(connections, []).append(result)

    def add_echo(self, server: str, result: WrkResult) -> None:
        self.echo.setdefault(server, []).append(result)

    def add_websocket(self, server: str, message: str, result: WsResult) -> None:
        self.websocket.setdefault(server, {}).setdefault(message, []).append(result)

    def websocket_failed(self, server: str, message: str) -> str | None:
        return self.websocket_errors.get(server, {}).get(message)

    def median_ws_rate(self, server: str, message: str) -> float | None:
        runs = self.websocket.get(server, {}).get(message, [])
        return median(run.messages_per_second for run in runs)

    def median_ws_p99_ms(self, server: str, message: str) -> float | None:
        runs = self.websocket.get(server, {}).get(message, [])
        return median(run.p99_ms for run in runs)

    def max_ws_client_cpu(self, server: str, message: str) -> float | None:
        runs = self.websocket.get(server, {}).get(message, [])
        return max((run.client_cpu for run in runs), default=None)

    def median_rps(self, server: str, connections: int) -> float | None:
        runs = self.throughput.get(server, {}).get(connections, [])
        return median(run.requests_per_second for run in runs)

    def median_p99_ms(self, server: str, connections: int) -> float | None:
        runs = self.throughput.get(server, {}).get(connections, [])
        return median(run.p99_ms for run in runs)

    def median_echo_rps(self, server: str) -> float | None:
        return median(run.requests_per_second for run in self.echo.get(server, []))

    def median_echo_p99_ms(self, server: str) -> float | None:
        return median(run.p99_ms for run in self.echo.get(server, []))

    def best_h11_us(self, engine: str) -> float | None:
        return min(self.h11_us.get(engine, []), default=None)

    def best_rps(self, server: str, connections: int) -> float | None:
        runs = self.throughput.get(server, {}).get(connections, [])
        return max((run.requests_per_second for run in runs), default=None)

    def limit_rps(self, raw_server: str, connections: int, engine: str) -> float | None:
        """The trio + h11 limit at this concurrency with the build of h11 ``engine``
        names, in req/s: that build's in-memory cost plus the raw trio loop's cost per
        request, each from its best repetition (a limit is what is possible; noise
        only ever slows it down)."""
        h11_us = self.best_h11_us(engine)
        raw_rps = self.best_rps(raw_server, connections)
        if h11_us is None or not raw_rps:
            return None
        return 1e6 / (h11_us + 1e6 / raw_rps)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["idle"] = {
            name: {**asdict(result), "kib_per_connection": result.kib_per_connection}
            for name, result in self.idle.items()
        }
        return data


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None
