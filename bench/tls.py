"""HTTPS: trioserve against uvicorn and hypercorn with the same certificate, in
interleaved repetitions.

One trustme certificate (ECDSA P-256, made here) for every server. Two figures:

* **requests/s**: ``GET /`` with keep-alive over established TLS connections;
* **handshakes/s**: the same with ``Connection: close``, so that every request is a new
  TCP connection and a full TLS handshake (wrk resumes no session).

Servers are pinned to CPU 0 and wrk to CPU 1, as in run.py; none writes an access log.

Usage: ``python bench/tls.py [--repetitions N] [--seconds S] [--output FILE]``;
prints a table of medians with ratios and writes bench/results/tls.md.
"""

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trustme
from servers import APPS, ASGI_APP, HOST, ServerSpec, running
from wrk import measure

CONNECTIONS = 16
WARMUP_SECONDS = 1
RESULTS = Path(__file__).resolve().parent / "results" / "tls.md"


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _trioserve(app: str, cert: Path, key: Path) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        flags = ["--host", HOST, "--port", str(port), "--no-access-log"]
        flags += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        return _python("-m", "trioserve", app, "--app-dir", str(APPS), *flags)

    return command


def _uvicorn(http: str, loop: str, cert: Path, key: Path) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        flags = ["--http", http, "--loop", loop, "--host", HOST, "--port", str(port)]
        flags += ["--no-access-log", "--log-level", "warning", "--lifespan", "on"]
        flags += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
        return _python("-m", "uvicorn", "--app-dir", str(APPS), ASGI_APP, *flags)

    return command


def _hypercorn(cert: Path, key: Path) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        flags = ["--worker-class", "trio", "--workers", "0", "--bind", f"{HOST}:{port}"]
        flags += ["--certfile", str(cert), "--keyfile", str(key)]
        return _python("-m", "hypercorn", *flags, ASGI_APP)

    return command


def _servers(cert: Path, key: Path) -> list[ServerSpec]:
    return [
        ServerSpec(
            "trioserve", "trioserve, native handler", "trioserve",
            _trioserve("native_app:handler", cert, key),
        ),
        ServerSpec(
            "trioserve-asgi", "trioserve, ASGI app", "trioserve",
            _trioserve(ASGI_APP, cert, key),
        ),
        ServerSpec(
            "uvicorn-h11", "uvicorn, h11 + asyncio", "peer",
            _uvicorn("h11", "asyncio", cert, key),
        ),
        ServerSpec(
            "uvicorn-httptools", "uvicorn, httptools + uvloop", "peer",
            _uvicorn("httptools", "uvloop", cert, key),
        ),
        ServerSpec("hypercorn-trio", "hypercorn, trio worker", "peer", _hypercorn(cert, key)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trioserve-tls-bench-") as where:
        cert, key = Path(where) / "cert.pem", Path(where) / "key.pem"
        leaf = trustme.CA().issue_cert(HOST)
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        servers = _servers(cert, key)
        kept: dict[str, list[float]] = {spec.name: [] for spec in servers}
        fresh: dict[str, list[float]] = {spec.name: [] for spec in servers}
        for repetition in range(args.repetitions):
            for spec in servers:
                print(f"[{repetition + 1}/{args.repetitions}] {spec.name}", file=sys.stderr)
                with running(spec, tls=True) as server:
                    url = f"https://{HOST}:{server.port}/"
                    kept[spec.name].append(
                        measure(url, CONNECTIONS, args.seconds, WARMUP_SECONDS).requests_per_second
                    )
                    close = ("Connection: close",)
                    fresh[spec.name].append(
                        measure(
                            url, CONNECTIONS, args.seconds, WARMUP_SECONDS, close
                        ).requests_per_second
                    )
                time.sleep(0.5)
    table = _table(servers, kept, fresh, args)
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(table)
    print(table)


def _table(
    servers: list[ServerSpec],
    kept: dict[str, list[float]],
    fresh: dict[str, list[float]],
    args: argparse.Namespace,
) -> str:
    median_kept = {name: statistics.median(values) for name, values in kept.items()}
    median_fresh = {name: statistics.median(values) for name, values in fresh.items()}
    peers = [spec for spec in servers if spec.kind == "peer"]
    lines = [
        f"Medians of {args.repetitions} interleaved repetitions, {args.seconds} s each, "
        f"{CONNECTIONS} connections, one ECDSA P-256 certificate.",
        "",
        "| server | keep-alive req/s | handshakes/s |"
        + "".join(f" vs {peer.name} |" for peer in peers),
        "| --- | --- | --- |" + " --- |" * len(peers),
    ]
    for spec in servers:
        name = spec.name
        ratios = "".join(
            f" {median_kept[name] / median_kept[p.name]:.2f}x"
            f" / {median_fresh[name] / median_fresh[p.name]:.2f}x |"
            for p in peers
        )
        lines.append(
            f"| {spec.description} | {median_kept[name]:.0f} | {median_fresh[name]:.0f} |{ratios}"
        )
    lines += ["", "Ratios: keep-alive / handshakes, this row over the peer's."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
