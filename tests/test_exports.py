"""The public surface is exactly what we mean it to be (trio's test_exports habit).

Adding a public name is a decision: add it to ``PUBLIC`` here in the same change,
with a CHANGELOG line.
"""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path

import pytest

import trioserve
import trioserve.static
import trioserve.testing

PUBLIC = {
    "BadRequest",
    "ClientDisconnected",
    "Config",
    "ContentTooLarge",
    "FileChanged",
    "FormData",
    "HTTPError",
    "HTTPVersionNotSupported",
    "HeaderFieldsTooLarge",
    "Handler",
    "Headers",
    "ListenerError",
    "Request",
    "RequestTimeout",
    "Response",
    "Server",
    "ServerStatistics",
    "StartupError",
    "TLSConfigError",
    "TLSInfo",
    "URITooLong",
    "UnixSocketListener",
    "UploadFile",
    "WebSocket",
    "WebSocketClosed",
    "create_ssl_context",
    "fd_listener",
    "open_unix_listener",
    "reload_certificates",
    "run",
    "serve",
    "systemd_listeners",
}
TESTING_PUBLIC = {
    "Client",
    "FailAfter",
    "MemoryListener",
    "PipeStream",
    "ResponseReader",
    "TestResponse",
    "WebSocketClient",
    "WebSocketRejected",
    "check_handler",
    "open_client",
    "open_connection",
    "open_websocket",
    "parse_responses",
    "receive_all",
    "receive_then_close",
    "reset",
    "send_then_close",
    "send_with_stall",
    "stream_pair",
    "trickle",
}

STATIC_PUBLIC = {"StaticFiles"}


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user can reach, leaving out submodules (they are imported on demand)."""
    return {
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
    }


def test_trioserve_exports_exactly_the_intended_names() -> None:
    assert public_names(trioserve) == PUBLIC
    assert isinstance(trioserve.__version__, str)


def test_trioserve_testing_exports_exactly_the_intended_names() -> None:
    assert public_names(trioserve.testing) == TESTING_PUBLIC


def test_trioserve_static_exports_exactly_the_intended_names() -> None:
    assert public_names(trioserve.static) == STATIC_PUBLIC


@pytest.mark.parametrize(
    "module", [trioserve, trioserve.testing, trioserve.static], ids=lambda m: m.__name__
)
def test_init_only_re_exports_explicitly(module: types.ModuleType) -> None:
    # STYLE 1: ``from ._x import y as y``, one name per line, so type checkers treat each
    # name as deliberately public, and nothing else happens in __init__.py.
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    statements = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body
    exported = set()
    for statement in statements:
        assert isinstance(statement, ast.ImportFrom), ast.dump(statement)
        assert statement.level == 1
        assert statement.module is not None
        assert statement.module.startswith("_")
        [alias] = statement.names
        assert alias.asname == alias.name
        exported.add(alias.name)
    assert exported - {"__version__"} == public_names(module)


@pytest.mark.parametrize(
    "module", [trioserve, trioserve.testing, trioserve.static], ids=lambda m: m.__name__
)
def test_public_names_are_defined_in_the_package_and_documented(
    module: types.ModuleType,
) -> None:
    for name in public_names(module):
        value = getattr(module, name)
        assert value.__module__.startswith(module.__name__ + "._"), name
        assert inspect.getdoc(value), f"{module.__name__}.{name} has no docstring"


def test_package_is_typed() -> None:
    assert trioserve.__file__ is not None
    assert (Path(trioserve.__file__).parent / "py.typed").is_file()
