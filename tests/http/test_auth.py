"""Credential lookups: ingest tokens and API keys compared in constant time, every entry."""

from __future__ import annotations

import pytest

from air_relay.config import Config, parse_config
from air_relay.http import auth
from air_relay.http.auth import api_key_for, tenant_for_token

SECRETS = {
    "INGEST_A": "ingest-token-aaaa",
    "INGEST_B": "ingest-token-bbbb",
    "API_KEY": "api-key-cccc",
}
SECRET_TEXT = """
ingest:
  tokens:
    - {token: "${INGEST_A}", tenant_id: tenant-a}
    - {token: "${INGEST_B}", tenant_id: tenant-b}
api:
  keys:
    - {key: "${API_KEY}", tenant_ids: [tenant-a]}
"""


@pytest.fixture
def creds() -> Config:
    return parse_config(SECRET_TEXT, env=SECRETS)


def test_tenant_for_token(creds: Config) -> None:
    assert tenant_for_token(creds, SECRETS["INGEST_A"]) == "tenant-a"
    assert tenant_for_token(creds, SECRETS["INGEST_B"]) == "tenant-b"
    assert tenant_for_token(creds, "ingest-token-") is None  # a prefix is not a match
    assert tenant_for_token(creds, SECRETS["INGEST_A"] + "x") is None
    assert tenant_for_token(creds, "") is None
    assert tenant_for_token(creds, SECRETS["API_KEY"]) is None  # API keys do not ingest
    assert tenant_for_token(creds, "ingest-token-\u00e9") is None  # non-ASCII is no crash


def test_api_key_lookup(creds: Config) -> None:
    key = api_key_for(creds, SECRETS["API_KEY"])
    assert key is not None
    assert key.allows("tenant-a")
    assert not key.allows("tenant-b")
    assert api_key_for(creds, SECRETS["INGEST_A"]) is None  # ingest tokens are not API keys
    assert api_key_for(creds, "api-key-ccc") is None
    assert api_key_for(creds, "") is None


def test_lookups_compare_every_entry_with_compare_digest(
    creds: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    # The first token matches, yet the second is still compared: no early exit.
    assert tenant_for_token(creds, SECRETS["INGEST_A"]) == "tenant-a"
    assert [b for _, b in calls] == [SECRETS["INGEST_A"].encode(), SECRETS["INGEST_B"].encode()]
    calls.clear()
    assert tenant_for_token(creds, "no-such-token") is None
    assert len(calls) == 2
    calls.clear()
    assert api_key_for(creds, "nope") is None
    assert len(calls) == 1
