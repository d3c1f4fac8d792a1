"""Standard Webhooks signing: the ``whsec_`` secret format and the ``webhook-signature`` value
(v1, HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}``)."""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNING_PREFIX = "whsec_"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; raises ValueError when malformed."""
    raw = secret.removeprefix(SIGNING_PREFIX)
    key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    if not key:
        raise ValueError("empty signing key")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value over the exact bytes sent."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()
