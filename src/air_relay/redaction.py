"""Keeping secrets out of what air-relay shows: masks for API responses and chat messages,
redaction of response bodies before they reach the audit log and the logs, and of DSNs."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "***"
ELLIPSIS = "\u2026"
# A masked value shows its last characters only when it is long enough that they give
# nothing away.
MASK_SHOWS_TAIL_FROM = 12


def mask(value: str, prefix: str = "") -> str:
    """The write-only form of a secret: ``prefix`` + ``…`` + its last 4 characters."""
    tail = value[-4:] if len(value) >= MASK_SHOWS_TAIL_FROM else ""
    return f"{prefix}{ELLIPSIS}{tail}"


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``.

    A response body goes into the audit log and the log line; a sink that echoes the request
    (many test receivers do) would otherwise copy its own credentials there.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***``, in URI or ``key=value`` form."""
    scheme, sep, rest = dsn.partition("://")
    if sep:
        # The user info ends at the last "@" before the path: a password may contain "@".
        authority_end = len(rest)
        for stop in ("/", "?"):
            at_stop = rest.find(stop, rest.rfind("@") + 1)
            if at_stop != -1:
                authority_end = min(authority_end, at_stop)
        authority, tail = rest[:authority_end], rest[authority_end:]
        userinfo, at, host = authority.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if at and colon and password:
            authority = f"{user}:{REDACTED}@{host}"
        tail = re.sub(r"([?&]password=)[^&#]*", rf"\g<1>{REDACTED}", tail, flags=re.IGNORECASE)
        return f"{scheme}://{authority}{tail}"
    return re.sub(
        r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", rf"\g<1>{REDACTED}", dsn, flags=re.I
    )
