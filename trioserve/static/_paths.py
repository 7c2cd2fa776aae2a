"""Path resolution: from a request path to a file that is inside the root, or nothing.

Rules for this module:
1. The path is percent-decoded exactly once, segment by segment, after splitting on
   the raw ``/``: an encoded separator (``%2f``, ``%5c``) is then a character inside a
   segment, and a segment holding a separator is refused, so ``..%2f`` can never
   become a step up.
2. Refused, before the file system is asked anything: a path not starting with ``/``;
   a raw or decoded backslash or NUL; an empty segment other than the last (``//``,
   so ``//host/..`` is nothing); ``.`` and ``..``; a segment that is not UTF-8; a
   drive letter (``C:``) or any ``:`` on Windows (drives and alternate data streams).
   A segment starting with ``.`` (a dotfile, ``.git``) is refused unless dotfiles are
   allowed.
3. What is left is joined under the root and resolved with ``os.path.realpath``; the
   result must be the root or inside it. With ``follow_symlinks`` the check is made on
   the joined path before resolution (rule 2 already keeps it inside), so a symlink
   may lead out on purpose; without it, a symlink leading out is refused.
4. Refusals are ``None``: the caller answers 404, never saying why.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Final
from urllib.parse import unquote

__all__ = ["inside", "split_path"]

_DRIVE: Final = re.compile(r"[A-Za-z]:")
_WINDOWS: Final = sys.platform == "win32"


def split_path(raw_path: str, *, dotfiles: bool = False) -> tuple[list[str], bool] | None:
    """Split a still percent-encoded path into decoded segments.

    Args:
        raw_path: the path as sent, percent-encoded, starting with ``/``.
        dotfiles: allow segments starting with ``.`` (``.`` and ``..`` never are).

    Returns:
        ``(segments, trailing_slash)``, or None when the path is refused (rule 2).
    """
    if not raw_path.startswith("/") or "\\" in raw_path or "\x00" in raw_path:
        return None
    raw_segments = raw_path[1:].split("/")
    trailing_slash = raw_segments[-1] == ""
    if trailing_slash:
        raw_segments.pop()
    segments: list[str] = []
    for raw in raw_segments:
        if not raw:
            return None  # "//": an empty segment names nothing (and "//host" is a host)
        try:
            segment = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if "/" in segment or "\\" in segment or "\x00" in segment:
            return None
        if segment in (".", "..") or (segment.startswith(".") and not dotfiles):
            return None
        if _DRIVE.match(segment) or (_WINDOWS and ":" in segment):
            return None
        segments.append(segment)
    return segments, trailing_slash


def inside(root: str, segments: list[str], *, follow_symlinks: bool) -> str | None:
    """The real path of ``segments`` under ``root`` (a real path), or None when it
    would leave the root (rule 3). Touches the file system (``realpath``)."""
    joined = os.path.join(root, *segments)
    if follow_symlinks:
        candidate = os.path.normpath(joined)
        if not _within(root, candidate):
            return None
        return candidate
    real = os.path.realpath(joined)
    if not _within(root, real):
        return None
    return real


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
