"""The json/jsonb codec's encoder (``pool.json_text``) writes exactly what json.dumps writes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from air_relay.db.pool import json_text

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(value=JSON)
def test_json_text_is_json_dumps(value: Any) -> None:
    assert json_text(value) == json.dumps(value)


def test_integers_of_every_size() -> None:
    for value in (0, -1, 2**63 - 1, -(2**63), 2**200):
        assert json_text(value) == json.dumps(value)
