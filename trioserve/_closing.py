"""How a connection ends: a lingering close after a response, a reset after an abort.

Rules for this module:
1. After a response, the server stops writing and reads (and throws away) what the
   client still sends, for a moment, so that the kernel does not answer unread data
   with a reset that destroys the response in flight (RFC 9112 9.6).
2. An abort is a TCP reset: the client sees an error, never the clean end that a
   close-delimited body (HTTP/1.0) cannot tell from a complete one.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Final

import trio

from ._logging import error_logger

__all__ = ["LINGER_BYTES", "LINGER_SECONDS", "close", "close_gracefully", "reset_on_close"]

#: Before closing a connection after a response, we stop writing and read (and throw
#: away) what the client still sends, for at most this long and this much, so the
#: kernel does not answer unread data with a reset that destroys the response in
#: flight (RFC 9112 9.6 "lingering close").
LINGER_SECONDS: Final = 1.0
LINGER_BYTES: Final = 256 * 1024
#: Bytes asked per read while lingering.
_LINGER_READ: Final = 65536


async def close(stream: trio.abc.Stream, *, graceful: bool, reset: bool, peer_eof: bool) -> None:
    """End a connection: gracefully after a response, else at once (with a TCP reset
    when ``reset``). Never raises an ``Exception``: a bug of ours here must cost one
    connection, never the server (the stream is closed all the same)."""
    try:
        if graceful:
            await close_gracefully(stream, peer_eof=peer_eof)
            return
        if reset:
            reset_on_close(stream)
    except Exception:
        error_logger.exception("internal error closing a connection")
    await trio.aclose_forcefully(stream)


async def close_gracefully(stream: trio.abc.Stream, *, peer_eof: bool) -> None:
    """Half-close, read what the client still sends for a moment, then close."""
    try:
        with trio.move_on_after(LINGER_SECONDS):
            if isinstance(stream, trio.SSLStream):
                # TLS's half-close is close_notify: sent now, so that a body that
                # ends at the close (HTTP/1.0) ends at once, and visibly complete.
                # unwrap() then waits for the client's; many never send one.
                if peer_eof:
                    return  # the finally closes it: nobody is reading any more
                stream = await _send_close_notify(stream)
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            received = 0
            while received < LINGER_BYTES and not peer_eof:
                data = await stream.receive_some(_LINGER_READ)
                if not data:
                    break
                received += len(data)
    except (
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        trio.BusyResourceError,
    ):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _send_close_notify(stream: trio.SSLStream[trio.abc.Stream]) -> trio.abc.Stream:
    """Send close_notify and wait for the client's; return the transport (TLS is over
    once this returns, whether the client answered or left)."""
    transport = stream.transport_stream
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.unwrap()
    return transport


def reset_on_close(stream: trio.abc.Stream) -> None:
    """Make the coming close a TCP reset: the client sees an error, never the clean
    end that a close-delimited body (HTTP/1.0) cannot tell from a complete one."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed by the peer: nothing left to reset
