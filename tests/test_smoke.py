from __future__ import annotations

import trio
import trio.testing

import trioserve
from trioserve.testing import open_client, open_connection, receive_all

from .conftest import echo, hello


async def test_client_get_and_post() -> None:
    async with open_client(echo) as client:
        response = await client.post("/", body=b"abc")
        assert response.status == 200
        assert response.body == b"abc"
        response = await client.get("/")
        assert response.body == b""
        assert client.connections_opened == 1


async def test_raw_connection_header_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with open_connection(hello) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\n")
        answer = await receive_all(stream)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() == trioserve.Config().header_timeout
