"""The phases of a connection and the deadline that governs each.

Each phase of a connection runs under a deadline that governs exactly that phase
(``Config`` says how long; ``_connection`` moves one cancel scope's deadline from
phase to phase):

====================  ==========================================  ===============
phase                 deadline                                    on expiry
====================  ==========================================  ===============
PROXY header          accept + header_timeout                     close quietly
TLS handshake         accept + handshake_timeout                  close quietly
idle, first request   accept + header_timeout                     close quietly
idle, kept alive      end of last response + keep_alive_timeout   close quietly
request head          first byte (accept, for the first request)  408, close
                      + header_timeout, never reset by progress
request body          body_timeout without a byte, or the         408 (raised
                      minimum average rate after the grace        into the
                                                                  handler), close
writing               write_timeout without progress              abort
====================  ==========================================  ===============

Over TLS the first request's deadlines run from the end of the handshake. The
PROXY header and handshake (``_opening``) are idle for shutdown and eviction. So
are empty lines (RFC 9112 2.2). A request whose bytes were in hand when an idle
wait ended (deadline, shutdown, eviction) is served: it came by then, and its
client cannot tell. The handler itself has no deadline: it is the application's.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["HANDLER", "HEAD", "IDLE", "WRITE", "Phase"]


class Phase(enum.Enum):
    """What the connection task is doing, so that when its scope fires we know why."""

    PROXY_HEADER = "reading a PROXY protocol header"  # deadline: close quietly
    HANDSHAKE = "in the TLS handshake"  # deadline: close quietly
    IDLE = "waiting for a request's first bytes"  # tracker may cancel: close quietly
    HEAD = "receiving the rest of a request head"  # deadline: 408
    HANDLER = "running the handler or a streamed body"  # no deadline
    WRITE = "writing"  # deadline: abort


# Module-level names for the hot path (a global lookup, not a class attribute one).
IDLE: Final = Phase.IDLE
HEAD: Final = Phase.HEAD
HANDLER: Final = Phase.HANDLER
WRITE: Final = Phase.WRITE
