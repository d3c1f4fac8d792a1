"""Keeping secrets out of what air-relay shows: masks for API responses and chat messages,
redaction of response bodies before they reach the audit log and the logs, and of DSNs."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

REDACTED = "***"
ELLIPSIS = "\u2026"
# A masked value shows its last characters only when it is long enough that they give
# nothing away.
MASK_SHOWS_TAIL_FROM = 12


def mask(value: str, prefix: str = "") -> str:
    """The write-only form of a secret: ``prefix`` + ``…`` + its last 4 characters."""
    tail = value[-4:] if len(value) >= MASK_SHOWS_TAIL_FROM else ""
    return f"{prefix}{ELLIPSIS}{tail}"


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def secret_forms(secret: str) -> set[str]:
    """``secret`` as a receiver that echoes a request may write it: raw, JSON-escaped (with
    or without ``\\/`` and ``\\uXXXX``), URL-encoded (upper- or lower-case hex, ``+`` for
    spaces) and HTML-escaped."""
    escaped = json.dumps(secret)[1:-1]
    unescaped_unicode = json.dumps(secret, ensure_ascii=False)[1:-1]
    url = quote(secret, safe="")
    return {
        secret,
        escaped,
        escaped.replace("/", "\\/"),
        unescaped_unicode,
        unescaped_unicode.replace("/", "\\/"),
        url,
        _lower_hex(url),
        quote_plus(secret, safe=""),
        html.escape(secret),
    }


def basic_credentials(user: str, password: str) -> set[str]:
    """The base64 text an ``Authorization: Basic`` header carries for this user and password
    (in both encodings clients use), which an echo shows instead of the password."""
    out = set()
    for encoding in ("utf-8", "latin-1"):
        try:
            pair = f"{user}:{password}".encode(encoding)
        except UnicodeEncodeError:
            continue
        out.add(base64.b64encode(pair).decode("ascii"))
    return out


def redaction_forms(secrets: Iterable[str | None]) -> list[str]:
    """Every form of every secret, longest first (a form may contain a shorter one)."""
    forms = {form for secret in secrets if secret for form in secret_forms(secret)}
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret, in every form of ``secret_forms``, replaced by ``***``.

    A response body goes into the audit log and the log line; a sink that echoes the request
    (many test receivers do) would otherwise copy its own credentials there.
    """
    return redact_forms(text, redaction_forms(secrets))


def redact_forms(text: str, forms: Iterable[str]) -> str:
    """``text`` with every one of ``forms`` (from ``redaction_forms``) replaced by ``***``."""
    for form in forms:
        text = text.replace(form, REDACTED)
    return text


# Names of DSN parameters that hold a secret (password, sslpassword ...).
_PASSWORD_LIKE = "(?:password|passwd|secret|token)"


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
        tail = re.sub(
            rf"([?&][^=&#]*{_PASSWORD_LIKE}[^=&#]*=)[^&#]*", rf"\g<1>{REDACTED}", tail, flags=re.I
        )
        return f"{scheme}://{authority}{tail}"
    return re.sub(
        rf"(\b\w*{_PASSWORD_LIKE}\w*\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)",
        rf"\g<1>{REDACTED}",
        dsn,
        flags=re.I,
    )
