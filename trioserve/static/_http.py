"""The HTTP rules of static files: validators, ranges, content negotiation.

Rules for this module:
1. Pure functions of header values and file facts: no I/O, no trio, no Request.
2. Every rule names its RFC 9110 section. A header that does not parse is ignored,
   as the RFC asks for ``Range`` (14.2) and the conditionals (13.1.3), never a 400.
"""

from __future__ import annotations

import mimetypes
import re
from email.utils import formatdate, parsedate_to_datetime
from typing import Final

__all__ = [
    "MAX_RANGES",
    "accepted_encodings",
    "content_type",
    "etag_for",
    "http_date",
    "if_range_holds",
    "none_match",
    "parse_ranges",
]

# A request with more ranges than this is served whole (200): RFC 9110 14.2 lets a
# server ignore a Range header, and many small ranges are a known amplification
# (CVE-2011-3192, Apache's "Range header DoS"). nginx's max_ranges is unset by
# default; 16 is more than any media player or PDF reader asks for.
MAX_RANGES: Final = 16

_RANGE_SPEC: Final = re.compile(r"\s*(\d*)\s*-\s*(\d*)\s*")
_ARCHIVES: Final = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "compress": "application/x-compress",
}
_TEXT_TYPES: Final = ("application/javascript", "application/json", "image/svg+xml")


def etag_for(size: int, mtime_ns: int, suffix: str = "") -> str:
    """A strong entity tag from size and modification time (RFC 9110 8.8.3): two
    versions of one file get two tags unless written within the same nanosecond
    with the same length. ``suffix`` tells a precompressed sibling's tag apart."""
    return f'"{mtime_ns:x}-{size:x}{suffix}"'


def http_date(seconds: float) -> str:
    """An IMF-fixdate (RFC 9110 5.6.7)."""
    return formatdate(seconds, usegmt=True)


def content_type(name: str) -> str:
    """The media type for a file name, from ``mimetypes``; text types get
    ``charset=utf-8`` (RFC 9110 8.3.1); unknown ones ``application/octet-stream``."""
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        # "a.txt.gz" is a gzip file, not text: its bytes are sent as they are, so
        # its type is the archive's (as http.server's own map says).
        return _ARCHIVES.get(encoding, "application/octet-stream")
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in _TEXT_TYPES:
        return f"{guessed}; charset=utf-8"
    return guessed


def _tags(value: str) -> list[str]:
    return [tag.strip() for tag in value.split(",") if tag.strip()]


def _weak_equal(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def none_match(
    if_none_match: str | None, if_modified_since: str | None, etag: str, mtime: float
) -> bool:
    """Whether a GET or HEAD is answered 304 (RFC 9110 13.1.2, 13.1.3, 13.2.2).

    ``If-None-Match`` uses the weak comparison and ``*`` matches any current file;
    when it is present, ``If-Modified-Since`` is ignored (13.1.3: "A recipient MUST
    ignore If-Modified-Since if the request contains an If-None-Match header field").
    """
    if if_none_match is not None:
        tags = _tags(if_none_match)
        return any(tag == "*" or _weak_equal(tag, etag) for tag in tags)
    if if_modified_since is not None:
        since = _parse_date(if_modified_since)
        return since is not None and int(mtime) <= since
    return False


def _parse_date(value: str) -> int | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None  # RFC 9110 5.6.7: HTTP dates are GMT; no zone is not a date
    return int(parsed.timestamp())


def if_range_holds(if_range: str | None, etag: str, mtime: float) -> bool:
    """Whether ``If-Range`` lets the ranges apply (RFC 9110 13.1.5): an entity tag
    must match strongly (a weak tag never does); a date must equal the file's
    ``Last-Modified`` exactly. No ``If-Range``: the ranges apply."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"'):
        return value == etag
    if value.startswith("W/"):
        return False
    since = _parse_date(value)
    return since is not None and since == int(mtime)


def parse_ranges(value: str, size: int) -> list[tuple[int, int]] | str | None:
    """Parse a ``Range`` header against a representation of ``size`` bytes.

    Returns:
        ``None`` to ignore the header and serve the whole file (RFC 9110 14.2: not
        ``bytes=``, a syntax error such as ``bytes=5-4``, or more than
        :data:`MAX_RANGES` ranges); ``"unsatisfiable"`` for 416 (14.1.1: no range
        overlaps the file); else the ``(first, last)`` byte positions, inclusive, in
        the order asked.
    """
    unit, sep, specs = value.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[tuple[int, int]] = []
    parts = specs.split(",")
    if len(parts) > MAX_RANGES:
        return None
    for part in parts:
        match = _RANGE_SPEC.fullmatch(part)
        if match is None:
            return None
        first_text, last_text = match.groups()
        if first_text:
            first = int(first_text)
            last = int(last_text) if last_text else size - 1
            if last_text and last < first:
                return None  # 14.1.1: last-pos less than first-pos is invalid
            if first >= size:
                continue  # not satisfiable; others may be
            ranges.append((first, min(last, size - 1)))
        elif last_text:
            suffix = int(last_text)
            if suffix == 0:
                continue  # a zero-length suffix is unsatisfiable
            ranges.append((max(size - suffix, 0), size - 1))
        else:
            return None  # "-" alone
    if not ranges:
        return "unsatisfiable"
    return ranges


def accepted_encodings(accept_encoding: str | None) -> list[str]:
    """The content codings an ``Accept-Encoding`` allows among ``br`` and ``gzip``
    (RFC 9110 12.5.3), most preferred first (higher q first, ``br`` on a tie): named
    with q above 0, or covered by ``*`` when not named; ``q=0`` refuses. ``x-gzip``
    counts as ``gzip`` (RFC 9110 8.4.1.3)."""
    if not accept_encoding:
        return []
    named: dict[str, float] = {}
    star: float | None = None
    for item in accept_encoding.split(","):
        coding, *params = (piece.strip() for piece in item.split(";"))
        coding = coding.lower()
        if not coding:
            continue
        quality = 1.0
        for param in params:
            key, _, qvalue = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(qvalue)
                except ValueError:
                    quality = 0.0
        if coding == "x-gzip":
            coding = "gzip"
        if coding == "*":
            star = quality
        else:
            named[coding] = quality
    ranked: list[tuple[float, int, str]] = []
    for rank, coding in enumerate(("br", "gzip")):
        quality = named.get(coding, star if star is not None else 0.0)
        if quality > 0:
            ranked.append((-quality, rank, coding))
    return [coding for _, _, coding in sorted(ranked)]
