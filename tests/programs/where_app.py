"""A native app for the Unix-socket, ``--fd`` and systemd tests of the command line:
``python -m trioserve tests.programs.where_app:handler``.

It answers every request with what it saw, as JSON: the client and server addresses,
the scheme, and the systemd variables left in its environment (none should be: the
server unsets them before the application runs, so its own children cannot take the
sockets for theirs).
"""

from __future__ import annotations

import json
import os

import trioserve


async def handler(request: trioserve.Request) -> trioserve.Response:
    seen = {
        "client": request.client,
        "server": request.server,
        "scheme": request.scheme,
        "environ": {name: os.environ.get(name) for name in ("LISTEN_FDS", "LISTEN_PID")},
    }
    return trioserve.Response(
        200, headers=[("content-type", "application/json")], body=json.dumps(seen)
    )
