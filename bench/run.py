"""Benchmark trioserve against hypercorn and uvicorn: the one command.

Starts each server pinned to CPU 0 with wrk on CPU 1, runs the throughput and
echo scenarios in interleaved repetitions (A B C A B C ...), then idle-connection
memory and slowloris latency, and writes bench/results/latest.json,
bench/results/latest.md and bench/results/chart.png. See bench/README.md.

Usage: ``python bench/run.py`` (about 8 minutes) or ``python bench/run.py --quick``
"""

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import report
import scenarios
from results import Results
from servers import (
    ALL_SCENARIOS,
    BENCH,
    ECHO,
    IDLE,
    SERVER_CPU,
    SERVER_NAMES,
    SLOWLORIS,
    THROUGHPUT,
    RunningServer,
    ServerSpec,
    ServerUnavailable,
    running,
    server_spec,
)
from wrk import LOAD_CPU, WrkError

RESULTS_DIR = BENCH / "results"
VERSIONED = ("trioserve", "trio", "h11", "hypercorn", "uvicorn", "httptools", "uvloop")


@dataclass(frozen=True)
class Settings:
    servers: list[ServerSpec]
    scenarios: frozenset[str]
    concurrencies: list[int]
    repetitions: int
    seconds: float
    warmup_seconds: float
    idle_connections: int
    slowloris_connections: int
    slowloris_interval: float
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
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run (about 2 minutes)"
    )
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
    parser.add_argument("--repetitions", type=int, help="default 3, quick 1")
    parser.add_argument("--seconds", type=float, help="per wrk run; default 3, quick 1.5")
    parser.add_argument("--idle-connections", type=int, help="default 5000, quick 1000")
    parser.add_argument(
        "--slowloris-connections", type=int, help="default 500, quick 100"
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    quick = args.quick
    seconds = args.seconds or (1.5 if quick else 3.0)
    return Settings(
        servers=[server_spec(name) for name in args.servers],
        scenarios=frozenset(args.scenarios),
        concurrencies=args.concurrency,
        repetitions=args.repetitions or (1 if quick else 3),
        seconds=seconds,
        warmup_seconds=min(1.0, seconds / 2),
        idle_connections=args.idle_connections or (1000 if quick else 5000),
        slowloris_connections=args.slowloris_connections or (100 if quick else 500),
        slowloris_interval=1.0,
        h11_requests=5000 if quick else 20000,
        output=args.output,
    )
