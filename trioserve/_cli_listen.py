"""The command line's listening and TLS flags, and what they open.

Rules for this module:
1. The flags are uvicorn's names (``--uds``, ``--fd``, ``--ssl-certfile``, ...), so a
   deployment moves over by changing the program's name.
2. Everything that can be checked before serving is checked here, and a mistake is a
   :class:`CLIError` of one line (a certificate that does not load, a descriptor that
   is not a listening socket), before the application is imported.
3. TCP is bound when ``--host`` or ``--port`` is given, or when nothing else is:
   ``--uds``, ``--fd`` and systemd's sockets replace the default 127.0.0.1:8000.
"""

from __future__ import annotations

import argparse
import math
import ssl
from dataclasses import dataclass

import trio

from ._cli_app import USAGE_ERROR, CLIError
from ._cli_config import bounded_int
from ._listeners import fd_listener, open_reuse_port_sockets, systemd_listeners
from ._tls import TLSConfigError, create_ssl_context, parse_cert_reqs
from ._worker import WorkerPlan

__all__ = ["Listening", "add_listen_flags", "listening_from"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True, slots=True, kw_only=True)
class Listening:
    """Where to listen, and how: the parsed listening and TLS flags.

    Attributes:
        host, port: the TCP address, or ``port`` None for no TCP listener (``host``
            None is every interface).
        uds, uds_permissions: the Unix socket to serve, and its file's mode.
        listeners: inherited sockets (``--fd``, systemd), already open.
        ssl_context: for HTTPS, or None.
        reload_tls: loads the certificate and key again (SIGHUP), or None.
    """

    host: str | None
    port: int | None
    uds: str | None
    uds_permissions: int | None
    listeners: tuple[trio.SocketListener, ...]
    ssl_context: ssl.SSLContext | None
    reload_tls: _Reload | None


@dataclass(frozen=True, slots=True)
class _Reload:
    """A new context from the same files and flags, for the connections after a
    SIGHUP (new: a key of another type would not replace the old one in place)."""

    certfile: str
    keyfile: str | None
    password: str | None
    ca_certs: str | None
    cert_reqs: ssl.VerifyMode
    ciphers: str | None

    def __call__(self) -> ssl.SSLContext:
        return create_ssl_context(
            self.certfile,
            self.keyfile,
            password=self.password,
            ca_certs=self.ca_certs,
            cert_reqs=self.cert_reqs,
            ciphers=self.ciphers,
        )


def add_listen_flags(parser: argparse.ArgumentParser) -> None:
    """``--host``, ``--port``, ``--uds``, ``--uds-permissions``, ``--fd``, ``--ssl-*``."""
    listening = parser.add_argument_group("listening")
    listening.add_argument(
        "--host",
        help="address to listen on; 0.0.0.0 for every IPv4 interface, '*' for every "
        f"IPv4 and IPv6 interface (default: {DEFAULT_HOST})",
    )
    listening.add_argument(
        "--port",
        type=bounded_int(0, 65535, "a port number from 0 to 65535"),
        help="TCP port; 0 picks a free one, shown in the 'Serving on' line "
        f"(default: {DEFAULT_PORT})",
    )
    listening.add_argument(
        "--uds",
        metavar="PATH",
        help="listen on this Unix socket instead of 127.0.0.1:8000 (a stale socket file "
        "is replaced, a live server's is not; the file is removed on exit)",
    )
    listening.add_argument(
        "--uds-permissions",
        type=bounded_int(0, 0o777, "an octal mode such as 660", base=8),
        metavar="MODE",
        help="mode of the --uds socket file, in octal, e.g. 660 (default: from the umask)",
    )
    listening.add_argument(
        "--fd",
        type=bounded_int(0, math.inf, "a file descriptor number"),
        action="append",
        metavar="N",
        help="serve the inherited listening socket on file descriptor N (TCP, IPv6 or "
        "Unix; detected); repeatable. Without --host/--port/--uds/--fd, systemd's "
        "sockets (LISTEN_FDS) are served when it passed some",
    )
    tls = parser.add_argument_group("TLS (HTTPS)")
    tls.add_argument("--ssl-certfile", metavar="FILE", help="PEM certificate chain: serve HTTPS")
    tls.add_argument(
        "--ssl-keyfile",
        metavar="FILE",
        help="PEM private key (default: in --ssl-certfile)",
    )
    tls.add_argument(
        "--ssl-keyfile-password",
        metavar="PASSWORD",
        help="password of an encrypted --ssl-keyfile",
    )
    tls.add_argument(
        "--ssl-ca-certs",
        metavar="FILE",
        help="PEM file of the CAs that client certificates are verified against",
    )
    tls.add_argument(
        "--ssl-cert-reqs",
        metavar="WHICH",
        help="ask clients for a certificate: none (0), optional (1), required (2) (default: none)",
    )
    tls.add_argument(
        "--ssl-ciphers",
        metavar="CIPHERS",
        help="OpenSSL cipher string for TLS 1.2 (default: OpenSSL's); TLS 1.2 or newer "
        "only, and ALPN offers http/1.1",
    )


def listening_from(namespace: argparse.Namespace, worker: WorkerPlan | None = None) -> Listening:
    """Check the listening and TLS flags, and open what they name.

    A ``worker`` serves the sockets its supervisor passed (and, with ``--reuse-port``,
    binds its own beside its siblings) instead of what the flags name.

    Raises:
        CLIError: one line: a TLS file that cannot be used (status 1), a descriptor
            that is not a listening socket (status 1), or flags that do not go
            together (status 2).
    """
    host: str | None = namespace.host
    port: int | None = namespace.port
    uds: str | None = namespace.uds
    fds: list[int] = namespace.fd or []
    if len(set(fds)) != len(fds):
        raise CLIError("--fd names the same descriptor twice", status=USAGE_ERROR)
    if namespace.uds_permissions is not None and uds is None:
        raise CLIError("--uds-permissions applies to --uds", status=USAGE_ERROR)
    context, reload_tls = _tls_from(namespace)
    if worker is not None:
        try:
            return _worker_listening(worker, context, reload_tls)
        except OSError as exc:  # not a plan its supervisor made
            raise CLIError(f"a worker's sockets: {exc}") from exc
    listeners: list[trio.SocketListener] = []
    try:
        for fd in fds:
            listeners.append(fd_listener(fd))
        named = host is not None or port is not None or uds is not None or fds
        if not named:
            listeners.extend(systemd_listeners())
    except OSError as exc:  # ListenerError: one line already
        for listener in listeners:
            listener.socket.close()
        raise CLIError(str(exc)) from exc
    tcp = host is not None or port is not None or not (uds is not None or listeners)
    if host == "*":
        host = None
    elif host is None:
        host = DEFAULT_HOST
    return Listening(
        host=host,
        port=(port if port is not None else DEFAULT_PORT) if tcp else None,
        uds=uds,
        uds_permissions=namespace.uds_permissions,
        listeners=tuple(listeners),
        ssl_context=context,
        reload_tls=reload_tls,
    )


def _worker_listening(
    worker: WorkerPlan, context: ssl.SSLContext | None, reload_tls: _Reload | None
) -> Listening:
    listeners = [fd_listener(fd) for fd in worker.fds]
    if worker.reuse_port is not None:
        host, port = worker.reuse_port
        for sock in open_reuse_port_sockets(host or None, port):
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    return Listening(
        host=None,
        port=None,
        uds=None,
        uds_permissions=None,
        listeners=tuple(listeners),
        ssl_context=context,
        reload_tls=reload_tls,
    )


def _tls_from(namespace: argparse.Namespace) -> tuple[ssl.SSLContext | None, _Reload | None]:
    certfile: str | None = namespace.ssl_certfile
    if certfile is None:
        for name in ("keyfile", "keyfile_password", "ca_certs", "cert_reqs", "ciphers"):
            if getattr(namespace, f"ssl_{name}") is not None:
                flag = "--ssl-" + name.replace("_", "-")
                raise CLIError(f"{flag} needs --ssl-certfile", status=USAGE_ERROR)
        return None, None
    try:
        cert_reqs = (
            parse_cert_reqs(namespace.ssl_cert_reqs)
            if namespace.ssl_cert_reqs is not None
            else ssl.CERT_NONE
        )
        reload_tls = _Reload(
            certfile,
            namespace.ssl_keyfile,
            namespace.ssl_keyfile_password,
            namespace.ssl_ca_certs,
            cert_reqs,
            namespace.ssl_ciphers,
        )
        return reload_tls(), reload_tls
    except TLSConfigError as exc:
        raise CLIError(str(exc)) from exc
