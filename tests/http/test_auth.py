"""Credential lookups: ingest tokens and API keys compared in constant time, every entry."""

from __future__ import annotations

import pytest

from air_relay.config import Config
from air_relay.http import auth
from air_relay.http.auth import api_key_for, tenant_for_token
from tests.support import (
    ADMIN_KEY,
    INGEST_TOKEN,
    INGEST_TOKEN_B,
    TENANT,
    TENANT_B,
    TENANT_B_KEY,
    make_config,
)


@pytest.fixture
def creds() -> Config:
    """The test config: two ingest tokens (tenants A and B), an admin key and a B-only key."""
    return make_config()


def test_tenant_for_token(creds: Config) -> None:
    assert tenant_for_token(creds, INGEST_TOKEN) == TENANT
    assert tenant_for_token(creds, INGEST_TOKEN_B) == TENANT_B
    assert tenant_for_token(creds, INGEST_TOKEN[:-1]) is None  # a prefix is not a match
    assert tenant_for_token(creds, INGEST_TOKEN + "x") is None
    assert tenant_for_token(creds, "") is None
    assert tenant_for_token(creds, ADMIN_KEY) is None  # API keys do not ingest
    assert tenant_for_token(creds, INGEST_TOKEN + "\u00e9") is None  # non-ASCII is no crash


def test_api_key_lookup(creds: Config) -> None:
    key = api_key_for(creds, TENANT_B_KEY)
    assert key is not None
    assert key.allows(TENANT_B)
    assert not key.allows(TENANT)
    assert api_key_for(creds, INGEST_TOKEN) is None  # ingest tokens are not API keys
    assert api_key_for(creds, TENANT_B_KEY[:-1]) is None
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
    assert tenant_for_token(creds, INGEST_TOKEN) == TENANT
    assert [b for _, b in calls] == [INGEST_TOKEN.encode(), INGEST_TOKEN_B.encode()]
    calls.clear()
    assert tenant_for_token(creds, "no-such-token") is None
    assert len(calls) == 2
    calls.clear()
    # The first key matches, yet the second is still compared.
    assert api_key_for(creds, ADMIN_KEY) is not None
    assert [b for _, b in calls] == [ADMIN_KEY.encode(), TENANT_B_KEY.encode()]
