"""Test your handlers in memory and in virtual time.

``open_client`` gives a client that calls a handler through the real server engine
over in-memory streams; ``open_connection`` gives the raw client end of one
connection (to a handler, or to a ``Server`` you keep), to send arbitrary bytes, and
``parse_responses`` (all at once, after the close) or ``ResponseReader`` (one at a
time) check what came back with a real h11 client; the fault injectors play
misbehaving clients (``trickle``, ``send_with_stall``, ``send_then_close``,
``receive_then_close``, ``reset``, ``FailAfter``; a client that never reads is one
that never calls ``receive_some``, since the in-memory buffers are bounded like a
socket's). ``check_handler`` runs all of those faults on your handler and asserts the
server's answers. All of it works under
``trio.testing.MockClock(autojump_threshold=0)``, so a test of a 30-second deadline
runs in microseconds::

    async def test_slowloris(autojump_clock):
        async with open_connection(handler) as stream, trio.open_nursery() as nursery:
            nursery.start_soon(trickle, stream, b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            [response] = parse_responses(await receive_all(stream))
            assert trio.current_time() == trioserve.Config().header_timeout
        assert response.status == 408

    async def test_my_handler_keeps_the_servers_defences(autojump_clock):
        await check_handler(handler)
"""

from ._check import check_handler as check_handler
from ._client import Client as Client
from ._client import open_client as open_client
from ._client import open_connection as open_connection
from ._faults import receive_all as receive_all
from ._faults import receive_then_close as receive_then_close
from ._faults import reset as reset
from ._faults import send_then_close as send_then_close
from ._faults import send_with_stall as send_with_stall
from ._faults import trickle as trickle
from ._listener import MemoryListener as MemoryListener
from ._responses import ResponseReader as ResponseReader
from ._responses import TestResponse as TestResponse
from ._responses import parse_responses as parse_responses
from ._streams import FailAfter as FailAfter
from ._streams import PipeStream as PipeStream
from ._streams import stream_pair as stream_pair
from ._websocket import WebSocketClient as WebSocketClient
from ._websocket import WebSocketRejected as WebSocketRejected
from ._websocket import open_websocket as open_websocket
