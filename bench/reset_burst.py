"""Reset burst: the server's memory high-water mark while a burst of connections is
reset in the middle of their request bodies, trioserve against its peers.

Each server is started as in run.py (servers.running: pinned to CPU 0, 127.0.0.1 only,
the app echoes a POST body, read whole, then sent back), warmed up with one complete
1 MiB echo and one ``GET``, then takes ``--bursts`` bursts, one after the other.

A burst, from one client process pinned to CPU 1 (raw non-blocking sockets on one epoll
loop): open ``--connections`` connections at once (all connects issued together, no
waves) and wait until every one is connected; then on every one send the head of
``POST / HTTP/1.1`` with ``Content-Length: 1048576`` and the first ``--partial-kib`` KiB
of the body, and close it with a TCP reset (SO_LINGER on, 0 s): as soon as its part is
written to the kernel (``--reset each``, the default), or once every connection has
written its part (``--reset together``). A burst that has not finished within
``--timeout`` seconds resets what is left and counts it as unfinished. The server gets
at most the part of each body: what the client's kernel has not sent yet when the
reset lands never arrives (what is in the server's receive buffer can still be read,
before the reset's error).

The server's RSS (the process and any children) is sampled every 20 ms from the start
of each burst until the server has *drained* it (its open files are back to their
number before the first burst: every reset connection closed, at most 20 s after the
client is done) and for 1 s more. Reported per server: when each burst was drained, RSS
before the first burst, the peak (high-water mark) of each burst, the RSS 1 s after the
last one was drained, the peak's and that final RSS's growth over "before", the
kernel's own peak (VmHWM, reset before the first burst, so it has what a 20 ms sampling
misses), open files before and after, and whether the server still answers a ``GET``
with 200 (the script exits with status 1 if one does not). Then the ratio of each
trioserve's growth to each peer's.

Usage: ``python bench/reset_burst.py [--servers NAME ...] [--connections N]
[--partial-kib K] [--bursts R] [--reset each|together] [--quick] [--output FILE]``;
prints a Markdown table and writes bench/results/reset_burst.md, with every number
and RSS sample in reset_burst.json beside it. (``reset_burst.py client ...`` is the
burst client itself, started by the script.)
"""

import argparse
import errno
import http.client
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from servers import (
    ECHO,
    HOST,
    SERVER_CPU,
    SERVERS,
    RunningServer,
    ServerSpec,
    ServerUnavailable,
    running,
)
from wrk import LOAD_CPU

DEFAULT_SERVERS = ("trioserve", "trioserve-asgi", "uvicorn-h11", "hypercorn-trio")
ECHO_SERVERS = tuple(spec.name for spec in SERVERS if ECHO in spec.scenarios)
DECLARED_LENGTH = 1024 * 1024
SAMPLE_SECONDS = 0.020
SETTLE_SECONDS = 1.0
CLIENT_GRACE_SECONDS = 10.0
DRAIN_LIMIT_SECONDS = 20.0
HTTP_TIMEOUT_SECONDS = 10.0
HELLO = b"Hello, world!"
MIB = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results" / "reset_burst.md"
RESET_LINGER = struct.pack("ii", 1, 0)


# The client: one burst against one port, run in its own process on LOAD_CPU.


def _client(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="reset_burst.py client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--partial", type=int, required=True, help="body bytes sent")
    parser.add_argument("--reset", choices=("each", "together"), required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)
    head = (
        f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {DECLARED_LENGTH}\r\n\r\n"
    ).encode()
    message = memoryview(head + b"x" * args.partial)
    started = time.monotonic()
    deadline = started + args.timeout
    selector = selectors.DefaultSelector()
    report = {"asked": args.connections, "failed_to_connect": 0, "cut_by_server": 0}

    connecting: set[socket.socket] = set()
    for _ in range(args.connections):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if sock.connect_ex((HOST, args.port)) not in (0, errno.EINPROGRESS):
            report["failed_to_connect"] += 1
            sock.close()
            continue
        selector.register(sock, selectors.EVENT_WRITE)
        connecting.add(sock)
    connected: list[socket.socket] = []
    while connecting and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            sock = key.fileobj  # type: ignore[assignment]
            selector.unregister(sock)
            connecting.discard(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                report["failed_to_connect"] += 1
                sock.close()
            else:
                connected.append(sock)
    for sock in connecting:
        selector.unregister(sock)
        _reset(sock)
    report["failed_to_connect"] += len(connecting)
    report["opened"] = len(connected)
    report["connect_seconds"] = time.monotonic() - started

    offsets = {sock: 0 for sock in connected}
    for sock in connected:
        selector.register(sock, selectors.EVENT_WRITE)
    written: list[socket.socket] = []
    while offsets and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            sock = key.fileobj  # type: ignore[assignment]
            try:
                offsets[sock] += sock.send(message[offsets[sock] :])
            except BlockingIOError:
                continue
            except OSError:  # the server cut it first
                report["cut_by_server"] += 1
                selector.unregister(sock)
                del offsets[sock]
                _reset(sock)
                continue
            if offsets[sock] == len(message):
                selector.unregister(sock)
                del offsets[sock]
                written.append(sock)
                if args.reset == "each":
                    _reset(sock)
    report["reset_mid_body"] = len(written)
    report["unfinished"] = len(offsets)
    for sock in [*written, *offsets] if args.reset == "together" else offsets:
        _reset(sock)
    report["seconds"] = time.monotonic() - started
    print(json.dumps(report), flush=True)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset: SO_LINGER on with a 0 s timeout."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
    except OSError:
        pass
    sock.close()


# The measurement: bursts against one running server, its RSS sampled meanwhile.


@dataclass
class Burst:
    client: dict[str, float]
    peak: int
    after: int
    #: From the burst's start until the server's open files were back to "before"
    #: (every reset connection closed) for good; None if not within DRAIN_LIMIT_SECONDS.
    drained_seconds: float | None
    samples: list[tuple[float, int]]


@dataclass
class ServerResult:
    before: int
    fds_before: int
    bursts: list[Burst] = field(default_factory=list)
    vm_hwm: int | None = None
    fds_after: int = 0
    get_after: str = "not checked"

    @property
    def peak(self) -> int:
        return max(burst.peak for burst in self.bursts)

    @property
    def after(self) -> int:
        return self.bursts[-1].after

    @property
    def answers(self) -> bool:
        return self.get_after == "200"


def measure(server: RunningServer, args: argparse.Namespace) -> ServerResult:
    _warm_up(server.port)
    time.sleep(SETTLE_SECONDS)
    tree = _tree(server.pid)
    result = ServerResult(before=_rss(tree), fds_before=_fds(tree))
    hwm_reset = _reset_peak(tree)
    for number in range(args.bursts):
        _progress(f"  burst {number + 1}/{args.bursts}")
        result.bursts.append(_burst(server.port, tree, result.fds_before, args))
    result.vm_hwm = _vm_hwm(tree) if hwm_reset else None
    result.fds_after = _fds(tree)
    result.get_after = _get_status(server.port)
    return result


def _burst(
    port: int, tree: list[psutil.Process], fds_before: int, args: argparse.Namespace
) -> Burst:
    """Run one burst client, sampling the server's RSS until it has closed every reset
    connection (its open files are back to ``fds_before``) and SETTLE_SECONDS more."""
    command = [
        "taskset", "-c", LOAD_CPU, sys.executable, __file__, "client",
        "--port", str(port), "--connections", str(args.connections),
        "--partial", str(args.partial_kib * 1024), "--reset", args.reset,
        "--timeout", str(args.timeout),
    ]  # fmt: skip
    samples: list[tuple[float, int]] = []
    started = tick = time.monotonic()
    exited: float | None = None
    drained: float | None = None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while True:
            now = time.monotonic()
            samples.append((round(now - started, 3), _rss(tree)))
            if exited is None:
                if process.poll() is not None:
                    exited = now
                elif now - started > args.timeout + CLIENT_GRACE_SECONDS:
                    raise RuntimeError("the burst client did not finish in time")
            if exited is not None:
                if _fds(tree) > fds_before:
                    drained = None  # (again: it accepted one more from its backlog)
                elif drained is None:
                    drained = now
                if drained is not None and now - drained >= SETTLE_SECONDS:
                    break
                if drained is None and now - exited >= DRAIN_LIMIT_SECONDS:
                    break
            tick += SAMPLE_SECONDS
            time.sleep(max(0.0, tick - time.monotonic()))
        output, _ = process.communicate()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode:
        raise RuntimeError(f"the burst client failed with status {process.returncode}")
    client = json.loads(output.splitlines()[-1])
    peak = max(rss for _, rss in samples)
    drained_seconds = None if drained is None else round(drained - started, 3)
    return Burst(client, peak, samples[-1][1], drained_seconds, samples)


def _warm_up(port: int) -> None:
    """One complete 1 MiB echo and one GET, so that 'before' has every code path loaded."""
    body = b"w" * DECLARED_LENGTH
    connection = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT_SECONDS)
    try:
        connection.request("POST", "/", body=body)
        response = connection.getresponse()
        if response.status != 200 or response.read() != body:
            raise RuntimeError(f"warm-up echo failed: {response.status}")
    finally:
        connection.close()
    if (status := _get_status(port)) != "200":
        raise RuntimeError(f"warm-up GET failed: {status}")


def _get_status(port: int) -> str:
    """'200' if ``GET /`` answers 200 with ``Hello, world!``, else what went wrong."""
    connection = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT_SECONDS)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    if response.status != 200 or body != HELLO:
        return f"status {response.status}, body {body[:40]!r}"
    return "200"


def _tree(pid: int) -> list[psutil.Process]:
    """The server and its children, found once (psutil's children() scans /proc)."""
    process = psutil.Process(pid)
    return [process, *process.children(recursive=True)]


def _rss(tree: list[psutil.Process]) -> int:
    try:
        return sum(member.memory_info().rss for member in tree)
    except psutil.NoSuchProcess as error:
        raise RuntimeError(f"the server exited: {error}") from error


def _fds(tree: list[psutil.Process]) -> int:
    return sum(member.num_fds() for member in tree)


def _reset_peak(tree: list[psutil.Process]) -> bool:
    """Reset the kernel's peak RSS (VmHWM) of every member; False if not allowed."""
    try:
        for member in tree:
            Path(f"/proc/{member.pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _vm_hwm(tree: list[psutil.Process]) -> int | None:
    total = 0
    for member in tree:
        for line in Path(f"/proc/{member.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total or None


# The run: settings, each server in turn, the tables.


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=ECHO_SERVERS,
        default=list(DEFAULT_SERVERS),
        metavar="NAME",
        help=f"default: {' '.join(DEFAULT_SERVERS)}; any of {', '.join(ECHO_SERVERS)}",
    )
    parser.add_argument("--quick", action="store_true", help="300 connections, 1 burst")
    parser.add_argument("--connections", type=int, help="per burst; default 2000, quick 300")
    parser.add_argument("--bursts", type=int, help="per server; default 3, quick 1")
    parser.add_argument(
        "--partial-kib", type=int, default=256, help="body KiB sent before the reset (256)"
    )
    parser.add_argument(
        "--reset",
        choices=("each", "together"),
        default="each",
        help="reset each connection once its part is written (default), or all together",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds a burst may take (60)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    args.connections = args.connections or (300 if args.quick else 2000)
    args.bursts = args.bursts or (1 if args.quick else 3)
    if args.connections < 1 or args.bursts < 1:
        parser.error("--connections and --bursts must be at least 1")
    if not 0 <= args.partial_kib * 1024 < DECLARED_LENGTH:
        parser.error(f"--partial-kib must be below the declared {DECLARED_LENGTH // 1024}")
    return args


def main() -> None:
    if sys.argv[1:2] == ["client"]:
        _client(sys.argv[2:])
        return
    args = parse_args(sys.argv[1:])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers inherit it
    if hard != resource.RLIM_INFINITY and hard < args.connections + 100:
        _progress(f"warning: open-file limit {hard} is below the {args.connections + 100} needed")
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    started = time.monotonic()
    specs = [spec for spec in SERVERS if spec.name in args.servers]
    results: dict[str, ServerResult] = {}
    unavailable: dict[str, str] = {}
    for spec in specs:
        _progress(spec.name)
        try:
            with running(spec) as server:
                results[spec.name] = measure(server, args)
        except (ServerUnavailable, RuntimeError, OSError) as error:
            unavailable[spec.name] = f"{type(error).__name__}: {error}"
            _progress(f"{spec.name} unavailable: {error}")
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    table = _table(specs, results, unavailable, args, elapsed)
    _write(args, results, unavailable, table, elapsed)
    print(table)
    failed = [name for name, result in results.items() if not result.answers]
    if failed or unavailable:
        _progress(f"FAILED: {', '.join([*failed, *unavailable])}: see the table")
        sys.exit(1)


def _table(
    specs: list[ServerSpec],
    results: dict[str, ServerResult],
    unavailable: dict[str, str],
    args: argparse.Namespace,
    elapsed: float,
) -> str:
    reset = {"each": "as soon as its part is written", "together": "all together"}[args.reset]
    lines = [
        f"{args.bursts} burst(s) of {args.connections:,} connections opened at once, each "
        f"sending `POST /` with `Content-Length: {DECLARED_LENGTH}` and {args.partial_kib} KiB "
        f"of the body, then reset (SO_LINGER 0) {reset}; RSS of the server (and children) "
        f"sampled every {SAMPLE_SECONDS * 1000:.0f} ms; *drained*: every reset connection "
        f"closed, *after*: {SETTLE_SECONDS:g} s after the last burst was drained; MiB. "
        f"Server on CPU {SERVER_CPU}, client on CPU {LOAD_CPU}; "
        f"{elapsed:.0f} s in all.",
        "",
        "| server | reset mid-body | drained after s | RSS before | peak, each burst | after "
        "| peak - before | after - before | VmHWM | fds before → after | GET after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        if spec.name not in results:
            continue
        result = results[spec.name]
        reset_counts = " / ".join(f"{burst.client['reset_mid_body']:,}" for burst in result.bursts)
        drained = " / ".join(_seconds(burst.drained_seconds) for burst in result.bursts)
        peaks = " / ".join(_mib(burst.peak) for burst in result.bursts)
        hwm = _mib(result.vm_hwm) if result.vm_hwm else "—"
        get = "200" if result.answers else f"**FAILED**: {result.get_after}"
        lines.append(
            f"| {spec.name} | {reset_counts} | {drained} | {_mib(result.before)} | {peaks} "
            f"| {_mib(result.after)} | {_mib(result.peak - result.before)} "
            f"| {_mib(result.after - result.before)} | {hwm} "
            f"| {result.fds_before} → {result.fds_after} | {get} |"
        )
    lines += _ratios(specs, results)
    lines += _troubles(results, unavailable)
    return "\n".join(lines) + "\n"


def _ratios(specs: list[ServerSpec], results: dict[str, ServerResult]) -> list[str]:
    subjects = [s.name for s in specs if s.kind == "trioserve" and s.name in results]
    peers = [s.name for s in specs if s.kind != "trioserve" and s.name in results]
    if not subjects or not peers:
        return []
    lines = [
        "",
        "Growth ratios, peak - before / after - before (below 1.00x = trioserve grows less):",
        "",
        "| ratio |" + "".join(f" / {peer} |" for peer in peers),
        "|---|" + "---|" * len(peers),
    ]
    for subject in subjects:
        cells = []
        for peer in peers:
            mine, theirs = results[subject], results[peer]
            peak = _ratio(mine.peak - mine.before, theirs.peak - theirs.before)
            after = _ratio(mine.after - mine.before, theirs.after - theirs.before)
            cells.append(f" {peak} / {after} |")
        lines.append(f"| {subject} |" + "".join(cells))
    return lines


def _troubles(results: dict[str, ServerResult], unavailable: dict[str, str]) -> list[str]:
    notes = [f"* {name} unavailable: {reason}" for name, reason in unavailable.items()]
    for name, result in results.items():
        for number, burst in enumerate(result.bursts, 1):
            client = burst.client
            missing = {
                key: client[key]
                for key in ("failed_to_connect", "cut_by_server", "unfinished")
                if client[key]
            }
            if missing:
                notes.append(f"* {name}, burst {number}: {json.dumps(missing)}")
    return ["", "Not reset mid-body:", "", *notes] if notes else []


def _ratio(mine: int, theirs: int) -> str:
    return f"{mine / theirs:.2f}x" if theirs > 0 else "—"


def _seconds(value: float | None) -> str:
    return "not drained" if value is None else f"{value:.1f}"


def _mib(value: int) -> str:
    return f"{value / MIB:.1f}"


def _write(
    args: argparse.Namespace,
    results: dict[str, ServerResult],
    unavailable: dict[str, str],
    table: str,
    elapsed: float,
) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    settings = {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }
    raw = {
        "command": ["python", "bench/reset_burst.py", *sys.argv[1:]],
        "settings": settings,
        "seconds": round(elapsed, 1),
        "servers": {name: asdict(result) for name, result in results.items()},
        "unavailable": unavailable,
    }
    args.output.with_suffix(".json").write_text(json.dumps(raw))


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
