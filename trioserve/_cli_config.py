"""The command-line flags made from ``Config``: one per field, help from its comment.

Rules for this module:
1. The flags for deadlines, limits and proxy trust are generated from ``Config``'s
   fields, and their help text is the first sentence of each field's ``#:`` comment in
   ``_config.py``, so the command line cannot drift from the configuration. A value is
   checked by building a ``Config`` with it: the error is ``Config``'s own message.
2. A field of a new kind fails loudly here (``tests/test_cli.py`` first), never gets a
   flag that parses it wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import re
import typing
from collections.abc import Callable, Mapping
from typing import Final, cast

from ._config import Config

__all__ = [
    "POSITIVE_INT",
    "add_config_flags",
    "bounded_int",
    "config_fields",
    "config_from",
    "flag_name",
    "format_number",
]

#: A value a Config flag converts to.
FlagValue = float | str | bool | tuple[str, ...] | None

#: Where a field's default comes from the environment when its flag is not given, as
#: for uvicorn and gunicorn (a container sets it once for every server it runs).
_ENVIRONMENT: Final = {"forwarded_allow_ips": "FORWARDED_ALLOW_IPS"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every ``Config`` field, in three groups: the HTTP engine, deadlines and
    limits, proxies."""
    engine = parser.add_argument_group("HTTP engine")
    limits = parser.add_argument_group(
        "deadlines and limits (trioserve.Config; 'inf' or 'none' for no limit where one "
        "is allowed)"
    )
    proxies = parser.add_argument_group("proxies (trust only the proxies in front of you)")
    docs = _field_docs()
    for field in config_fields():
        group = proxies if field.name.startswith(("proxy", "forwarded")) else limits
        group = engine if field.name == "http" else group
        _add_config_flag(group, field, docs.get(field.name, ""))


def config_from(namespace: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The ``Config`` of the parsed flags (environment defaults where one applies).

    Raises:
        TypeError, ValueError: a combination of values ``Config`` refuses (each flag
            was checked alone while parsing).
    """
    environ = os.environ if environ is None else environ
    changes: dict[str, FlagValue] = {}
    for field in config_fields():
        if hasattr(namespace, field.name):
            changes[field.name] = cast(FlagValue, getattr(namespace, field.name))
        elif field.name in _ENVIRONMENT and _ENVIRONMENT[field.name] in environ:
            changes[field.name] = _address_list(environ[_ENVIRONMENT[field.name]])
    return Config().replace(**changes)


def config_fields() -> tuple[dataclasses.Field[object], ...]:
    """``Config``'s fields, each of which gets a flag: ``max_body_size`` -> ``--max-body-size``."""
    return dataclasses.fields(Config)


def flag_name(field_name: str) -> str:
    """The flag for a ``Config`` field: ``keep_alive_timeout`` -> ``--keep-alive-timeout``."""
    return "--" + field_name.replace("_", "-")


def _add_config_flag(
    group: argparse._ArgumentGroup, field: dataclasses.Field[object], doc: str
) -> None:
    hint = typing.get_type_hints(Config)[field.name]
    if typing.get_origin(hint) is typing.Literal:
        group.add_argument(
            flag_name(field.name),
            dest=field.name,
            choices=typing.get_args(hint),
            default=argparse.SUPPRESS,
            help=f"{doc} (default: {field.default})",
        )
        return
    if hint is bool:
        group.add_argument(
            flag_name(field.name),
            dest=field.name,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=f"{doc} (default: {'on' if field.default else 'off'})",
        )
        return
    if hint is float:
        convert: Callable[[str], FlagValue] = _number
    elif hint is int:
        convert = _integer
    elif hint == (str | None):
        convert = _text_or_none
    elif hint == tuple[str, ...]:
        convert = _address_list
    else:  # a new kind of field: tests/test_cli.py fails here first
        raise TypeError(f"no command-line form for Config.{field.name}: {hint}")
    metavar = _metavar(field.name, hint)
    shown = _format_default(field.default, metavar)
    if field.name in _ENVIRONMENT:
        shown = f"${_ENVIRONMENT[field.name]} if set, else {shown}"
    group.add_argument(
        flag_name(field.name),
        dest=field.name,
        type=_checked(field.name, convert),
        # Not given: absent from the namespace, so Config's own default applies.
        default=argparse.SUPPRESS,
        metavar=metavar,
        help=f"{doc} (default: {shown})" if doc else f"(default: {shown})",
    )


def _checked(name: str, convert: Callable[[str], FlagValue]) -> Callable[[str], FlagValue]:
    """A converter that also builds a ``Config`` with the value, for its message."""

    def check(text: str) -> FlagValue:
        value = convert(text)
        try:
            Config().replace(**{name: value})
        except (TypeError, ValueError) as exc:
            # Config speaks Python ("math.inf"); on the command line it is "inf".
            raise argparse.ArgumentTypeError(str(exc).replace("math.inf", "inf")) from None
        return value

    check.__name__ = name  # argparse names the converter in some messages
    return check


def _number(text: str) -> float:
    """An int or float; ``inf``/``none`` (any case) is ``math.inf``, no limit."""
    word = text.strip().lower()
    if word in ("inf", "infinity", "none", "unlimited"):
        return math.inf
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'inf', not {text!r}") from None


def _integer(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _text_or_none(text: str) -> str | None:
    """A string; empty or ``none`` (any case) is ``None``."""
    return None if text.strip().lower() in ("", "none") else text


def _address_list(text: str) -> tuple[str, ...]:
    """``127.0.0.1,10.0.0.0/8, unix`` -> ``("127.0.0.1", "10.0.0.0/8", "unix")``."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def format_number(value: object) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if value.is_integer():
            return str(int(value))
    return str(value)


def _format_default(value: object, metavar: str) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value)
    shown = format_number(value)
    if metavar == "BYTES" and isinstance(value, int):
        for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
            if value >= size and value % size == 0:
                return f"{shown} = {value // size} {unit}"
    return shown


def _metavar(name: str, hint: object) -> str:
    if name == "forwarded_allow_ips":
        return "ADDRESSES"
    if hint is not float and hint is not int:
        return "TEXT"
    if name.endswith(("_timeout", "_grace", "_interval")):
        return "SECONDS"
    if name.endswith("_rate"):
        return "BYTES/S"
    if name.endswith(("_size", "_length")):
        return "BYTES"
    return "N"


#: Where a field's comment speaks Python rather than the command line.
_HELP_OVERRIDES: Final = {
    "http": "the HTTP/1.1 engine: h11 (pure Python), h11-mypyc (the same h11 compiled "
    "with mypyc, about 2.2x faster; pip install 'trioserve[fast]'), or auto: h11-mypyc "
    "when installed, else h11",
    "server_header": "value of the Server header on every response; 'none' leaves it out",
    "proxy_headers": "believe X-Forwarded-For/-Proto/-Host/-Port and Forwarded from the "
    "peers in --forwarded-allow-ips: they set the client address, scheme and host the "
    "application sees",
    "forwarded_allow_ips": "comma-separated peers trusted to say who the client is: IP "
    "addresses, CIDR ranges (10.0.0.0/8), 'unix' for Unix-socket peers, '*' for all",
    "proxy_protocol": "expect a PROXY protocol header (v1 or v2, as HAProxy and load "
    "balancers send) first on connections from --forwarded-allow-ips; it gives the "
    "client's address",
}


def _field_docs() -> dict[str, str]:
    """The first sentence of each ``Config`` field's ``#:`` comment, by field name."""
    try:
        source = inspect.getsource(Config)
    except (OSError, TypeError):  # installed without sources: flags without help
        return {}
    docs: dict[str, str] = {}
    comment: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            comment.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if comment and match is not None:
            name = match.group(1)
            text = " ".join(comment).replace("``", "")
            sentence = re.match(r"(.+?)\.(\s|$)", text)
            text = sentence.group(1) if sentence is not None else text
            docs[name] = _HELP_OVERRIDES.get(name, text[:1].lower() + text[1:])
        comment = []
    return docs


def bounded_int(low: int, high: float, expected: str, *, base: int = 10) -> Callable[[str], int]:
    """An argparse converter: a whole number (in ``base``) from ``low`` to ``high``,
    else the one-line error ``expected {expected}, not '...'``."""

    def convert(text: str) -> int:
        try:
            number = int(text, base)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
        return number

    return convert


#: ``--workers``, ``--wsgi-max-threads``, ``--limit-max-requests``: 1 or more.
POSITIVE_INT: Final = bounded_int(1, math.inf, "a whole number of at least 1")
