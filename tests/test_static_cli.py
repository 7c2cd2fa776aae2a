"""``python -m trioserve.static``: http.server's arguments and line, a listing, a
graceful Ctrl+C."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.processes import running
from trioserve.static.__main__ import _parser, _serving_line

# The line goes to stdout, as http.server's does; the helper reads stderr.
TO_STDERR = ["sh", "-c", 'exec "$0" "$@" 1>&2']
SERVING_HTTP = rb"Serving HTTP on 127\.0\.0\.1 port (\d+) \(http://127\.0\.0\.1:\d+/\) \.\.\."


def test_http_server_arguments() -> None:
    defaults = _parser().parse_args([])
    assert (defaults.bind, defaults.port) == (None, 8000)
    given = _parser().parse_args(["-b", "::1", "-d", "/srv", "9000"])
    assert (given.bind, given.directory, given.port) == ("::1", "/srv", 9000)
    assert _serving_line("::", 8000) == "Serving HTTP on :: port 8000 (http://[::]:8000/) ..."


async def test_serves_a_listing_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "a <b>.txt").write_text("hello")
    command = [*TO_STDERR, sys.executable, "-m", "trioserve.static"]
    command += ["-b", "127.0.0.1", "-d", str(tmp_path), "0"]
    async with running(command, ready=SERVING_HTTP) as child:
        listing = await child.get(b"/")
        file = await child.get(b"/a%20%3Cb%3E.txt")
        child.process.send_signal(signal.SIGINT)
        status = await child.wait()
    assert listing.startswith(b"HTTP/1.1 200 ")
    assert b'href="./a%20%3Cb%3E.txt">a &lt;b&gt;.txt</a>' in listing
    assert file.startswith(b"HTTP/1.1 200 ")
    assert file.endswith(b"hello")
    assert status == 0
    assert b"shutting down gracefully" in child.stderr


async def test_not_a_directory(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "trioserve.static", "-d", str(tmp_path / "nope"), "0"]
    async with running(command, ready=None) as child:
        status = await child.wait()
    assert status == 2
    assert b"not a directory" in child.stderr
