from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import trio

import trioserve
from trioserve import _engines
from trioserve._guest import run_as_guest

T = TypeVar("T")


async def hello(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, headers=[("content-type", "text/plain")], body=b"Hello, world!")


async def echo(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=await request.body())


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short temporary directory for Unix sockets: their paths are limited to about
    107 bytes, and pytest's ``tmp_path`` can be longer."""
    path = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() sets up the trioserve loggers; put them back as they were."""
    loggers = [logging.getLogger("trioserve.error"), logging.getLogger("trioserve.access")]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    yield
    for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


# --- The ASGI suites on both loops -----------------------------------------------------

#: Test modules whose every test also runs with the engine as a trio guest of an
#: asyncio loop (``--loop asyncio``): the ASGI adapter's suites. Their tests get a
#: ``loop`` parameter, ``trio`` or ``asyncio``, shown in the test id.
BOTH_LOOPS = frozenset({"test_asgi", "test_asgi_apps", "test_asgi_websocket", "test_asgi_workers"})


def guest_run(
    fn: Callable[[], Awaitable[T]],
    *,
    clock: trio.abc.Clock | None = None,
    instruments: Sequence[trio.abc.Instrument] = (),
) -> T:
    """pytest-trio's runner for the ``asyncio`` runs: a guest run on a new asyncio loop."""
    return asyncio.run(run_as_guest(fn, clock=clock, instruments=instruments))


@pytest.fixture
def loop(request: pytest.FixtureRequest) -> str:
    """The loop the test runs on (parametrized by ``pytest_generate_tests``)."""
    return str(getattr(request, "param", "trio"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    engine = run_engine(metafunc.config)
    if engine is not None:
        # The engine in every test id, so that a failure says which engine it failed on.
        metafunc.fixturenames.append("http_engine")
        metafunc.parametrize("http_engine", [engine], indirect=True)
    module = metafunc.module.__name__.rpartition(".")[2]
    if module in BOTH_LOOPS and inspect.iscoroutinefunction(metafunc.function):
        if "loop" not in metafunc.fixturenames:
            metafunc.fixturenames.append("loop")
        # Virtual time stays on trio: a MockClock that jumps when trio is idle cannot see
        # the asyncio tasks still at work, whose own clock is asyncio's real one.
        virtual = {"autojump_clock", "mock_clock"} & set(metafunc.fixturenames)
        metafunc.parametrize("loop", ["trio"] if virtual else ["trio", "asyncio"], indirect=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("loop") == "asyncio":
            # pytest-trio takes the first ``trio`` mark that names a runner.
            item.add_marker(pytest.mark.trio(run=guest_run))


# --- The whole suite on both HTTP engines -----------------------------------------------

#: The builds of h11 the suite runs on. ``python -m pytest`` runs every test once per
#: engine: pyproject's addopts start two pytest-xdist workers with ``--dist each`` (each
#: runs the whole suite) and worker N serves with ``ENGINES[N]``. ``-p no:xdist
#: --http-engine h11`` (or ``h11-mypyc``) runs one engine in this process.
ENGINES = ("h11", "h11-mypyc")
#: Put first on the PYTHONPATH of the child processes of the h11 run: hides h11_mypyc.
HIDE_H11_MYPYC = str(Path(__file__).parent / "hide_h11_mypyc")
#: What ``auto`` tries, as trioserve ships it (a run of one engine narrows it).
SHIPPED_AUTO_ORDER = _engines.AUTO_ORDER


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--http-engine",
        choices=ENGINES,
        help="the HTTP engine the servers of this run get for Config.http = 'auto' (the "
        "default), here and in child processes (default: by xdist worker, gw0 h11 and gw1 "
        "h11-mypyc; without xdist, whichever 'auto' finds)",
    )


def run_engine(config: pytest.Config) -> str | None:
    """The engine this run serves with, or None for whatever ``auto`` finds."""
    chosen: str | None = config.getoption("--http-engine")
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    if chosen is None and worker is not None:
        number = int(worker.removeprefix("gw"))
        if number >= len(ENGINES):  # -n 3, or a replaced worker: which engine is missing?
            raise pytest.UsageError(f"xdist worker {worker}: run with -n {len(ENGINES)}")
        chosen = ENGINES[number]
    return chosen


def pytest_configure(config: pytest.Config) -> None:
    engine = run_engine(config)
    if engine is None:
        return
    # Fails the run (not a test) when h11-mypyc is asked for and missing: CI must never
    # pass by running h11 twice.
    try:
        _engines.load_engine(engine)  # type: ignore[arg-type]  # one of ENGINES
    except ImportError as exc:
        raise pytest.UsageError(f"--http-engine {engine}: {exc}") from None
    # In this process: 'auto' resolves to the run's engine; an explicit name still works.
    _engines.AUTO_ORDER = (engine,)
    if engine == "h11":
        # In child processes (the command line, workers, gunicorn, programs): h11_mypyc
        # is not installed, as far as they can tell.
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (HIDE_H11_MYPYC, path) if p)


def pytest_report_header(config: pytest.Config) -> str:
    engine = run_engine(config)
    if engine is not None:
        return f"HTTP engine: {engine}"
    if getattr(config.option, "dist", "no") == "each":
        workers = ", ".join(f"gw{i} {name}" for i, name in enumerate(ENGINES))
        return f"HTTP engines: every test on each xdist worker ({workers})"
    return f"HTTP engine: {_engines.load_engine('auto')} ('auto': no --http-engine)"


@pytest.fixture
def http_engine(request: pytest.FixtureRequest) -> str:
    """The engine this run serves with: ``h11`` or ``h11-mypyc`` (the one ``auto``
    resolves to when no ``--http-engine`` and no xdist worker chose one)."""
    return str(getattr(request, "param", None) or _engines.load_engine("auto").name)
