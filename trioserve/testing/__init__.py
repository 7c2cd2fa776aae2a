"""Test your handlers in memory and in virtual time.

``open_client`` gives a client that calls a handler through the real server engine
over in-memory streams; ``open_connection`` gives the raw client end of one
connection, to send arbitrary bytes; the fault injectors play misbehaving clients.
All of it works under ``trio.testing.MockClock(autojump_threshold=0)``, so a test
of a 30-second deadline runs in microseconds.
"""

from ._client import Client as Client
from ._client import TestResponse as TestResponse
from ._client import open_client as open_client
from ._client import open_connection as open_connection
from ._client import parse_responses as parse_responses
from ._faults import receive_all as receive_all
from ._faults import receive_then_close as receive_then_close
from ._faults import reset as reset
from ._faults import send_then_close as send_then_close
from ._faults import send_with_stall as send_with_stall
from ._faults import trickle as trickle
from ._listener import MemoryListener as MemoryListener
from ._streams import FailAfter as FailAfter
from ._streams import PipeStream as PipeStream
from ._streams import stream_pair as stream_pair
