"""Autobahn's WebSocket conformance cases against trioserve, run by kosoku.

kosoku (a test dependency) runs the Autobahn test suite's own case files as a client:
each case opens a connection to an echo server, sends its frames, and judges what
comes back. Here the server is trioserve, in this process, on 127.0.0.1 and port 0;
kosoku runs as a child process (its Python API is asyncio's) and writes its report
under ``tmp_path``. Each run prints a one-line summary, shown whatever the capture
mode; docs/websocket-conformance.md has the figures.

Every case must be OK, both its behavior and its closing handshake, except the three
that the suite labels informational whatever the server does (see ``INFORMATIONAL``).
NON-STRICT, which Autobahn counts as passing, fails here: it marks a behavior short of
the canonical one (in 3.2, for one: the connection failed on a bad frame before the
echo of the good message sent ahead of it), and this test is here to catch those.

Compression is slow in Python: every run takes 36 of the 216 compression cases, and
``TRIOSERVE_AUTOBAHN_ALL=1`` takes them all (about 10 minutes per interface).

An interface is a factory of what ``trioserve.serve`` runs (a handler and its
lifespan): serving the same cases through another interface is one more entry in
``INTERFACES``.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

import trioserve
from trioserve.asgi import ASGIHandler

from .test_asgi_websocket import echo_app  # the ASGI echo: the same application there

#: Cases the suite labels INFORMATIONAL, both verdicts, whatever the server does: they
#: probe what RFC 6455 leaves open (kosoku's cases/case7_1_6.py: a message and a close
#: sent back to back; case7_13_1.py, case7_13_2.py: close codes 5000 and 65535).
INFORMATIONAL = frozenset({"7.1.6", "7.13.1", "7.13.2"})


# --- Interfaces: what trioserve.serve runs --------------------------------------------


@dataclass(frozen=True)
class Served:
    handler: trioserve.Handler
    lifespan: Callable[[], AbstractAsyncContextManager[object]] | None = None


async def native_echo(request: trioserve.Request) -> None:
    ws = await request.accept_websocket()
    async for message in ws:
        await ws.send(message)


def native() -> Served:
    return Served(native_echo)


def asgi() -> Served:
    handler = ASGIHandler(echo_app, lifespan="off")
    return Served(handler, handler.lifespan)


INTERFACES = [pytest.param(native, id="native"), pytest.param(asgi, id="asgi")]


# --- Case groups ------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Which cases kosoku runs (``-i``/``-x`` globs; no ``-i``: the whole suite), on a
    server with ``config``, ``parallelism`` cases at a time."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]
    config: trioserve.Config
    parallelism: int
    #: Real seconds that the kosoku run may take.
    bound: float = 180


def compression_cases(subcases: Iterable[int]) -> tuple[str, ...]:
    """The ids of these subcases in every compression group: 12.1-12.5 (five kinds of
    data) and 13.1-13.7 (seven permessage-deflate offers). Each subcase is a message
    size and a fragment size (kosoku's cases/case12_x_x.py, ``MSG_SIZES``). Exact ids,
    because kosoku's globs match prefixes: ``12.*.1`` takes 12.1.10 to 12.1.18 too."""
    return tuple(
        f"{major}.{group}.{subcase}"
        for major, groups in ((12, 5), (13, 7))
        for group in range(1, groups + 1)
        for subcase in subcases
    )


#: permessage-deflate (RFC 7692), on by default. The keepalive is off: Autobahn's
#: compression cases take any ping from the server for the end of the case (the base
#: Case.onPing finds the empty list of expected events matched, and closes), and the
#: longest cases pass ws_ping_interval's 20 s.
DEFLATE = trioserve.Config(ws_ping_interval=math.inf)
#: Set to run every compression case (216 per interface: about 10 minutes each on two
#: cores, zlib's compression of the large messages in this process being most of it).
ALL_ENV = "TRIOSERVE_AUTOBAHN_ALL"

GROUPS = [
    # Every case but compression (1.* to 10.*: the suite has no 8.* nor 11.*), with
    # permessage-deflate off (these cases do not offer it) and the other defaults:
    # ws_max_size's 16 MiB is the size of the largest messages, 9.1.6 and 9.2.6.
    pytest.param(
        Group(
            include=(),
            exclude=("12.*", "13.*"),
            config=trioserve.Config(ws_per_message_deflate=False),
            # Two at a time: the suite gives the server about a second to drop the TCP
            # connection after a closing handshake (else "FAILED BY CLIENT"), and four
            # at a time on a loaded 2-core machine once missed it (6.22.30, ASGI).
            parallelism=2,
        ),
        id="1-11-plain",
    ),
    # In every run, 36 of the 216 compression cases, in every kind of data and every
    # offer: subcases 1 and 5 (1000 messages of 16 B, of 4 KiB, each in one frame) and
    # 11 (1000 messages of 8 KiB, each in 256 B frames).
    pytest.param(
        Group(
            include=compression_cases([1, 5, 11]),
            exclude=(),
            config=DEFLATE,
            parallelism=4,
        ),
        id="12-13-deflate",
    ),
    # All of them, on demand: messages up to 128 KiB, in one frame or in 256 B to 32 KiB
    # frames.
    pytest.param(
        Group(include=("12.*", "13.*"), exclude=(), config=DEFLATE, parallelism=2, bound=1800),
        id="12-13-deflate-all",
        marks=pytest.mark.skipif(
            not os.environ.get(ALL_ENV),
            reason=f"every compression case takes about 10 minutes: set {ALL_ENV}=1",
        ),
    ),
]


# --- The test ---------------------------------------------------------------------------


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("interface", INTERFACES)
async def test_autobahn(
    interface: Callable[[], Served],
    group: Group,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kosoku = find_kosoku()
    served = interface()
    outdir = tmp_path / "reports"
    async with trio.open_nursery() as nursery:
        server: trioserve.Server = await nursery.start(
            functools.partial(
                trioserve.serve,
                served.handler,
                0,
                host="127.0.0.1",
                config=group.config,
                lifespan=served.lifespan,
            )
        )
        command = [kosoku, f"ws://127.0.0.1:{server.ports[0]}", "-p", str(group.parallelism)]
        command += [arg for case in group.include for arg in ("-i", case)]
        command += [arg for case in group.exclude for arg in ("-x", case)]
        command += ["-o", str(outdir)]
        started = time.monotonic()
        with trio.fail_after(group.bound):
            # kosoku's status is 1 when a case did not pass: the report tells which.
            run = await trio.run_process(
                command, check=False, capture_stdout=True, capture_stderr=True
            )
        seconds = time.monotonic() - started
        nursery.cancel_scope.cancel()
    index = outdir / "index.json"
    assert index.exists(), f"kosoku wrote no report (status {run.returncode}):\n" + (
        run.stdout + run.stderr
    ).decode(errors="replace")
    [cases] = json.loads(index.read_text()).values()  # one agent: trioserve
    assert cases, "kosoku ran no case"
    with capsys.disabled():
        print(f"\n{request.node.name}: {summary(cases, seconds, group.parallelism)}")
    failures = [
        describe(case_id, entry, outdir)
        for case_id, entry in sorted(cases.items(), key=lambda item: case_key(item[0]))
        if not passed(case_id, entry)
    ]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


def find_kosoku() -> str:
    """The kosoku command beside this Python (its virtual environment), else on PATH.
    A missing kosoku fails the test: it is a test dependency, not an optional one."""
    beside = Path(sys.executable).parent / "kosoku"
    found = str(beside) if beside.exists() else shutil.which("kosoku")
    if found is None:
        pytest.fail("kosoku is missing: install the test extra (pip install -e '.[test]')")
    return found


def passed(case_id: str, entry: dict[str, object]) -> bool:
    accepted = {"OK", "INFORMATIONAL"} if case_id in INFORMATIONAL else {"OK"}
    return entry["behavior"] in accepted and entry["behaviorClose"] in accepted


def summary(cases: dict[str, dict[str, object]], seconds: float, parallelism: int) -> str:
    """One line: the cases, the count of each verdict, the time the run took."""
    behaviors = collections.Counter(str(entry["behavior"]) for entry in cases.values())
    closes = collections.Counter(str(entry["behaviorClose"]) for entry in cases.values())
    groups = sorted({case_id.split(".")[0] for case_id in cases}, key=int)
    return (
        f"{len(cases)} cases ({', '.join(g + '.*' for g in groups)}); "
        f"behavior {counts(behaviors)}; close {counts(closes)}; "
        f"{seconds:.1f} s at -p {parallelism}"
    )


def counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{verdict} {n}" for verdict, n in counter.most_common())


def describe(case_id: str, entry: dict[str, object], outdir: Path) -> str:
    """A failing case: its verdicts, its description, and kosoku's reasons."""
    report = json.loads((outdir / str(entry["reportfile"])).read_text())
    description = re.sub(r"<[^>]+>", "", report["description"])
    return (
        f"  {case_id}: behavior {entry['behavior']}, behaviorClose {entry['behaviorClose']}"
        f" -- {description} ({report['result']} {report['resultClose']};"
        f" expected {report['expected']}, received {report['received'][:5]},"
        f" close code {report['remoteCloseCode']})"
    )


def case_key(case_id: str) -> list[int]:
    return [int(part) for part in case_id.split(".")]
