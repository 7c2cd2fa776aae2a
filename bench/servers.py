"""The servers under test: how to start each one pinned to the server CPU,
wait until it answers, measure it, and stop it with everything it started."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import psutil

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
APPS = BENCH / "apps"
SERVER_CPU = "0"
HOST = "127.0.0.1"
ASGI_APP = "asgi_app:app"
KEEP_ALIVE_SECONDS = "120"
READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 5.0
PROBE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

THROUGHPUT = "throughput"
ECHO = "echo"
IDLE = "idle"
SLOWLORIS = "slowloris"
WEBSOCKET = "websocket"
HTTP_SCENARIOS = frozenset({THROUGHPUT, ECHO, IDLE, SLOWLORIS})
ALL_SCENARIOS = HTTP_SCENARIOS | {WEBSOCKET}
#: Keepalive pings every hour: never within a run, so none interferes with the echo.
WS_PING_SECONDS = "3600"

Kind = Literal["trioserve", "peer", "limit"]
#: trioserve's HTTP engines (``--http``), and so the builds of h11 a limit is computed with.
Engine = Literal["h11", "h11-mypyc"]
PURE_H11: Engine = "h11"
FAST_ENGINE: Engine = "h11-mypyc"
ENGINES: tuple[Engine, ...] = (PURE_H11, FAST_ENGINE)


@dataclass(frozen=True)
class ServerSpec:
    """A server in the comparison: trioserve (the subject), a peer, or a limit."""

    name: str
    description: str
    kind: Kind
    command: Callable[[int], list[str]]
    scenarios: frozenset[str] = ALL_SCENARIOS
    #: trioserve's HTTP engine, passed as ``--http``; None for the other servers.
    engine: Engine | None = None

    @property
    def limit_engine(self) -> Engine:
        """The build of h11 whose limit this server is compared with: trioserve's own
        engine; pure h11 for the others (the peers that parse with h11 use pure h11;
        uvicorn-httptools, which uses neither, is compared with it too)."""
        return self.engine or PURE_H11


class ServerUnavailable(RuntimeError):
    """The server did not start or did not answer in time."""


@dataclass(frozen=True)
class RunningServer:
    spec: ServerSpec
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def rss_bytes(self) -> int:
        """Resident memory of the server and all of its child processes."""
        return sum(member.memory_info().rss for member in self._tree())

    def established_connections(self) -> int:
        """Client connections the server side holds open right now."""
        return sum(
            1
            for member in self._tree()
            for connection in member.net_connections(kind="tcp")
            if connection.status == psutil.CONN_ESTABLISHED
            and connection.laddr
            and connection.laddr.port == self.port
        )

    def _tree(self) -> list[psutil.Process]:
        process = psutil.Process(self.pid)
        return [process, *process.children(recursive=True)]


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _uvicorn(http: str, loop: str, ws: str | None = None) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        flags = f"--http {http} --loop {loop} --lifespan on --no-access-log"
        flags += f" --log-level warning --timeout-keep-alive {KEEP_ALIVE_SECONDS}"
        if ws is not None:
            flags += f" --ws {ws} --ws-per-message-deflate false"
            flags += f" --ws-ping-interval {WS_PING_SECONDS} --ws-ping-timeout {WS_PING_SECONDS}"
        return _python("-m", "uvicorn", ASGI_APP, *_bind_flags(port), *flags.split())

    return command


def _bind_flags(port: int) -> list[str]:
    return ["--host", HOST, "--port", str(port)]


def _script(path: Path, *args: str) -> Callable[[int], list[str]]:
    return lambda port: _python(str(path), *args, "--port", str(port))


def _trioserve_native(engine: Engine) -> Callable[[int], list[str]]:
    return _script(APPS / "native_app.py", "--keep-alive", KEEP_ALIVE_SECONDS, "--http", engine)


def _trioserve_asgi(engine: Engine, loop: str = "trio") -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        flags = ["--interface", "asgi", "--loop", loop, "--http", engine, *_bind_flags(port)]
        flags += ["--no-access-log"]
        flags += ["--no-ws-per-message-deflate", "--ws-ping-interval", "inf"]
        return _python("-m", "trioserve", ASGI_APP, *flags)

    return command


def _hypercorn_trio(port: int) -> list[str]:
    flags = f"--worker-class trio --workers 0 --keep-alive {KEEP_ALIVE_SECONDS}"
    flags += f" --bind {HOST}:{port}"
    return _python("-m", "hypercorn", *flags.split(), ASGI_APP)


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec(
        "trioserve",
        "trioserve, native handler, --http h11-mypyc",
        "trioserve",
        _trioserve_native(FAST_ENGINE),
        engine=FAST_ENGINE,
    ),
    ServerSpec(
        "trioserve-h11",
        "trioserve, native handler, --http h11 (pure Python)",
        "trioserve",
        _trioserve_native(PURE_H11),
        HTTP_SCENARIOS,
        engine=PURE_H11,
    ),
    ServerSpec(
        "trioserve-asgi",
        "trioserve, ASGI app (python -m trioserve --interface asgi), --http h11-mypyc",
        "trioserve",
        _trioserve_asgi(FAST_ENGINE),
        engine=FAST_ENGINE,
    ),
    ServerSpec(
        "trioserve-asgi-h11",
        "trioserve, ASGI app (python -m trioserve --interface asgi), --http h11 (pure Python)",
        "trioserve",
        _trioserve_asgi(PURE_H11),
        HTTP_SCENARIOS,
        engine=PURE_H11,
    ),
    ServerSpec(
        "trioserve-asgi-asyncio",
        "trioserve, ASGI app, --loop asyncio (the server as asyncio's trio guest), "
        "--http h11-mypyc",
        "trioserve",
        _trioserve_asgi(FAST_ENGINE, "asyncio"),
        HTTP_SCENARIOS,
        engine=FAST_ENGINE,
    ),
    ServerSpec(
        "trioserve-asgi-uvloop",
        "trioserve, ASGI app, --loop uvloop, --http h11-mypyc",
        "trioserve",
        _trioserve_asgi(FAST_ENGINE, "uvloop"),
        HTTP_SCENARIOS,
        engine=FAST_ENGINE,
    ),
    ServerSpec(
        "hypercorn-trio",
        "hypercorn, trio worker, in-process (--workers 0)",
        "peer",
        _hypercorn_trio,
    ),
    ServerSpec(
        "uvicorn-h11",
        "uvicorn, h11 + asyncio",
        "peer",
        _uvicorn("h11", "asyncio"),
        HTTP_SCENARIOS,
    ),
    ServerSpec(
        "uvicorn-httptools",
        "uvicorn, httptools + uvloop",
        "peer",
        _uvicorn("httptools", "uvloop"),
        HTTP_SCENARIOS,
    ),
    ServerSpec(
        "uvicorn-wsproto",
        "uvicorn, h11 + asyncio, --ws wsproto",
        "peer",
        _uvicorn("h11", "asyncio", "wsproto"),
        frozenset({WEBSOCKET}),
    ),
    ServerSpec(
        "uvicorn-websockets",
        "uvicorn, h11 + asyncio, --ws websockets",
        "peer",
        _uvicorn("h11", "asyncio", "websockets"),
        frozenset({WEBSOCKET}),
    ),
    ServerSpec(
        "trio-h11-loop",
        "plain trio + h11 loop (bench/apps/h11_loop.py)",
        "peer",
        _script(APPS / "h11_loop.py"),
        HTTP_SCENARIOS,
    ),
    ServerSpec(
        "trio-raw",
        "raw trio socket loop: prebuilt response, no parsing (bench/limits.py)",
        "limit",
        _script(BENCH / "limits.py", "serve-raw"),
        frozenset({THROUGHPUT, IDLE}),
    ),
    ServerSpec(
        "trio-ws-raw",
        "raw trio WebSocket echo: frames by hand, no wsproto (bench/ws_raw.py)",
        "limit",
        _script(BENCH / "ws_raw.py"),
        frozenset({WEBSOCKET}),
    ),
)
SERVER_NAMES = tuple(spec.name for spec in SERVERS)


def server_spec(name: str) -> ServerSpec:
    return next(spec for spec in SERVERS if spec.name == name)


@contextmanager
def running(spec: ServerSpec, *, tls: bool = False) -> Iterator[RunningServer]:
    """Start ``spec`` on SERVER_CPU in its own process group; stop it on exit.
    ``tls``: it serves HTTPS (the readiness probe speaks TLS, trusting any cert)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(APPS)])}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *spec.command(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(process, port, log, tls=tls)
            yield RunningServer(spec, process.pid, port)
        finally:
            _stop(process)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: IO[bytes], *, tls: bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(f"exited with {process.returncode}: {_tail(log)}")
        if _answers(port, tls=tls):
            return
        time.sleep(0.1)
    waited = f"{READY_TIMEOUT_SECONDS:g}s"
    raise ServerUnavailable(f"no answer within {waited}: {_tail(log)}")


def _answers(port: int, *, tls: bool = False) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as plain:
            client = _UNVERIFIED.wrap_socket(plain) if tls else plain
            client.sendall(PROBE)
            return client.recv(4096).split(b" ", 2)[1:2] == [b"200"]  # HTTP/1.0 too (http.server)
    except OSError:
        return False


_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE


def _tail(log: IO[bytes], limit: int = 400) -> str:
    log.seek(0)
    return log.read()[-limit:].decode(errors="replace").strip()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, give it time to exit, then SIGKILL what is left."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass
