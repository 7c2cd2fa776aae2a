"""Connection-holding clients: idle keep-alive connections and slowloris."""

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from servers import HOST
from wrk import LOAD_CPU

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
BATCH = 100
SOCKET_TIMEOUT_SECONDS = 10.0
SLOWLORIS_SCRIPT = Path(__file__).resolve().parent / "slowloris.py"
SLOWLORIS_GRACE_SECONDS = 30.0

T = TypeVar("T")


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[int]:
    """Open ``count`` keep-alive connections, each after one full request and
    response, and hold them idle; yields how many completed their request."""
    with ExitStack() as stack:
        completed = 0
        for start in range(0, count, BATCH):
            batch = [stack.enter_context(_connect(port)) for _ in range(min(BATCH, count - start))]
            for client in batch:
                client.sendall(REQUEST)
            completed += sum(_read_response(client) for client in batch)
        yield completed


def _connect(port: int) -> socket.socket:
    client = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT_SECONDS)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def _read_response(client: socket.socket) -> bool:
    """Read one ``Hello, world!`` response; False if the server hung up."""
    received = b""
    try:
        while not received.endswith(b"Hello, world!"):
            chunk = client.recv(4096)
            if not chunk:
                return False
            received += chunk
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class SlowlorisReport:
    """What the slowloris client saw: connections opened, still open at the end."""

    opened: int
    still_open: int


def under_slowloris(
    port: int, connections: int, interval: float, hold: float, measure: Callable[[], T]
) -> tuple[T, SlowlorisReport]:
    """Call ``measure`` while bench/slowloris.py holds ``connections`` open.

    The slowloris client runs on LOAD_CPU and holds its connections for
    ``hold`` seconds once they are open, so ``measure`` must finish sooner.
    """
    command = [
        "taskset", "-c", LOAD_CPU, sys.executable, str(SLOWLORIS_SCRIPT),
        "--port", str(port), "--connections", str(connections),
        "--interval", str(interval), "--hold", str(hold),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout is not None
        if not process.stdout.readline():
            raise RuntimeError("slowloris client failed to open its connections")
        result = measure()
        output, _ = process.communicate(timeout=hold + SLOWLORIS_GRACE_SECONDS)
        return result, SlowlorisReport(**json.loads(output.splitlines()[-1]))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
