"""Run wrk pinned to the load generator's CPU and parse its ``--latency`` report."""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

LOAD_CPU = "1"
TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
WRK_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles and errors."""

    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    bytes_per_second: float = 0.0  # wrk's "Transfer/sec": partial responses count too


class WrkError(RuntimeError):
    """wrk failed or printed a report this module cannot read."""


def run_wrk(
    url: str,
    connections: int,
    seconds: int,
    script: Path | None = None,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """Run one wrk thread on LOAD_CPU against ``url`` and return its report."""
    command = [
        "taskset", "-c", LOAD_CPU, "wrk", "--latency", "-t", "1",
        "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
    ]  # fmt: skip
    if script is not None:
        command += ["-s", str(script)]
    for header in headers:
        command += ["-H", header]
    command.append(url)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + WRK_GRACE_SECONDS
    )
    if completed.returncode != 0:
        output = (completed.stderr + completed.stdout).strip()
        raise WrkError(f"wrk exited {completed.returncode}: {output}")
    return parse_wrk(completed.stdout)


def parse_wrk(output: str) -> WrkResult:
    """Read requests/s, p50, p99, request count and errors from wrk's output."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rate is None or total is None:
        raise WrkError(f"unreadable wrk output:\n{output}")
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        p50_ms=_percentile_ms(output, "50%"),
        p99_ms=_percentile_ms(output, "99%"),
        requests=int(total.group(1)),
        errors=_errors(output),
        bytes_per_second=_transfer(output),
    )


def _percentile_ms(output: str, label: str) -> float | None:
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    if match is None:
        return None
    return float(match.group(1)) * TIME_UNITS[match.group(2)]


_SIZES = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def _transfer(output: str) -> float:
    match = re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)\s*$", output, re.MULTILINE)
    return float(match.group(1)) * _SIZES[match.group(2)] if match else 0.0


def _errors(output: str) -> int:
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    bad_status = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    counts = [int(n) for n in socket_errors.groups()] if socket_errors else []
    if bad_status:
        counts.append(int(bad_status.group(1)))
    return sum(counts)


def measure(
    url: str, connections: int, seconds: int, warmup: int, headers: tuple[str, ...] = ()
) -> WrkResult:
    """A ``warmup``-second run, then the measured one; an error or no request fails."""
    run_wrk(url, connections, warmup, headers=headers)
    result = run_wrk(url, connections, seconds, headers=headers)
    if result.errors or not result.requests:
        raise WrkError(f"{url}: {result.errors} errors, {result.requests} requests")
    return result
