"""Cookies: the ``Cookie`` request header read, and ``Set-Cookie`` values written.

Rules for this module:
1. Reading is tolerant, writing is strict (RFC 6265 4 for servers, 5.4 for what user
   agents send). A pair a client sent badly is skipped, never an error: one broken
   cookie set by some other application on the domain must not make every request
   fail. A cookie the handler sets wrong is a ``ValueError`` in the handler that
   built it, never a header that splits or smuggles attributes (``;``, CR, LF).
2. This module imports nothing from the rest of trioserve.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from email.utils import format_datetime
from types import MappingProxyType
from typing import Final, Literal

__all__ = ["SameSite", "format_set_cookie", "parse_cookie_header"]

SameSite = Literal["lax", "strict", "none"]

# RFC 6265 4.1.1: cookie-name is an RFC 2616 token; cookie-value is cookie-octets,
# optionally in double quotes. cookie-octet excludes CTLs, space, DQUOTE, comma,
# semicolon and backslash.
_TOKEN_RE: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_COOKIE_VALUE_RE: Final = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
# RFC 6265 4.1.1: path-value and extension-av are any CHAR except CTLs or ";".
_ATTRIBUTE_VALUE_RE: Final = re.compile(r"[\x20-\x3a\x3c-\x7e]+")


def parse_cookie_header(values: Iterable[str]) -> Mapping[str, str]:
    """Parse ``Cookie`` header values into a read-only ``{name: value}`` mapping.

    Steps (RFC 6265 5.4 says how a user agent writes the header; this reads it back
    and forgives the usual mistakes):

    1. Every ``Cookie`` line counts (HTTP/2 proxies may split one into several).
    2. Pairs are separated by ``;``; spaces around names and values are dropped.
    3. A pair without ``=``, or whose name is not a token, is skipped.
    4. A value in double quotes loses them (4.1.1 allows the quoting).
    5. When a name repeats, the first wins: user agents list cookies with longer
       paths first (5.4 step 2), so the first is the most specific.
    """
    cookies: dict[str, str] = {}
    for line in values:
        for pair in line.split(";"):
            name, sep, value = pair.partition("=")
            name = name.strip(" \t")
            if not sep or _TOKEN_RE.fullmatch(name) is None or name in cookies:
                continue
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return MappingProxyType(cookies)


def format_set_cookie(
    name: str,
    value: str,
    *,
    max_age: int | None,
    expires: datetime | None,
    path: str | None,
    domain: str | None,
    secure: bool,
    httponly: bool,
    samesite: SameSite | None,
) -> str:
    """The value of a ``Set-Cookie`` header (RFC 6265 4.1), checked.

    Raises:
        ValueError: the name is not a token; the value has a character outside
            cookie-octet (encode it first, for example with base64 or percent-encoding);
            ``path`` or ``domain`` has a control character or ``;``; ``expires`` is
            naive; ``samesite`` is unknown, or ``"none"`` without ``secure`` (browsers
            drop such a cookie).
        TypeError: ``max_age`` is not an int.
    """
    if _TOKEN_RE.fullmatch(name) is None:
        raise ValueError(f"a cookie name must be a token (RFC 6265 4.1.1), not {name!r}")
    if _COOKIE_VALUE_RE.fullmatch(value) is None:
        raise ValueError(
            f"cookie value {value!r} has a character RFC 6265 4.1.1 does not allow "
            "(space, '\"', ',', ';', '\\\\', a control or non-ASCII character): encode it"
        )
    parts = [f"{name}={value}"]
    if expires is not None:
        if expires.tzinfo is None:
            raise ValueError("expires must be an aware datetime (for example in timezone.utc)")
        parts.append(f"Expires={format_datetime(expires.astimezone(timezone.utc), usegmt=True)}")
    if max_age is not None:
        if type(max_age) is not int:
            raise TypeError(f"max_age must be an int, not {type(max_age).__name__}")
        parts.append(f"Max-Age={max_age}")
    if domain is not None:
        parts.append(f"Domain={_attribute('domain', domain)}")
    if path is not None:
        parts.append(f"Path={_attribute('path', path)}")
    if secure:
        parts.append("Secure")
    if httponly:
        parts.append("HttpOnly")
    if samesite is not None:
        if samesite not in ("lax", "strict", "none"):
            raise ValueError(f"samesite must be 'lax', 'strict', 'none' or None, not {samesite!r}")
        if samesite == "none" and not secure:
            raise ValueError("samesite='none' needs secure=True (browsers refuse it otherwise)")
        parts.append(f"SameSite={samesite.capitalize()}")
    return "; ".join(parts)


def _attribute(what: str, value: str) -> str:
    if _ATTRIBUTE_VALUE_RE.fullmatch(value) is None:
        raise ValueError(f"cookie {what} {value!r} must be printable ASCII without ';'")
    return value
