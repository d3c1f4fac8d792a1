"""Masks, the redaction of response bodies, and of DSNs."""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote, urlencode

import pytest

from air_relay.redaction import basic_credentials, mask, redact, redact_dsn


def test_mask_shows_the_tail_only_of_long_values() -> None:
    assert mask("xoxb-1234567890-abcd") == "…abcd"
    assert mask("whsec_abcdefghijkl", "whsec_") == "whsec_…ijkl"
    assert mask("short-value") == "…"


def test_redact_replaces_every_secret_everywhere() -> None:
    assert redact("a s3cret b s3cret", ["s3cret", None, ""]) == "a *** b ***"


SECRET = 'a"b\\c/d e\u00e9&<'


@pytest.mark.parametrize(
    "echo",
    [
        SECRET,  # raw
        json.dumps({"t": SECRET}),  # JSON, \\u escapes
        json.dumps({"t": SECRET}, ensure_ascii=False),  # JSON, UTF-8
        json.dumps({"t": SECRET}).replace("/", "\\/"),  # JSON with escaped slashes
        urlencode({"t": SECRET}),  # form-encoded
        quote(SECRET, safe=""),  # percent-encoded, upper-case hex
        quote(SECRET, safe="").lower(),  # and lower-case hex
        html.escape(SECRET),  # HTML
    ],
)
def test_redact_catches_the_encodings_an_echo_uses(echo: str) -> None:
    redacted = redact(f"before {echo} after", [SECRET])
    assert "***" in redacted
    for leftover in ("b\\", "c/d", "e\u00e9", "%C3%A9", "%c3%a9", "&amp;"):
        assert leftover not in redacted.replace("before", "").replace("after", "")


def test_basic_credentials_are_what_the_header_carries() -> None:
    header = base64.b64encode(b"relay:p@ss").decode()
    assert header in basic_credentials("relay", "p@ss")
    assert redact(f"Basic {header}", basic_credentials("relay", "p@ss")) == "Basic ***"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss:w/rd@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?user=u&password=pw&sslmode=require", "postgresql://h/db?user=u&password=***&sslmode=require"),
        ("host=h user=u password=pw dbname=air", "host=h user=u password=*** dbname=air"),
        ("host=h password='p w' dbname=air", "host=h password=*** dbname=air"),
        ("postgresql://postgres:@/postgres?host=/tmp/pg", "postgresql://postgres:@/postgres?host=/tmp/pg"),
        ("postgresql://h/db?sslpassword=k3y&sslmode=verify-full", "postgresql://h/db?sslpassword=***&sslmode=verify-full"),
        ("postgresql://h/db?SSLPASSWORD=k3y", "postgresql://h/db?SSLPASSWORD=***"),
        ("host=h sslpassword=k3y sslkey=/k", "host=h sslpassword=*** sslkey=/k"),
    ],
)  # fmt: skip
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
