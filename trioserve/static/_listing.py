"""The directory listing page.

Rules for this module:
1. Every name is escaped twice over, for its place: percent-encoded in the ``href``
   (``quote``, so no ``"``, ``<`` or ``:`` survives) and HTML-escaped in the text and
   the attribute (``html.escape``). aiohttp's CVE-2024-27306 was a listing that did
   not: a file named ``<img src=x onerror=...>`` ran script in the visitor's page.
2. Links are relative (``./name``): a name like ``javascript:x`` or ``//evil`` is a
   path under this directory, never a scheme or another host.
3. Dotfiles are left out unless they are served.
"""

from __future__ import annotations

import html
import os
from urllib.parse import quote

__all__ = ["listing_page"]


def listing_page(directory: str, shown_path: str, *, dotfiles: bool) -> bytes:
    """The HTML listing of ``directory`` (``shown_path``: the decoded URL path, for
    the title), sorted by name, directories with a trailing ``/``. Touches the file
    system (``os.scandir``): call it in a worker thread."""
    entries: list[tuple[str, bool]] = []
    with os.scandir(directory) as scan:
        for entry in scan:
            if entry.name.startswith(".") and not dotfiles:
                continue
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                continue  # not UTF-8 on disk: no URL can name it (see _paths)
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            entries.append((entry.name, is_dir))
    entries.sort(key=lambda item: item[0].lower())
    title = html.escape(f"Directory listing for {shown_path}", quote=True)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{title}</title>",
        "</head>",
        "<body>",
        f"<h1>{title}</h1>",
        "<hr>",
        "<ul>",
    ]
    for name, is_dir in entries:
        shown = name + "/" if is_dir else name
        href = "./" + quote(name, safe="") + ("/" if is_dir else "")
        link, text = html.escape(href, quote=True), html.escape(shown, quote=True)
        lines.append(f'<li><a href="{link}">{text}</a></li>')
    lines += ["</ul>", "<hr>", "</body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")
