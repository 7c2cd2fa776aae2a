from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import trioserve


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
