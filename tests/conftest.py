from __future__ import annotations

import asyncio
import inspect
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import trio

import trioserve
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
