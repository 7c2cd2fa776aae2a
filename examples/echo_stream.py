"""Stream a request body back to the client as it arrives, without buffering it.

Run it with ``python examples/echo_stream.py`` (``--port N`` to choose the port), then
``curl -T big.iso http://127.0.0.1:8000/ > copy.iso``. The response is chunked, and
the server reads the next piece of the upload only when the previous one has been
written (backpressure: memory stays flat whatever the size). A body over
``Config.max_body_size`` ends the response early and the connection is cut.
"""

from __future__ import annotations

import argparse

import trioserve


async def handler(request: trioserve.Request) -> trioserve.Response:
    """Echo the body (``GET`` and friends have none: the answer is empty)."""
    content_type = request.headers.get("content-type") or "application/octet-stream"
    return trioserve.Response(200, headers=[("content-type", content_type)], body=request.stream())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    args = parser.parse_args()
    return trioserve.run(handler, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
