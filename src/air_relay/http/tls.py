"""HTTPS for the HTTP server: the server's TLS context (TLS 1.2 or newer) from
``server.tls.cert_file`` and ``key_file``, reloaded on SIGHUP without dropping a connection.

The listening side wraps every connection with one front context, whose SNI callback (which
OpenSSL calls on every ClientHello, with or without a server name) hands the handshake the
context loaded last. A reload builds and checks a whole new context before it swaps it in, so
a renewed certificate reaches new handshakes only, connections already open keep theirs, and a
broken file on reload leaves the previous certificate in service.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path

import structlog

from air_relay.config import ConfigError, TlsConfig

log = structlog.get_logger(__name__)

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\s.+?-----END CERTIFICATE-----", re.DOTALL)


def _context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def fingerprint(cert_file: str) -> str:
    """SHA-256 of the first certificate in ``cert_file`` (the server's own), as in browsers and
    ``openssl x509 -fingerprint -sha256``, for the log."""
    found = _PEM_CERT.search(Path(cert_file).read_text(encoding="ascii", errors="replace"))
    if found is None:
        return ""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(found.group(0))).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


class ServerTLS:
    """The front context to serve with (``context``) and the one loaded last behind it."""

    def __init__(self, cfg: TlsConfig) -> None:
        assert cfg.cert_file and cfg.key_file
        self.cert_file = cfg.cert_file
        self.key_file = cfg.key_file
        try:
            self._current = _context(self.cert_file, self.key_file)
            # The front context holds the same certificate: it is what a handshake gets should
            # the callback ever not run.
            self.context = _context(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("server.tls", _why(exc, self.cert_file, self.key_file)) from exc
        self.context.sni_callback = self._pick
        self.fingerprint = fingerprint(self.cert_file)

    def _pick(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        connection.context = self._current

    def reload(self) -> bool:
        """Load the files again; on success new handshakes get the new certificate. A failure
        is logged and keeps the certificate in service."""
        try:
            fresh = _context(self.cert_file, self.key_file)
            fresh_fingerprint = fingerprint(self.cert_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error(
                "tls_reload_failed",
                error=_why(exc, self.cert_file, self.key_file),
                kept_fingerprint_sha256=self.fingerprint,
            )
            return False
        self._current = fresh
        self.fingerprint = fresh_fingerprint
        log.info("tls_reloaded", cert_file=self.cert_file, fingerprint_sha256=self.fingerprint)
        return True


def _why(exc: BaseException, cert_file: str, key_file: str) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror}"
    return f"cannot use {cert_file} with {key_file}: {type(exc).__name__}: {exc}"
