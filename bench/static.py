"""Static files: trioserve against ``python -m http.server`` and Starlette's
``StaticFiles`` under uvicorn, in interleaved repetitions.

Each server serves the same directory (made here, in a temporary directory): a
large file (100 MiB) fetched by wrk with a few connections, reported in MiB/s, and
a small file (1 KiB) with keep-alive where the server offers it, reported in
requests/s. Servers are pinned to CPU 0 and wrk to CPU 1, as in run.py; every
server writes its usual access log (http.server cannot turn its off).

Usage: ``python bench/static.py [--repetitions N] [--seconds S]``; prints a table of
medians with ratios to each peer and writes bench/results/static.md.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from servers import APPS, HOST, ServerSpec, running
from wrk import measure

LARGE = ("/large.bin", 100 * 1024 * 1024)
SMALL = ("/small.txt", 1024)
LARGE_CONNECTIONS = 4
SMALL_CONNECTIONS = 16
WARMUP_SECONDS = 1
RESULTS = Path(__file__).resolve().parent / "results" / "static.md"


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _trioserve(root: Path) -> Callable[[int], list[str]]:
    return lambda port: _python("-m", "trioserve.static", "-b", HOST, "-d", str(root), str(port))


def _http_server(root: Path) -> Callable[[int], list[str]]:
    return lambda port: _python("-m", "http.server", "-b", HOST, "-d", str(root), str(port))


def _uvicorn(http: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        flags = ["--http", http, "--host", HOST, "--port", str(port), "--log-level", "warning"]
        return _python("-m", "uvicorn", "--app-dir", str(APPS), "static_app:app", *flags)

    return command


def _servers(root: Path) -> list[ServerSpec]:
    return [
        ServerSpec(
            "trioserve.static", "python -m trioserve.static", "trioserve", _trioserve(root)
        ),
        ServerSpec("http.server", "python -m http.server", "peer", _http_server(root)),
        ServerSpec(
            "starlette-uvicorn-h11", "Starlette StaticFiles, uvicorn --http h11", "peer",
            _uvicorn("h11"),
        ),
        ServerSpec(
            "starlette-uvicorn-httptools",
            "Starlette StaticFiles, uvicorn --http httptools", "peer", _uvicorn("httptools"),
        ),
    ]  # fmt: skip


def _fill(root: Path) -> None:
    (root / "index.html").write_text("<p>static bench</p>\n")
    pattern = bytes(range(256)) * 4096  # 1 MiB, incompressible enough
    with open(root / LARGE[0][1:], "wb") as large:
        for _ in range(LARGE[1] // len(pattern)):
            large.write(pattern)
    (root / SMALL[0][1:]).write_bytes(pattern[: SMALL[1]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trioserve-static-bench-") as where:
        root = Path(where)
        _fill(root)
        os.environ["BENCH_STATIC_ROOT"] = str(root)
        servers = _servers(root)
        large: dict[str, list[float]] = {spec.name: [] for spec in servers}
        small: dict[str, list[float]] = {spec.name: [] for spec in servers}
        for repetition in range(args.repetitions):
            for spec in servers:
                print(f"[{repetition + 1}/{args.repetitions}] {spec.name}", file=sys.stderr)
                with running(spec) as server:
                    base = f"http://{HOST}:{server.port}"
                    big = measure(base + LARGE[0], LARGE_CONNECTIONS, args.seconds, WARMUP_SECONDS)
                    large[spec.name].append(big.bytes_per_second / 2**20)
                    tiny = measure(
                        base + SMALL[0], SMALL_CONNECTIONS, args.seconds, WARMUP_SECONDS
                    )
                    small[spec.name].append(tiny.requests_per_second)
                time.sleep(0.5)
    table = _table(servers, large, small, args)
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(table)
    print(table)


def _table(
    servers: list[ServerSpec],
    large: dict[str, list[float]],
    small: dict[str, list[float]],
    args: argparse.Namespace,
) -> str:
    subject = servers[0].name
    median_large = {name: statistics.median(values) for name, values in large.items()}
    median_small = {name: statistics.median(values) for name, values in small.items()}
    lines = [
        f"Medians of {args.repetitions} interleaved repetitions, {args.seconds} s each; "
        f"large: {LARGE[1] // 2**20} MiB file, {LARGE_CONNECTIONS} connections; "
        f"small: {SMALL[1]} B file, {SMALL_CONNECTIONS} connections.",
        "",
        f"| server | large file MiB/s | {subject} / it | small file req/s | {subject} / it |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in servers:
        name = spec.name
        ratio_large = median_large[subject] / median_large[name]
        ratio_small = median_small[subject] / median_small[name]
        lines.append(
            f"| {spec.description} | {median_large[name]:.0f} | {ratio_large:.2f}x "
            f"| {median_small[name]:.0f} | {ratio_small:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
