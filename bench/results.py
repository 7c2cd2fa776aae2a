"""Everything one benchmark run measured, and its medians."""

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from scenarios import IdleResult, SlowlorisResult
from wrk import WrkResult


@dataclass
class Results:
    """Raw measurements of one run, keyed by server name."""

    meta: dict[str, Any]
    h11_us: list[float] = field(default_factory=list)
    throughput: dict[str, dict[int, list[WrkResult]]] = field(default_factory=dict)
    echo: dict[str, list[WrkResult]] = field(default_factory=dict)
    idle: dict[str, IdleResult] = field(default_factory=dict)
    slowloris: dict[str, SlowlorisResult] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def add_throughput(self, server: str, connections: int, result: WrkResult) -> None:
        self.throughput.setdefault(server, {}).setdefault(connections, []).append(
            result
        )

    def add_echo(self, server: str, result: WrkResult) -> None:
        self.echo.setdefault(server, []).append(result)

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

    def median_h11_us(self) -> float | None:
        return median(self.h11_us)

    def limit_rps(self, raw_server: str, connections: int) -> float | None:
        """The trio + h11 limit: h11's in-memory cost plus the raw trio loop's
        per-request cost at this concurrency, as req/s."""
        h11_us = self.median_h11_us()
        raw_rps = self.median_rps(raw_server, connections)
        if h11_us is None or not raw_rps:
            return None
        return 1e6 / (h11_us + 1e6 / raw_rps)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["idle"] = {
            name: {**asdict(result), "kib_per_connection": result.kib_per_connection}
            for name, result in self.idle.items()
        }
        return data


def median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None
