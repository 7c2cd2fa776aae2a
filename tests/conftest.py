from __future__ import annotations

import trioserve


async def hello(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, headers=[("content-type", "text/plain")], body=b"Hello, world!")


async def echo(request: trioserve.Request) -> trioserve.Response:
    return trioserve.Response(200, body=await request.body())
