"""The application a command line names: importing it, and telling its interface.

Rules for this module:
1. Every mistake ends in a :class:`CLIError`: one line for the user, and an exit
   status (2 for a bad command line, as argparse; 1 for the rest). The traceback of
   an error in the user's own code goes to ``trioserve.error`` at DEBUG.
2. Detection looks only at the callable's signature; it never calls it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import re
import sys
from typing import Final, Literal

from ._run import EXIT_FAILURE, describe_exception

__all__ = [
    "USAGE_ERROR",
    "CLIError",
    "Interface",
    "InterfaceChoice",
    "choose_interface",
    "load_app",
]

Interface = Literal["native", "asgi", "wsgi"]
InterfaceChoice = Literal["auto", "native", "asgi", "wsgi"]

USAGE_ERROR: Final = 2  # argparse's exit status for a bad command line

#: How each interface is called, for detection: (arguments, must be async).
_CALLING_CONVENTIONS: Final[dict[Interface, tuple[int, bool]]] = {
    "native": (1, True),  # async def handler(request)
    "asgi": (3, True),  # async def app(scope, receive, send)
    "wsgi": (2, False),  # def app(environ, start_response)
}
_INTERFACE_NAMES: Final[dict[Interface, str]] = {
    "native": "native handler",
    "asgi": "ASGI 3",
    "wsgi": "WSGI",
}


class CLIError(Exception):
    """A mistake on the command line or in the application it names: one line, a status."""

    def __init__(self, message: str, *, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


# --- Loading the application ------------------------------------------------------------

_MODULE = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")


def load_app(spec: str, *, factory: bool = False, app_dir: str = ".") -> object:
    """Import ``MODULE:ATTR`` from ``app_dir`` (put first on ``sys.path``), as uvicorn does.

    Args:
        spec: ``"module:attr"``, ``"package.module:attr.nested"``.
        factory: call the attribute with no arguments and return what it returns.
        app_dir: the directory to import from; relative to the current directory.

    Raises:
        CLIError: the spec is malformed (status 2), or the module or attribute is
            missing, not callable, or raised while being imported or called; an error
            raised by the user's code is the ``__cause__``.
    """
    module_name, _, attribute = spec.partition(":")
    if not _MODULE.fullmatch(module_name) or not _MODULE.fullmatch(attribute):
        raise CLIError(
            f"expected the application as MODULE:ATTR, such as myapp:app, not {spec!r}",
            status=USAGE_ERROR,
        )
    directory = os.path.abspath(app_dir)
    if not os.path.isdir(directory):
        raise CLIError(f"--app-dir {app_dir!r} is not a directory", status=USAGE_ERROR)
    if sys.path[:1] != [directory]:
        sys.path.insert(0, directory)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Missing: the module itself or a package above it. Anything else is an import
        # that failed inside the user's code, which is what they need to see.
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise CLIError(
                f"module {exc.name!r} not found (importing from {directory}; "
                f"--app-dir changes that)"
            ) from None
        raise CLIError(f"importing {module_name} failed: {describe_exception(exc)}") from exc
    except Exception as exc:
        raise CLIError(f"importing {module_name} failed: {describe_exception(exc)}") from exc

    app: object = module
    for depth, part in enumerate(attribute.split(".")):
        try:
            app = getattr(app, part)
        except AttributeError:
            owner = ".".join([module_name, *attribute.split(".")[:depth]])
            names = [name for name in dir(app) if not name.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(f"{owner} has no attribute {part!r}{hint}") from None
        except Exception as exc:  # a property or module __getattr__ of the user's
            raise CLIError(f"getting {spec} failed: {describe_exception(exc)}") from exc
    if not callable(app):
        raise CLIError(f"{spec} is {_article(type(app).__name__)}, not a callable application")
    if not factory:
        return app
    try:
        product: object = app()
    except Exception as exc:
        raise CLIError(f"the factory {spec} raised {describe_exception(exc)}") from exc
    if inspect.isawaitable(product):
        if inspect.iscoroutine(product):
            product.close()  # never awaited: close it rather than warn
        raise CLIError(
            f"the factory {spec} returned an awaitable: it must be a plain function "
            "that returns the application"
        )
    if not callable(product):
        raise CLIError(
            f"the factory {spec} returned {_article(type(product).__name__)}, "
            "not a callable application"
        )
    return product


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


# --- Choosing the interface -------------------------------------------------------------


def choose_interface(
    app: object, choice: InterfaceChoice, spec: str = "the application"
) -> tuple[Interface, str]:
    """The interface to serve ``app`` with, and why, for the startup line.

    ``choice`` other than ``"auto"`` is taken as given. Otherwise the callable's
    signature decides: ``async`` and one positional parameter is a native handler,
    ``async`` and three is ASGI 3, not ``async`` and two is WSGI. For an instance
    that is its ``__call__``; for a class, its constructor, and "async" means its
    instances are awaitable (an ASGI 3 app can be a class whose instances are
    awaited). The application is never called.

    Raises:
        CLIError: the signature cannot be read, matches no interface, or more than
            one; the message says what was found and to pass ``--interface``.
    """
    if choice != "auto":
        return choice, f"--interface {choice}"
    if isinstance(app, type):
        is_async = callable(getattr(app, "__await__", None))
    else:
        is_async = inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
            getattr(app, "__call__", None)  # noqa: B004  # an instance's async __call__
        )
    try:
        signature = inspect.signature(app)  # type: ignore[arg-type]  # callable(app) was checked by load_app
    except (TypeError, ValueError):
        raise CLIError(
            f"cannot read the signature of {spec} to detect its interface: pass "
            "--interface native, asgi or wsgi"
        ) from None
    required, most = _positional_arity(signature)
    matches = [
        interface
        for interface, (arguments, needs_async) in _CALLING_CONVENTIONS.items()
        if is_async == needs_async and required <= arguments <= most
    ]
    names = ", ".join(_parameter_name(parameter) for parameter in signature.parameters.values())
    found = f"{'an async' if is_async else 'a sync'} callable taking ({names})"
    if len(matches) == 1:
        return matches[0], f"detected: {found}"
    if matches:
        listed = " and ".join(matches)
        raise CLIError(f"{spec} is {found}, which could be {listed}: pass --interface to choose")
    hint = "; if it builds the application, pass --factory" if most == 0 else ""
    raise CLIError(
        f"{spec} is {found}, which is no interface trioserve knows: native handlers are "
        "async def handler(request), ASGI 3 apps async def app(scope, receive, send), WSGI "
        f"apps def app(environ, start_response){hint}; --interface overrides the detection"
    )


def _parameter_name(parameter: inspect.Parameter) -> str:
    if parameter.kind is parameter.VAR_POSITIONAL:
        return f"*{parameter.name}"
    if parameter.kind is parameter.VAR_KEYWORD:
        return f"**{parameter.name}"
    return parameter.name


def _positional_arity(signature: inspect.Signature) -> tuple[int, float]:
    """(required, at most) positional arguments; a required keyword-only one fits none."""
    required = 0
    most: float = 0
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            most += 1
            required += parameter.default is parameter.empty
        elif parameter.kind is parameter.VAR_POSITIONAL:
            most = math.inf
        elif parameter.kind is parameter.KEYWORD_ONLY and parameter.default is parameter.empty:
            return 1, -1  # can never be called positionally alone
    return required, most
