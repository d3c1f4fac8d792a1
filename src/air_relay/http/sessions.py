"""Sign-in sessions of the status page: a signed, expiring cookie that stands for one API key.

The cookie is ``v1.<fingerprint>.<expires>.<nonce>.<signature>``: the key's fingerprint (the
12 hex digits the logs already use, never the key), a Unix expiry time, a random nonce, and
an HMAC-SHA256 over the rest. The HMAC key is derived from the API key itself, so:

* every instance that shares the configuration accepts the others' cookies (no shared state);
* removing or changing a key in the configuration ends that key's sessions at once;
* a session is scoped to whatever tenants its key holds now, never to more.

Sign-out clears the cookie and also remembers its nonce in this process until it expires, so
a copy of the cookie stops working here too (other instances honour it until it expires).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from air_relay.config import ApiKey
from air_relay.http.auth import key_fingerprint

COOKIE_NAME = "air_relay_session"
# Only the status page's routes ever see the cookie.
COOKIE_PATH = "/status"

_VERSION = "v1"
_DERIVATION = b"air-relay status-page session v1"
_TOKEN = re.compile(
    r"^v1\.(?P<fp>[0-9a-f]{12})\.(?P<exp>[0-9]{1,12})\.(?P<nonce>[0-9a-f]{32})"
    r"\.(?P<sig>[A-Za-z0-9_-]{43})$"
)
# Bound on the signed-out nonces remembered (each lives until its cookie would have expired).
_MAX_REVOKED = 10_000


@dataclass(frozen=True)
class Session:
    """A verified session: the key it stands for, and when it ends (Unix seconds)."""

    key: ApiKey
    expires: int
    nonce: str


def _signature(key: ApiKey, payload: str) -> str:
    secret = hmac.new(_DERIVATION, key.key.encode(), hashlib.sha256).digest()
    digest = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Sessions:
    """Issues and verifies session cookies for the configured API keys."""

    def __init__(self, keys: list[ApiKey], lifetime_seconds: float) -> None:
        self._keys = list(keys)
        self.lifetime_seconds = int(lifetime_seconds)
        self._revoked: dict[str, int] = {}

    def issue(self, key: ApiKey, now: float | None = None) -> str:
        """A new cookie value for ``key``, valid for the configured lifetime."""
        expires = int(now if now is not None else time.time()) + self.lifetime_seconds
        payload = f"{_VERSION}.{key_fingerprint(key)}.{expires}.{secrets.token_hex(16)}"
        return f"{payload}.{_signature(key, payload)}"

    def verify(self, token: str | None, now: float | None = None) -> Session | None:
        """The session behind a cookie value, or None (malformed, forged, expired, revoked,
        or its key no longer configured)."""
        match = _TOKEN.match(token or "")
        if match is None:
            return None
        payload, _, presented = (token or "").rpartition(".")
        found: ApiKey | None = None
        # Every key with that fingerprint is checked (a 48-bit collision is unlikely, not
        # impossible); the comparison itself is constant-time.
        for key in self._keys:
            if key_fingerprint(key) != match["fp"]:
                continue
            if hmac.compare_digest(_signature(key, payload), presented) and found is None:
                found = key
        expires = int(match["exp"])
        current = now if now is not None else time.time()
        if found is None or expires <= current or match["nonce"] in self._revoked:
            return None
        return Session(found, expires, match["nonce"])

    def revoke(self, session: Session, now: float | None = None) -> None:
        """Refuse this session's cookie from now on (in this process)."""
        current = now if now is not None else time.time()
        if len(self._revoked) >= _MAX_REVOKED:
            self._revoked = {n: e for n, e in self._revoked.items() if e > current}
        if len(self._revoked) < _MAX_REVOKED:
            self._revoked[session.nonce] = session.expires
