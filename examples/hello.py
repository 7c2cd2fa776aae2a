"""Hello, world: the smallest trioserve program.

Run it with ``python examples/hello.py`` (``--port N`` to choose the port, ``0`` for
any free one), then ``curl -v http://127.0.0.1:8000/``. Each response is logged on
stderr (one Combined Log Format line, then its duration in seconds), as the command
line does: ``trioserve.run`` sets that up when the program has not configured logging
itself. Ctrl+C shuts it down gracefully, with a log line as it starts and one as it
ends; a second Ctrl+C forces it.
"""

from __future__ import annotations

import argparse

import trioserve


async def handler(request: trioserve.Request) -> trioserve.Response:
    """Greet every request, whatever its method or path."""
    return trioserve.Response(
        200, headers=[("content-type", "text/plain; charset=utf-8")], body="Hello, world!\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    args = parser.parse_args()
    return trioserve.run(handler, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
