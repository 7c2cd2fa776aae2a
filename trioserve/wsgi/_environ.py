"""The WSGI environ of a request, and the checks on what an application answers.

Rules for this module:
1. Pure functions of values: no trio, no threads, no I/O. ``wsgi.input`` and
   ``wsgi.errors`` are built elsewhere and handed in.
2. Strings follow PEP 3333 "Unicode Issues": every environ string is a *native
   string* holding bytes decoded as ISO-8859-1, so an application recovers the bytes
   the client sent with ``value.encode("latin-1")``.
3. This module imports only value modules (``_request``, ``_errors``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_to_bytes

from .._request import Request

__all__ = ["Head", "build_environ", "native_root_path", "parse_head"]

#: ``(status code, header pairs as bytes)``: what ``start_response`` stored.
Head = tuple[int, list[tuple[bytes, bytes]]]

# Folded into CONTENT_TYPE / CONTENT_LENGTH without the HTTP_ prefix (PEP 3333
# "environ Variables", after CGI, RFC 3875 4.1.2-4.1.3).
_CGI_HEADERS: Final = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}
_DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
# RFC 9110 5.1: a field name is a token; 5.5: a value has no CR, LF or NUL (we refuse
# every control character but HTAB, as h11 does).
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def native_root_path(root_path: str) -> str:
    """Check ``root_path`` and return it as a WSGI native string (SCRIPT_NAME).

    Raises:
        ValueError: it is not empty and does not start with ``/``.
    """
    if root_path and not root_path.startswith("/"):
        raise ValueError(f"root_path must be empty or start with '/', not {root_path!r}")
    # A mount point has no trailing slash: SCRIPT_NAME "" or "/app", never "/app/"
    # (PEP 3333 URL Reconstruction joins SCRIPT_NAME and PATH_INFO as they are).
    return root_path.rstrip("/").encode("utf-8").decode("latin-1")


def build_environ(
    request: Request, *, script_name: str, wsgi_input: object, wsgi_errors: object
) -> dict[str, object]:
    """The PEP 3333 environ of ``request``, for an application mounted at ``script_name``.

    PATH_INFO is the percent-decoded path. When it starts with ``script_name`` (at a
    segment boundary) that prefix is moved to SCRIPT_NAME; otherwise a proxy in
    front already stripped it, and PATH_INFO is the whole path, as gunicorn does.
    The path as sent, with its percent-escapes (an encoded ``/`` included), is kept
    in ``REQUEST_URI`` and ``RAW_URI`` (the names uWSGI and gunicorn use).
    """
    # PEP 3333: PATH_INFO is decoded from %-escapes but not from UTF-8; an application
    # that wants text does path_info.encode("latin-1").decode("utf-8") itself.
    path_info = unquote_to_bytes(request.raw_path).decode("latin-1")
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name) :]
    scheme = request.scheme
    server_name, server_port = _server_address(request, scheme)
    environ: dict[str, object] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": request.query_string.decode("latin-1"),
        "REQUEST_URI": request.target,
        "RAW_URI": request.target,
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": wsgi_input,
        "wsgi.errors": wsgi_errors,
        # The application runs in a pool of threads of one process (PEP 3333).
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        # wsgi.input ends where the body ends (Content-Length or chunked), so the
        # application may read to EOF (the mod_wsgi / Werkzeug extension).
        "wsgi.input_terminated": True,
    }
    if request.client is not None:
        environ["REMOTE_ADDR"] = request.client[0]
        environ["REMOTE_PORT"] = str(request.client[1])
    for name, value in request.headers.raw:
        cgi_name = _CGI_HEADERS.get(name)
        if cgi_name is not None:
            environ[cgi_name] = value.decode("latin-1")
            continue
        if b"_" in name:
            # "X-Auth_User" and "X-Auth-User" would both become HTTP_X_AUTH_USER: a
            # client could forge a header that a proxy in front set or cleared.
            # Dropped, as nginx (underscores_in_headers off) and gunicorn do.
            continue
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        previous = environ.get(key)
        if isinstance(previous, str):
            # RFC 9110 5.3: repeated field lines combine with commas; Cookie lines
            # combine with "; " (RFC 6265 5.4).
            text = previous + ("; " if key == "HTTP_COOKIE" else ", ") + text
        environ[key] = text
    return environ


def _server_address(request: Request, scheme: str) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT: our socket's address, else the Host header."""
    if request.server is not None:
        return request.server[0], str(request.server[1])
    # Not a TCP socket (a Unix socket, an in-memory stream): PEP 3333 URL
    # Reconstruction prefers HTTP_HOST anyway; this is the best fallback we have.
    host_header = request.headers.get("host") or "localhost"
    host, sep, port = host_header.rpartition(":")
    if sep and port.isdigit():
        return host, port
    return host_header, _DEFAULT_PORTS.get(scheme, "80")


def parse_head(status: object, headers: object) -> Head:
    """Check the arguments of ``start_response`` and encode them for the wire.

    Done in the application's thread, so a bad status or header raises at the
    ``start_response`` call that passed it, not later in the server.

    Raises:
        TypeError: ``status`` or a header is not a ``str``, or a header not a pair.
        ValueError: a malformed status line (PEP 3333: ``"200 OK"``), a 1xx status
            (interim responses are the server's), a name that is not an RFC 9110
            token, a value with a control character, or a character outside
            ISO-8859-1.
    """
    if not isinstance(status, str):
        raise TypeError(f"status must be a str such as '200 OK', not {type(status).__name__}")
    code = status[:3]
    if not (len(code) == 3 and code.isdigit() and code.isascii()) or status[3:4] not in ("", " "):
        raise ValueError(f"status must look like '200 OK', not {status!r}")
    status_code = int(code)
    if status_code < 200:
        raise ValueError(f"a WSGI application cannot send an interim {status_code} response")
    if not isinstance(headers, Iterable) or isinstance(headers, (str, bytes)):
        raise TypeError("response headers must be a list of (name, value) pairs")
    pairs: list[tuple[bytes, bytes]] = []
    for pair in headers:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"a response header must be a (name, value) tuple, not {pair!r}")
        name, value = pair
        if not (isinstance(name, str) and isinstance(value, str)):
            raise TypeError(f"header names and values must be str (PEP 3333), not {pair!r}")
        raw_name = name.encode("latin-1")
        raw_value = value.encode("latin-1").strip(b" \t")
        if not _TOKEN.fullmatch(raw_name):
            raise ValueError(f"invalid header name {name!r}")
        if _BAD_VALUE.search(raw_value):
            raise ValueError(f"invalid value for header {name!r}: {value!r}")
        pairs.append((raw_name, raw_value))
    return status_code, pairs
