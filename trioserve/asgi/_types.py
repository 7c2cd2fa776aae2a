"""The ASGI 3 vocabulary shared by the adapter's modules: types and the one exception.

Rules for this module:
1. ASGI messages are dicts of heterogeneous values, so they are typed as
   ``MutableMapping[str, object]`` and every value the adapter reads from an
   application is narrowed where it is read (``message_bytes``, ``message_bool``).
   Frameworks that type them with ``Any`` (Starlette, FastAPI) are compatible.
2. This module imports only value modules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Final

from .._errors import ClientDisconnected

__all__ = [
    "ASGI_VERSION",
    "ASGIApp",
    "ClientDisconnectedError",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "message_bool",
    "message_bytes",
    "message_headers",
]

#: A connection scope (``scope["type"]`` is ``"http"`` or ``"lifespan"``).
Scope = MutableMapping[str, object]
#: A message received from or sent to the application.
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application: ``async def app(scope, receive, send) -> None``.
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The ASGI version this adapter speaks (the single-callable interface of ASGI 3).
ASGI_VERSION: Final = "3.0"


class ClientDisconnectedError(ClientDisconnected, OSError):
    """Raised by ``send()`` once the client has gone or the response was aborted.

    ASGI HTTP spec 2.4 ("Disconnected Client - send exception") asks servers to raise
    a server-specific ``OSError`` subclass here, so an application streaming to a
    vanished client stops at once. It is also a :class:`trioserve.ClientDisconnected`,
    and the adapter never logs it (or what an application raises because of it)
    above DEBUG.
    """


def message_bytes(message: Mapping[str, object], key: str) -> bytes:
    """``message[key]`` as bytes (``b""`` when missing).

    Raises:
        TypeError: the value is not bytes-like.
    """
    value = message.get(key, b"")
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"ASGI message key {key!r} must be bytes, not {type(value).__name__}")


def message_bool(message: Mapping[str, object], key: str) -> bool:
    """``message[key]`` as a bool (``False`` when missing).

    Raises:
        TypeError: the value is not a bool.
    """
    value = message.get(key, False)
    if isinstance(value, bool):
        return value
    raise TypeError(f"ASGI message key {key!r} must be a bool, not {type(value).__name__}")


def message_headers(message: Mapping[str, object]) -> list[tuple[bytes, bytes]]:
    """``message["headers"]`` as a list of ``(name, value)`` bytes pairs (``[]`` when
    missing).

    Raises:
        TypeError: not an iterable of two-item pairs of bytes.
    """
    headers = message.get("headers", ())
    kind = message.get("type")
    if not isinstance(headers, Iterable):
        raise TypeError(f"ASGI {kind} 'headers' must be an iterable of pairs")
    pairs = []
    for pair in headers:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"ASGI {kind} headers must be [name, value] pairs, not {pair!r}")
        name, value = pair
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise TypeError(f"ASGI {kind} header names and values must be bytes: {pair!r}")
        pairs.append((name, value))
    return pairs
