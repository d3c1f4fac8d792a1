"""Masks, the redaction of response bodies, and of DSNs."""

from __future__ import annotations

import pytest

from air_relay.redaction import mask, redact, redact_dsn


def test_mask_shows_the_tail_only_of_long_values() -> None:
    assert mask("xoxb-1234567890-abcd") == "…abcd"
    assert mask("whsec_abcdefghijkl", "whsec_") == "whsec_…ijkl"
    assert mask("short-value") == "…"


def test_redact_replaces_every_secret_everywhere() -> None:
    assert redact("a s3cret b s3cret", ["s3cret", None, ""]) == "a *** b ***"


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
    ],
)  # fmt: skip
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected
