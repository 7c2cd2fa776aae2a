"""TLS setup: the server's ``ssl.SSLContext``, built from files and reloaded in place.

Rules for this module:
1. Every problem with a certificate, key, password, CA file or option is a
   :class:`TLSConfigError` whose text is one line naming the file and the problem, so
   the command line can print it as it is. OpenSSL's text ("PEM lib (_ssl.c:3905)")
   stays in the chained cause, and a password never appears anywhere.
2. A failed reload leaves the live context as it was: the new pair is proven in a
   scratch context first, because OpenSSL swaps the certificate in before it checks the
   key and a mismatch would leave the context with no usable key.
3. This module imports nothing from the rest of trioserve, and never blocks on a
   terminal: a key that needs a password and has none is an error, not a prompt.
"""

from __future__ import annotations

import os
import re
import ssl

__all__ = ["TLSConfigError", "create_ssl_context", "parse_cert_reqs", "reload_certificates"]

# PEM armour as RFC 7468 spells it. The certificate pattern is strict: every CA,
# certbot and trustme write "BEGIN CERTIFICATE" blocks. The key pattern takes PKCS#8
# ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY") and the legacy "RSA/EC PRIVATE KEY".
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")

# --ssl-cert-reqs as uvicorn takes it (ssl.CERT_* integers), plus readable names.
_CERT_REQS = {
    "0": ssl.CERT_NONE,
    "1": ssl.CERT_OPTIONAL,
    "2": ssl.CERT_REQUIRED,
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


class TLSConfigError(ValueError):
    """The certificate, key, password, CA file or a TLS option cannot be used.

    ``str(exc)`` is one short line naming the file and the problem, for example
    ``cannot read certificate file '/etc/x.pem': No such file or directory`` or
    ``the private key in '/k.pem' does not match the certificate in '/c.pem'``. The
    low-level ``OSError`` or ``ssl.SSLError`` is chained as ``__cause__``.
    """


def create_ssl_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    password: str | None = None,
    ca_certs: str | os.PathLike[str] | None = None,
    cert_reqs: ssl.VerifyMode = ssl.CERT_NONE,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """Build a server-side TLS context from PEM files.

    The context speaks TLS 1.2 and 1.3 only (RFC 8996 deprecates 1.0 and 1.1), offers
    only ``http/1.1`` by ALPN (RFC 7301: a client asking for ``h2`` falls back), and
    turns off TLS compression (CRIME) and renegotiation (a client-triggered CPU cost),
    preferring the server's cipher order.

    Args:
        certfile: PEM file with the certificate, then its intermediates; it may also
            hold the private key.
        keyfile: PEM file with the private key; ``None`` when ``certfile`` holds it.
        password: the key's password if it is encrypted. Never prompted for.
        ca_certs: PEM file of the CAs that client certificates are verified against.
        cert_reqs: whether to ask clients for a certificate: ``ssl.CERT_NONE`` (do
            not), ``CERT_OPTIONAL`` (verify one if sent), ``CERT_REQUIRED``.
        ciphers: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's).

    Returns:
        A new ``ssl.SSLContext`` for ``trio.SSLStream(..., server_side=True)``.

    Raises:
        TLSConfigError: a file is missing, unreadable or not PEM; the key does not
            match the certificate; the password is wrong or missing; ``ciphers``
            selects nothing; or client certificates are asked for without ``ca_certs``.
    """
    try:
        cert_reqs = ssl.VerifyMode(cert_reqs)
    except ValueError:
        raise TLSConfigError(f"cert_reqs must be an ssl.VerifyMode, not {cert_reqs!r}") from None
    if cert_reqs != ssl.CERT_NONE and ca_certs is None:
        raise TLSConfigError(
            f"client certificates ({cert_reqs.name}) need ca_certs (--ssl-ca-certs), "
            "the CA file to verify them against"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Most of these are already on in PROTOCOL_TLS_SERVER on current Pythons; set
    # anyway so the guarantee does not depend on the interpreter's defaults.
    # OP_NO_RENEGOTIATION needs OpenSSL 1.1.0h; without it TLS 1.3 has none anyway.
    no_renegotiation: int = getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= no_renegotiation
    context.set_alpn_protocols(["http/1.1"])
    if ciphers is not None:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise TLSConfigError(f"the cipher string {ciphers!r} selects no cipher") from exc
    _load_chain(context, certfile, keyfile, password)
    if ca_certs is not None:
        _load_ca(context, os.fspath(ca_certs))
    context.verify_mode = cert_reqs
    return context


def parse_cert_reqs(value: str) -> ssl.VerifyMode:
    """Read ``--ssl-cert-reqs``: ``0``/``1``/``2`` as uvicorn, or ``none``,
    ``optional``, ``required`` (any case, with or without ``CERT_``).

    Raises:
        TLSConfigError: anything else, listing the accepted values.
    """
    key = value.strip().lower()
    # The CERT_ prefix goes with the names only: "CERT_2" is no constant's name.
    if key.startswith("cert_") and not key[5:].isdigit():
        key = key[5:]
    mode = _CERT_REQS.get(key)
    if mode is None:
        raise TLSConfigError(
            f"--ssl-cert-reqs must be 0, 1, 2, none, optional or required, not {value!r}"
        )
    return mode


def reload_certificates(
    context: ssl.SSLContext,
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    password: str | None = None,
) -> None:
    """Load a certificate chain again into the same context.

    OpenSSL keeps one certificate per key type in a context: a chain whose key is of
    another type (RSA to ECDSA) is added beside the old one, which clients that
    prefer the old type keep getting. To replace a certificate whatever its type,
    build a new context with :func:`create_ssl_context` and assign it to
    ``Server.ssl_context`` (what the command line does on SIGHUP).

    Streams wrapped after the reload present the new certificate; connections already
    open keep theirs. Call it from the trio thread: ``load_cert_chain`` releases the
    GIL, and OpenSSL does not allow a context to change while another thread wraps a
    connection with it.

    Raises:
        TLSConfigError: as :func:`create_ssl_context`. The context then still serves
            the old certificate. (The pair is checked in a scratch context first; only
            a file replaced between that check and the real load can slip through.)
    """
    _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), certfile, keyfile, password)
    _load_chain(context, certfile, keyfile, password)


class _NoPassword(Exception):
    """Raised by the password callback when the key is encrypted and no password was
    given; ``load_cert_chain`` passes callback exceptions through unchanged."""


def _load_chain(
    context: ssl.SSLContext,
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None,
    password: str | None,
) -> None:
    # OpenSSL's errors name neither file ("[SSL] PEM lib"), so read both files here
    # first: an OSError then belongs to one file, and the PEM armour can be checked.
    cert = os.fspath(certfile)
    key = cert if keyfile is None else os.fspath(keyfile)
    cert_pem = _read(cert, "certificate")
    key_pem = cert_pem if keyfile is None else _read(key, "private key")
    blocks = _PEM_CERTIFICATE.findall(cert_pem)
    if not blocks:
        raise TLSConfigError(f"{cert!r} holds no PEM certificate")
    try:
        # Parse the certificates alone, so a later failure can only be the key's.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=b"\n".join(blocks).decode("ascii")
        )
    except (ssl.SSLError, UnicodeDecodeError) as exc:
        raise TLSConfigError(f"{cert!r} holds a damaged PEM certificate") from exc
    if not _PEM_PRIVATE_KEY.search(key_pem):
        no_keyfile = " and no key file was given" if keyfile is None else ""
        raise TLSConfigError(f"{key!r} holds no PEM private key{no_keyfile}")

    asked = False

    def give_password() -> str:
        # Always pass a callback: without one OpenSSL prompts on the terminal and a
        # server started by systemd or a container would hang or fail obscurely.
        nonlocal asked
        asked = True
        if password is None:
            raise _NoPassword
        return password

    try:
        context.load_cert_chain(cert, None if keyfile is None else key, give_password)
    except _NoPassword:
        raise TLSConfigError(
            f"the private key in {key!r} is encrypted and no password was given"
        ) from None
    except ValueError as exc:  # Python's own limit, checked before OpenSSL sees it.
        raise TLSConfigError(f"the password for {key!r} is longer than 1024 bytes") from exc
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                f"the private key in {key!r} does not match the certificate in {cert!r}"
            ) from exc
        if asked:  # OpenSSL reports a failed decryption as a bare "PEM lib".
            raise TLSConfigError(
                f"cannot decrypt the private key in {key!r}: wrong password"
            ) from exc
        if exc.reason is None:  # The armour is there but the base64 or DER inside is not.
            raise TLSConfigError(f"{key!r} holds a damaged PEM private key") from exc
        raise TLSConfigError(f"cannot load the private key in {key!r}: {_why(exc)}") from exc
    except OSError as exc:  # Readable a moment ago: replaced or removed meanwhile.
        raise TLSConfigError(f"cannot read {cert!r} or {key!r}: {_why(exc)}") from exc


def _load_ca(context: ssl.SSLContext, cafile: str) -> None:
    try:
        context.load_verify_locations(cafile)
    except ssl.SSLError as exc:
        if exc.reason == "NO_CERTIFICATE_OR_CRL_FOUND":
            raise TLSConfigError(f"CA file {cafile!r} holds no PEM certificate") from exc
        raise TLSConfigError(f"CA file {cafile!r} holds a damaged PEM certificate") from exc
    except OSError as exc:
        raise TLSConfigError(f"cannot read CA file {cafile!r}: {_why(exc)}") from exc


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} file {path!r}: {_why(exc)}") from exc


def _why(exc: OSError) -> str:
    """The short, one-line reason of an OSError or ssl.SSLError, without OpenSSL's
    ``[SSL: LIB]`` prefix and ``(_ssl.c:3905)`` source position."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
    text = re.sub(r"^\[[^]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text.strip())
    return text.splitlines()[0] if text else "unknown error"
