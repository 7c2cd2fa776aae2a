"""A WebSocket upgrade on a connection: the handshake check, the 101, and the end.

Rules for this module:
1. A request that asks for a WebSocket (``Upgrade: websocket``) is checked before its
   handler runs (RFC 6455 4.2.1): a bad handshake is answered here, 400 (or 426 with
   the version we speak), and the connection closes.
2. ``accept`` (``Request.accept_websocket``) stops the disconnect watcher, writes the
   101 under ``write_timeout``, and hands the stream and the bytes h11 read past the
   request to a ``WebSocket`` (DESIGN: an upgrade hands the stream over). Its reader
   and keepalive run in the connection's nursery, which outlives the handler call;
   the handler goes on in the connection task. From then on only the WebSocket reads
   or writes the stream.
3. When the handler returns, a WebSocket it left open is closed with 1000 (1011 if
   the handler raised), and the connection ends: no more HTTP on it. It closes
   gracefully after a closing handshake, with a reset after an abort (a write or ping
   timeout, a lost peer).
4. Graceful shutdown closes an open WebSocket with 1001 at once (1012 when the server
   restarts: ``Server.shutdown(restart=True)``, a worker being replaced); the connection
   nursery's deadline (``shutdown_timeout``) bounds the rest.
5. An upgrade the handler cannot take (``supports_websocket = False``: WSGI) or
   answers with a success instead (a handler that ignores ``is_websocket``) is
   served as plain HTTP and logged once per server at WARNING: the client only
   sees its upgrade refused, and the reason belongs in the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from ._errors import ClientDisconnected, single_leaf, split_failure
from ._exchange import Abort
from ._handler import supports_websocket
from ._logging import error_logger
from ._websocket import WebSocket, WebSocketClosed, aborted, finish_websocket, serve_websocket
from ._ws_protocol import accept_headers, handshake_problem

if TYPE_CHECKING:
    from ._connection import HTTPConnection
    from ._exchange import Exchange
    from ._request import Request
    from ._tracker import ConnectionTracker

__all__ = ["Upgrade", "accept", "end_websocket", "refuse_handshake", "upgrade_not_taken"]

HeaderPairs = Iterable[tuple[str | bytes, str | bytes]]


class Upgrade:
    """An accepted WebSocket of an exchange, and the end of its reader task."""

    __slots__ = ("done", "websocket")

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.done = trio.Event()  # set when the reader and keepalive have ended


async def refuse_handshake(connection: HTTPConnection, request: Request, started: float) -> bool:
    """Answer a bad opening handshake before any handler runs (rule 1); False if it is
    valid. Only for requests that ask for a WebSocket."""
    problem = handshake_problem(request.method, request.http_version, request.headers.raw)
    if problem is None:
        if not supports_websocket(connection._handler):
            _warn_once(connection, request, "has no WebSocket support: served as plain HTTP")
        return False
    counters = connection.counters
    counters.count_refusal(problem.status)
    counters.count_response(problem.status)
    if error_logger.isEnabledFor(logging.DEBUG):
        error_logger.debug("refused a WebSocket handshake %r: %s", request, problem.reason)
    proto = connection.proto
    body = problem.reason.encode("ascii") + b"\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), *problem.headers]
    head, body_allowed = proto.start_response(problem.status, headers, len(body), close=True)
    if body_allowed:
        head += b"".join(proto.send_data(body))
    await connection.send(head + proto.end_response())
    connection._log_access(request, problem.status, len(body) if body_allowed else 0, started)
    return True


def upgrade_not_taken(connection: HTTPConnection, request: Request, status: int) -> bool:
    """The handler answered a WebSocket request with HTTP: log a success once (rule 5).
    Returns True: the connection closes after the answer."""
    if 200 <= status < 300:
        _warn_once(
            connection,
            request,
            f"answered with {status} instead of accepting it (request.accept_websocket())",
        )
    return True


def _warn_once(connection: HTTPConnection, request: Request, what: str) -> None:
    tracker = connection._tracker
    if not tracker.websocket_warned:
        tracker.websocket_warned = True
        error_logger.warning(
            "WebSocket upgrade %r: the handler %r %s; the client sees its upgrade refused"
            " (logged once)",
            request,
            connection._handler,
            what,
        )


async def accept(
    connection: HTTPConnection,
    exchange: Exchange,
    subprotocol: str | None,
    headers: HeaderPairs,
) -> WebSocket:
    """Take the upgrade (rule 2): write the 101 and start the WebSocket.

    Raises:
        RuntimeError: not a WebSocket request, already accepted or answered, or not
            called while its handler runs.
        ValueError: the subprotocol was not offered, or a header is not allowed.
        trioserve.ClientDisconnected: the client left, or did not read the 101 within
            ``write_timeout`` (the connection is then cut off).
    """
    request = exchange.request
    proto = connection.proto
    if exchange.upgrade is not None:
        raise RuntimeError("the WebSocket is already accepted")
    if request is None or not request.is_websocket:
        raise RuntimeError("accept_websocket(): the request does not ask for a WebSocket")
    if exchange._over or not exchange._in_handler or not proto.can_switch_protocols:
        raise RuntimeError("accept_websocket(): the request was answered, or its handler ended")
    config = connection.config
    extra = [(_bytes(name), _bytes(value)) for name, value in headers]
    fields, protocol = accept_headers(
        request.headers.raw,
        subprotocol,
        extra,
        deflate=config.ws_per_message_deflate,
        max_size=config.ws_max_size,
    )
    await exchange.stop_watching()  # the WebSocket's reader is the only reader now
    data = proto.switch_protocols(fields)
    try:
        with trio.move_on_after(config.write_timeout) as scope:
            await connection.io.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        connection._write_cut_short()
        raise ClientDisconnected("connection lost before the 101") from exc
    if scope.cancelled_caught:
        connection.counters.write_timeouts += 1
        connection._write_cut_short()
        raise ClientDisconnected("client does not read the 101")
    connection.counters.count_response(101)
    ws = WebSocket(connection.stream, protocol, config, subprotocol=subprotocol)
    upgrade = exchange.upgrade = Upgrade(ws)
    task = functools.partial(_serve, ws, proto.switched_data(), connection._tracker)
    connection.start_soon(task, trio.CancelScope(), upgrade.done)
    return ws


async def _serve(
    ws: WebSocket,
    received: bytes,
    tracker: ConnectionTracker,
    scope: trio.CancelScope,
    done: trio.Event,
) -> None:
    """The WebSocket's reader and keepalive, and its close at a graceful shutdown."""
    try:
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_going_away, ws, tracker)
                await serve_websocket(ws, received)
                nursery.cancel_scope.cancel()
    except Exception:  # a bug of ours: it costs this connection, never the server
        error_logger.exception("internal error serving a WebSocket")
        ws._lost()
    finally:
        done.set()


async def _going_away(ws: WebSocket, tracker: ConnectionTracker) -> None:
    await tracker.shutdown_event.wait()
    await ws.shutdown(tracker.going_away_code)


async def end_websocket(
    connection: HTTPConnection,
    request: Request,
    exchange: Exchange,
    raised: BaseException | None,
    started: float,
) -> bool:
    """After the handler of an accepted WebSocket (rule 3): close it, wait for its
    reader, log it. Returns False (the connection ends); raises Abort for a reset."""
    failed = False
    if raised is not None:
        failure, rest = split_failure(raised)
        if rest is not None:
            raise rest from None  # the connection is cut off (shutdown_timeout, forced)
        exc = single_leaf(raised)
        if not isinstance(exc, (WebSocketClosed, ClientDisconnected)):
            failed = True
            connection.counters.handler_errors += 1
            error_logger.error(
                "WebSocket handler failed serving %r: %s", request, exc, exc_info=failure
            )
    upgrade = exchange.upgrade
    assert upgrade is not None  # else _respond raised TypeError for a non-Response
    ws = upgrade.websocket
    await finish_websocket(ws, failed=failed)
    await upgrade.done.wait()
    connection.counters.requests_served += 1
    connection._log_access(request, 101, 0, started)
    if aborted(ws):
        raise Abort
    return False


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")
