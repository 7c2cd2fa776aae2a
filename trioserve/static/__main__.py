"""``python -m trioserve.static``: serve a directory, as ``python -m http.server`` does.

Rules for this module:
1. The same arguments and defaults as ``python -m http.server``: ``[-b ADDRESS]
   [-d DIRECTORY] [port]``, port 8000, every interface, the directory listing on,
   and its ``Serving HTTP on ADDRESS port PORT (http://...) ...`` line on stdout.
   Its ``--cgi`` and ``--protocol`` are not offered (no CGI; HTTP/1.1 always).
2. Serving, signals and logging are ``trioserve.run``'s: Ctrl+C is a graceful
   shutdown, a second one forces it; one access log line per request on stderr.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

import trioserve

from ._files import StaticFiles

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trioserve.static",
        description="Serve the files of a directory over HTTP (like python -m http.server).",
    )
    parser.add_argument(
        "-b",
        "--bind",
        metavar="ADDRESS",
        help="bind to this address (default: all interfaces)",
    )
    parser.add_argument(
        "-d",
        "--directory",
        default=os.getcwd(),
        help="serve this directory (default: current directory)",
    )
    parser.add_argument(
        "port",
        default=8000,
        type=int,
        nargs="?",
        help="bind to this port (default: %(default)s)",
    )
    return parser


def _serving_line(host: str, port: int) -> str:
    # http.server's own words; "::" when it binds every interface on a dual-stack host.
    url_host = f"[{host}]" if ":" in host else host
    return f"Serving HTTP on {host} port {port} (http://{url_host}:{port}/) ..."


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``sys.argv[1:]`` when None), serve until Ctrl+C, return the
    exit status (see :func:`trioserve.run`)."""
    args = _parser().parse_args(argv)
    try:
        handler = StaticFiles(args.directory, listing=True)
    except NotADirectoryError as exc:
        print(f"trioserve.static: {exc}", file=sys.stderr, flush=True)
        return 2
    bind: str | None = args.bind
    shown = bind if bind is not None else ("::" if socket.has_ipv6 else "0.0.0.0")

    async def announce(server: trioserve.Server) -> None:
        print(_serving_line(shown, server.ports[0]), flush=True)

    return trioserve.run(handler, args.port, host=bind, while_serving=announce, announce=False)


if __name__ == "__main__":
    raise SystemExit(main())
