"""The Slack message for one AIR event: ``text`` (the notification line) and Block Kit blocks
(header, summary, labelled fields, link buttons, footer). Pure functions, no I/O.

Values are escaped for mrkdwn, so an event can never mention ``@channel`` or forge a link;
credential fields are masked. Nothing here raises on odd input (unknown event types,
non-object data, deep nesting, huge values): every message stays inside Slack's limits,
including two it enforces without documenting them (``msg_too_long`` above about 4000
characters of ``text``, ``msg_blocks_too_long`` above about 13,000 of block text,
slackapi/bolt-js#2509). Lengths count UTF-16 code units, never less than Python's ``len``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from air_relay.events import (
    absolute_link,
    event_data,
    event_summary,
    event_title,
    humanize,
    is_sensitive,
    link_values,
    masked,
    scalar_text,
)
from air_relay.redaction import ELLIPSIS

MAX_BLOCKS = 50
HEADER_LIMIT = 150
FIELD_TEXT_LIMIT = 2000
FIELDS_PER_SECTION = 10
BUTTON_TEXT_LIMIT = 75
BUTTON_URL_LIMIT = 3000
BUTTONS_PER_ACTIONS = 25
# Slack answers msg_too_long well below its documented 40,000; the fallback is one line anyway.
TEXT_LIMIT = 3000
SUMMARY_LIMIT = 1000
LABEL_LIMIT = 100
CONTEXT_PART_LIMIT = 200
# All text and URLs in the blocks together: msg_blocks_too_long starts near 13,000.
BLOCKS_TEXT_BUDGET = 10_000
# A field is only worth adding while this much of the budget is left.
MIN_FIELD_TEXT = 40
NESTING_LIMIT = 4


@dataclass(frozen=True)
class SlackMessage:
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


# --- text helpers -------------------------------------------------------------------------


def _clean(text: str) -> str:
    """``text`` without lone surrogates (valid JSON may carry them; UTF-8 cannot)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def units(text: str) -> int:
    """Length in UTF-16 code units: how a limit counts at worst (an emoji is two)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` units, ending in "…" when cut."""
    if len(text) * 2 <= limit or units(text) <= limit:
        return text
    head = text[: limit - 1]
    excess = units(head) - (limit - 1)
    while excess > 0:
        # Dropping k characters drops at least k units, so this ends after a step or two.
        head = head[: len(head) - excess]
        excess = units(head) - (limit - 1)
    return head + ELLIPSIS


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: only these three characters are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(raw: str, limit: int) -> str:
    """``raw`` escaped for mrkdwn and cut to ``limit`` units without breaking an entity."""
    # Escaping only lengthens text, so the first limit + 1 characters decide the result.
    return fit_escaped(escape(_clean(raw[: limit + 1])), limit)


def fit_escaped(text: str, limit: int) -> str:
    """Escaped mrkdwn cut to ``limit`` units without leaving half an entity at the end."""
    cut = fit(text, limit)
    if cut is text:
        return text
    head = cut[: -len(ELLIPSIS)]
    amp = head.rfind("&", max(0, len(head) - 5))
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]  # "&am" would show as text; drop the half entity
    return head + ELLIPSIS


def plain(raw: str, limit: int) -> str:
    """A plain_text value: not escaped (Slack shows plain_text literally), cut to ``limit``."""
    return fit(_clean(raw[: limit + 1]), limit) or ELLIPSIS


def compact(value: Any, limit: int = FIELD_TEXT_LIMIT, depth: int = 0) -> str:
    """A data value as one line, built only up to about ``limit`` characters.

    Lists are joined with commas, objects read ``key: value``; nested ones are bracketed.
    Credential keys inside objects are masked too. Bounded in depth and length, so a huge or
    deeply nested value costs little and never overflows the stack.
    """
    if isinstance(value, Mapping):
        items: Iterator[str] = (
            f"{k}: {_masked_text(v) if is_sensitive(str(k)) else compact(v, limit, depth + 1)}"
            for k, v in value.items()
        )
        return _join(items, limit, depth, "{", "}")
    if isinstance(value, list):
        return _join((compact(v, limit, depth + 1) for v in value), limit, depth, "[", "]")
    if isinstance(value, str):
        return value[: limit + 1]
    return scalar_text(value)[: limit + 1]


def _join(items: Iterator[str], limit: int, depth: int, opening: str, closing: str) -> str:
    if depth >= NESTING_LIMIT:
        return f"{opening}{ELLIPSIS}{closing}"
    parts: list[str] = []
    size = 0
    for item in items:
        parts.append(item)
        size += len(item) + 2
        if size > limit:
            break
    text = ", ".join(parts)
    return f"{opening}{text}{closing}" if depth else text


def _masked_text(value: Any) -> str:
    return masked(compact(value, 200))


def value_text(key: str, value: Any) -> str:
    """What a field shows for ``value`` (unescaped): masked for a credential key."""
    if is_sensitive(key):
        return _masked_text(value)
    text = compact(value)
    return text if text.strip() else "—"


# --- blocks -------------------------------------------------------------------------------


def _text_size(block: Mapping[str, Any]) -> int:
    """The characters a block puts toward Slack's undocumented total (texts and URLs)."""
    size = 0
    for key, value in block.items():
        if key in ("text", "url") and isinstance(value, str):
            size += units(value)
        elif isinstance(value, Mapping):
            size += _text_size(value)
        elif isinstance(value, list):
            size += sum(_text_size(v) for v in value if isinstance(v, Mapping))
    return size


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _usable_url(url: str) -> bool:
    """Whether Slack will take ``url`` as a button link (else the value stays a text field)."""
    if len(url) > BUTTON_URL_LIMIT or not url.isascii() or any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _links(
    data: Mapping[str, Any], console_url: str | None
) -> tuple[list[tuple[str, str]], set[str]]:
    """The (label, url) buttons and the data keys they stand for. A link that cannot be a
    button (relative without ``air.console_url``, too long ...) stays a text field."""
    links: list[tuple[str, str]] = []
    keys: set[str] = set()
    for key, label, value in link_values(data):
        url = absolute_link(value, console_url)
        if url is not None and _usable_url(url) and len(links) < BUTTONS_PER_ACTIONS:
            links.append((label, url))
            keys.add(key)
    return links, keys


def _actions(links: list[tuple[str, str]]) -> dict[str, Any]:
    buttons = [
        {
            "type": "button",
            "text": {"type": "plain_text", "text": plain(label, BUTTON_TEXT_LIMIT)},
            "url": url,
            "action_id": f"air_link_{n}",
        }
        for n, (label, url) in enumerate(links)
    ]
    return {"type": "actions", "elements": buttons}


def _field_texts(data: Mapping[str, Any], skip: set[str]) -> Iterator[str]:
    for key, value in data.items():
        name = str(key)
        if name in skip:
            continue
        label = f"*{mrkdwn(humanize(name[:LABEL_LIMIT]) or name[:LABEL_LIMIT], LABEL_LIMIT)}*\n"
        yield label + mrkdwn(value_text(name, value), FIELD_TEXT_LIMIT - units(label))


def _field_sections(
    texts: list[str], budget: int, max_sections: int
) -> tuple[list[dict[str, Any]], int]:
    """Sections of up to ten fields within ``budget`` characters; also how many were left out."""
    sections: list[dict[str, Any]] = []
    used = 0
    for shown, text in enumerate(texts):
        room = min(FIELD_TEXT_LIMIT, budget - used)
        full = not sections or len(sections[-1]["fields"]) >= FIELDS_PER_SECTION
        if room < MIN_FIELD_TEXT or (full and len(sections) >= max_sections):
            return sections, len(texts) - shown
        text = fit_escaped(text, room)
        if full:
            sections.append({"type": "section", "fields": []})
        sections[-1]["fields"].append({"type": "mrkdwn", "text": text})
        used += units(text)
    return sections, 0


def _footer(event_name: str, organization_id: Any, received_at: datetime | None) -> str:
    name = mrkdwn(event_name, CONTEXT_PART_LIMIT)
    org = mrkdwn(scalar_text(organization_id), CONTEXT_PART_LIMIT)
    text = f"AIR event {name} · Organization {org}"
    if received_at is not None:
        # Slack shows the date in each reader's own time zone; the ISO form is the fallback.
        iso = received_at.isoformat(timespec="seconds")
        stamp = int(received_at.timestamp())
        text += f" · Received <!date^{stamp}^{{date_short_pretty}} {{time_secs}}|{iso}>"
    return text


def _safe_summary(event_name: str, data: Mapping[str, Any]) -> str:
    """The event summary over a bounded copy of the data (its values may be huge)."""
    bounded = {
        k: v if isinstance(v, str | int | float | bool) or v is None else compact(v, SUMMARY_LIMIT)
        for k, v in data.items()
        if isinstance(k, str)
    }
    try:
        return event_summary(event_name, bounded)
    except Exception:  # never let wording fail a delivery
        return event_title(event_name)


def build_message(
    event_name: str,
    organization_id: Any,
    data: Any,
    received_at: datetime | None = None,
    console_url: str | None = None,
) -> SlackMessage:
    """The Slack message for one event; ``data`` may be anything (a non-object is one field).
    With ``console_url``, AIR's console-relative links become buttons too."""
    name = str(event_name)[:CONTEXT_PART_LIMIT] or "AIR event"
    fields: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    if not isinstance(data, Mapping) and data is not None:
        fields = {"data": data}
    title = plain(event_title(name), HEADER_LIMIT)
    summary = _safe_summary(name, fields)
    org = scalar_text(organization_id) if organization_id is not None else "—"
    text = mrkdwn(f"{summary} · Organization {org}", TEXT_LIMIT)

    head: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn(summary, SUMMARY_LIMIT)}},
    ]
    links, link_keys = _links(fields, console_url)
    tail: list[dict[str, Any]] = [_actions(links)] if links else []
    tail.append(_context(_footer(name, organization_id, received_at)))

    more_reserve = 60  # room kept for the "… N more fields" line
    fixed = sum(_text_size(b) for b in head + tail) + more_reserve
    max_sections = MAX_BLOCKS - len(head) - len(tail) - 1
    sections, left_out = _field_sections(
        list(_field_texts(fields, link_keys)), BLOCKS_TEXT_BUDGET - fixed, max_sections
    )
    more: list[dict[str, Any]] = []
    if left_out:
        noun = "field" if left_out == 1 else "fields"
        more = [_context(f"{ELLIPSIS} {left_out} more {noun} not shown (Slack message limits)")]
    blocks = head + sections + tail[:-1] + more + tail[-1:]
    return SlackMessage(text=text or ELLIPSIS, blocks=blocks)


def message_for_body(
    event_name: str,
    organization_id: Any,
    body: bytes,
    received_at: datetime | None = None,
    console_url: str | None = None,
) -> SlackMessage:
    """The message for the exact bytes AIR sent (``data`` taken from the envelope)."""
    data, _ = event_data(body)
    return build_message(event_name, organization_id, data, received_at, console_url)
