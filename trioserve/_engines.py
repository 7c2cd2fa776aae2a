"""The HTTP/1.1 engines: the builds of h11 a server can run on, chosen by name.

Rules for this module:
1. With ``_http11``, it is the only server module that imports h11, and it never
   awaits. It loads a build once per ``Server`` (``load_engine``), never per connection
   or request; ``_http11`` reads the build through the ``Engine`` it is given, so no
   other module knows which build runs.
2. Both builds are h11's own source: ``h11`` as published, and ``h11_mypyc``, the same
   source compiled by mypyc (the ``fast`` extra), with the same API and classes and
   exceptions of its own. An ``Engine`` holds what ``_http11`` uses of one build under
   h11's names, and mypy checks both builds against pure h11's annotations.
3. ``auto`` is the fastest build that imports; a build asked for by name that does not
   import is an ``ImportError`` that says how to install it, never a silent fallback.
"""

from __future__ import annotations

import importlib
import types
from typing import Final

import h11

from ._config import HTTPEngineName

__all__ = ["AUTO_ORDER", "Engine", "load_engine"]

#: Each build's module.
_MODULES: Final = {"h11": "h11", "h11-mypyc": "h11_mypyc"}

#: The builds ``auto`` tries, fastest first.
AUTO_ORDER: tuple[str, ...] = ("h11-mypyc", "h11")


class Engine:
    """One build of h11: its name, its version, and the names ``_http11`` uses of it."""

    __slots__ = (
        "Connection",
        "DONE",
        "Data",
        "EndOfMessage",
        "IDLE",
        "InformationalResponse",
        "LocalProtocolError",
        "MIGHT_SWITCH_PROTOCOL",
        "MUST_CLOSE",
        "NEED_DATA",
        "RemoteProtocolError",
        "Request",
        "Response",
        "SEND_BODY",
        "SEND_RESPONSE",
        "SERVER",
        "end_of_message",
        "informational_100",
        "name",
        "version",
    )

    def __init__(self, name: str, module: types.ModuleType) -> None:
        #: ``"h11"`` or ``"h11-mypyc"``, as ``Config.http`` names it.
        self.name = name
        #: The version of the build imported.
        self.version = str(module.__version__)
        # The module's names are untyped here (a ModuleType's attributes): each is
        # given pure h11's type, which the build shares (rule 2).
        self.Connection: type[h11.Connection] = module.Connection
        self.SERVER: type[h11.SERVER] = module.SERVER
        self.NEED_DATA: type[h11.NEED_DATA] = module.NEED_DATA
        self.Request: type[h11.Request] = module.Request
        self.Response: type[h11.Response] = module.Response
        self.InformationalResponse: type[h11.InformationalResponse] = module.InformationalResponse
        self.Data: type[h11.Data] = module.Data
        self.EndOfMessage: type[h11.EndOfMessage] = module.EndOfMessage
        self.RemoteProtocolError: type[h11.RemoteProtocolError] = module.RemoteProtocolError
        self.LocalProtocolError: type[h11.LocalProtocolError] = module.LocalProtocolError
        # States, compared with ``is`` only.
        self.IDLE: object = module.IDLE
        self.SEND_RESPONSE: object = module.SEND_RESPONSE
        self.SEND_BODY: object = module.SEND_BODY
        self.DONE: object = module.DONE
        self.MUST_CLOSE: object = module.MUST_CLOSE
        self.MIGHT_SWITCH_PROTOCOL: object = module.MIGHT_SWITCH_PROTOCOL  # not in h11's __all__
        # Events that never change, built once per build rather than per response.
        self.end_of_message = self.EndOfMessage()
        self.informational_100 = self.InformationalResponse(
            status_code=100, headers=[], reason=b"Continue"
        )

    def __str__(self) -> str:
        """``h11-mypyc 0.17.0``: the build and its version, for logs and ``--version``."""
        return f"{self.name} {self.version}"

    def __repr__(self) -> str:
        return f"<Engine {self}>"


def load_engine(name: HTTPEngineName) -> Engine:
    """The build of h11 that ``Config.http`` names: ``"auto"``, ``"h11"`` or ``"h11-mypyc"``.

    ``"auto"`` is the first build of :data:`AUTO_ORDER` that imports: ``h11-mypyc``
    when installed, else ``h11`` (a dependency of trioserve, always there).

    Raises:
        ImportError: the build named is not installed, or does not import; the message
            says how to install it.
    """
    if name != "auto":
        return _load(name)
    for choice in AUTO_ORDER:
        try:
            return _load(choice)
        except ImportError:
            continue  # not installed: the next one
    raise ImportError(f"none of the HTTP engines {', '.join(AUTO_ORDER)} can be imported")


def _load(name: str) -> Engine:
    module_name = _MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"the HTTP engine {name} cannot be imported ({exc}): install it with "
            f"pip install 'trioserve[fast]', or use the engine auto or h11",
            name=module_name,
        ) from exc
    return Engine(name, module)
