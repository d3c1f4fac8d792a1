"""Webhook templates: a Webhook sink's optional ``template`` turns each AIR event into the JSON
a chat tool's incoming webhook wants, instead of AIR's envelope as received.

A template is a preset name (``teams``, ``discord``, ``google_chat``, ``mattermost``) or
``{"body": "<Jinja2 template producing JSON>"}``, rendered in Jinja2's sandbox with the event
(``TemplateContext``). At create and update a template must render valid JSON within
``RENDERED_BODY_LIMIT`` for every example of the AIR event catalog; at send, a render that
fails is a permanent failure whose detail goes to the audit row.

The presets are fixed and cut every value they show, so they render here, in the relay's
process. A custom template is only parsed here (``check_source``: syntax, and none of the
constructs that make recursion or exponential work easy); it renders in a template worker
process under hard limits (``template_worker``, ``template_workers``), never on the event loop.

The sandbox keeps a template from reaching Python internals; on top of it, a render is kept
small: no string or list repetition beyond ``REPEAT_LIMIT``, no ``%`` formatting or padding
methods, ``range`` draws from a budget of ``RANGE_BUDGET`` items per render, and the output
stops at ``RENDERED_BODY_LIMIT``. Those are cheap early refusals, not a bound: the worker's
memory, CPU and wall-clock limits are.
"""

from __future__ import annotations

import contextvars
import json
import operator
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from air_relay.events import (
    absolute_link,
    event_subject,
    event_title,
    humanize,
    link_values,
    scalar_text,
    severity_for,
)
from air_relay.sinks.slack_message import fit, value_text
from air_relay.timestamps import rfc3339
from air_relay.validation import InvalidArgument

PRESETS_NAMES = ("teams", "discord", "google_chat", "mattermost")
TEMPLATE_SOURCE_LIMIT = 16 * 1024  # characters of a custom template
RENDERED_BODY_LIMIT = 1024 * 1024  # bytes a rendered body may have
REPEAT_LIMIT = 100_000  # items or characters a "*" may produce
RANGE_BUDGET = 10_000  # items every range() of one render may produce together
CALL_INT_LIMIT = 100_000  # the largest integer argument a call may take
FIELDS_LIMIT = 25  # fields in the context's ``fields``
FIELD_VALUE_LIMIT = 1000  # UTF-16 units of one field's shown value
# String methods that pad or format to a width a template could make huge.
_UNSAFE_METHODS = frozenset({"format", "format_map", "center", "ljust", "rjust", "zfill"})
_UNSAFE_FILTERS = ("center", "format", "indent", "wordwrap", "batch", "slice", "filesizeformat")
# Statements a template may not use: macros, call blocks and blocks (``self.name()``) are the
# ways to recursion and to work that doubles per line of source; extends, include and import
# have no templates to load. Also refused: ``for ... recursive``.
_REFUSED_STATEMENTS: dict[type[nodes.Node], str] = {
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.Block: "block",
    nodes.Extends: "extends",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
}


class RenderFailed(Exception):
    """A template that did not produce JSON within the limits; the message says why."""


class TemplateRefused(Exception):
    """A template's source refused before any render (syntax, a refused statement)."""


_range_left: contextvars.ContextVar[int] = contextvars.ContextVar("range_left", default=0)


def _budget_range(*args: int) -> range:
    items = range(*args)
    left = _range_left.get() - len(items)
    if left < 0:
        raise SecurityError(f"range() beyond {RANGE_BUDGET} items in one render")
    _range_left.set(left)
    return items


def _repeat(left: Any, right: Any) -> Any:
    for seq, times in ((left, right), (right, left)):
        sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
        if sized and len(seq) * times > REPEAT_LIMIT:
            raise SecurityError(f"a repetition beyond {REPEAT_LIMIT} items")
    return operator.mul(left, right)


def _power(left: Any, right: Any) -> Any:
    if isinstance(right, int | float) and abs(right) > 64:
        raise SecurityError("an exponent beyond 64")
    return operator.pow(left, right)


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        raise SecurityError("% formatting is not available; join with ~ instead")
    return operator.mod(left, right)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False)
        self.binop_table.update({"*": _repeat, "**": _power, "%": _modulo})
        self.globals["range"] = _budget_range
        # lipsum(n) writes n paragraphs: of no use in a message, and a way to a huge string.
        self.globals.pop("lipsum", None)
        for name in _UNSAFE_FILTERS:
            self.filters.pop(name, None)
        self.filters.update(text=_text, clip=_clip, md=_markdown, chat=_google_chat)

    def wrap_str_format(self, value: Any) -> None:
        # str.format and format_map are not offered at all: a width in the format string
        # could make a string of any size (is_safe_attribute refuses them).
        return None

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in _UNSAFE_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and abs(value) > CALL_INT_LIMIT:
                raise SecurityError(f"an argument beyond {CALL_INT_LIMIT}")
        return super().call(__context, __obj, *args, **kwargs)


# --- filters the templates may use --------------------------------------------------------------


def _clean(text: str) -> str:
    """Without lone surrogates, which UTF-8 cannot carry."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _text(value: Any) -> str:
    """Any value as one line of text (lists joined, objects ``key: value``)."""
    if isinstance(value, str):
        return _clean(value)
    return _clean(scalar_text(value)[: RENDERED_BODY_LIMIT + 1])


def _clip(value: Any, limit: int) -> str:
    """At most ``limit`` UTF-16 units (as chat tools count), cut with "…"."""
    return fit(_text(value)[: limit + 1], max(1, int(limit)))


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_~[]()>|<"})


def _markdown(value: Any) -> str:
    """Escaped for Markdown (Discord, Mattermost), on one line, @-mentions broken."""
    text = " ".join(_text(value).splitlines()).translate(_MARKDOWN)
    return text.replace("@", "@\u200b")


def _google_chat(value: Any) -> str:
    """Safe in Google Chat text: no ``<...>`` link or mention syntax, on one line."""
    text = " ".join(_text(value).splitlines())
    return text.replace("<", "\u2039").replace(">", "\u203a")


# --- the context --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateContext:
    """What a template sees, besides the filters ``text``, ``clip(n)``, ``md``, ``chat`` and
    Jinja2's own (``tojson`` above all)."""

    envelope: Any  # the AIR envelope as received (parsed)
    event_id: str
    received_at: str | None  # RFC 3339
    console_url: str | None

    def variables(self) -> dict[str, Any]:
        envelope = self.envelope if isinstance(self.envelope, dict) else {}
        name = envelope.get("eventName")
        name = name if isinstance(name, str) else ""
        data = envelope.get("data")
        fields_of: Mapping[str, Any] = data if isinstance(data, dict) else {}
        links = [
            {"key": key, "label": label, "url": url or value, "absolute": url is not None}
            for key, label, value in link_values(fields_of)
            for url in [absolute_link(value, self.console_url)]
        ]
        shown_as_link = {str(link["key"]) for link in links if link["absolute"]}
        return {
            "envelope": self.envelope,
            "event_name": name,
            "organization_id": envelope.get("organizationId"),
            "data": data,
            "title": event_title(name),
            "summary": _summary(name, fields_of),
            "severity": severity_for(name),
            "links": links,
            "fields": list(_fields(fields_of, shown_as_link)),
            "event_id": self.event_id,
            "received_at": self.received_at,
            "console_url": self.console_url,
        }


def _summary(name: str, data: Mapping[str, Any]) -> str:
    try:
        subject = event_subject(name, data)
    except RecursionError:
        subject = None
    title = event_title(name)
    return _clean(fit(f"{title}: {subject}" if subject else title, 2000))


def _fields(data: Mapping[str, Any], skip: set[str]) -> Iterator[dict[str, str]]:
    """The data as labelled text (credential fields masked), links shown as links left out."""
    count = 0
    for key, value in data.items():
        name = str(key)
        if name in skip:
            continue
        if count == FIELDS_LIMIT:
            return
        count += 1
        label = humanize(name[:100]) or name[:100] or "—"
        shown = fit(value_text(name, value)[: FIELD_VALUE_LIMIT + 1], FIELD_VALUE_LIMIT)
        yield {"key": _clean(name), "label": _clean(label), "value": _clean(shown) or "—"}


# --- compiling and rendering --------------------------------------------------------------------

_ENV = _Sandbox()


def check_source(source: str) -> nodes.Template:
    """The parsed template, or ``TemplateRefused`` saying why not: a syntax error, nesting too
    deep to parse, or a refused statement. Parsing is linear in the source (capped at
    ``TEMPLATE_SOURCE_LIMIT``), so the relay's process does it at create and update."""
    try:
        tree = _ENV.parse(source)
    except TemplateError as exc:
        raise TemplateRefused(f"does not compile: {str(exc)[:300]}") from exc
    except RecursionError as exc:
        raise TemplateRefused("does not compile: it is nested too deeply") from exc
    # Iteratively: a tree that just parsed can be as deep as the recursion limit allows.
    todo: list[nodes.Node] = [tree]
    while todo:
        node = todo.pop()
        refused = _REFUSED_STATEMENTS.get(type(node))
        if refused is not None:
            raise TemplateRefused(f"uses {{% {refused} %}}, which templates may not use")
        if isinstance(node, nodes.For) and node.recursive:
            raise TemplateRefused("uses a recursive for loop, which templates may not use")
        todo.extend(node.iter_child_nodes())
    return tree


@lru_cache(maxsize=64)
def compile_template(source: str) -> Template:
    """The compiled template, checked by ``check_source`` (cached by source: a template is
    compiled once per process, not per send)."""
    try:
        tree = check_source(source)
    except TemplateRefused as exc:
        raise RenderFailed(f"the template {exc}") from exc
    return _ENV.from_string(tree)


def template_source(spec: Any) -> str:
    """The Jinja2 source of a stored ``template`` argument (a preset name or ``{"body"}``)."""
    if isinstance(spec, str):
        return PRESETS[spec]
    body: str = spec["body"]
    return body


def render(spec: Any, context: TemplateContext) -> bytes:
    """The body to send: the template rendered, checked to be JSON within the limit."""
    token = _range_left.set(RANGE_BUDGET)
    try:
        chunks: list[str] = []
        size = 0
        for chunk in compile_template(template_source(spec)).generate(context.variables()):
            size += len(chunk)
            if size > RENDERED_BODY_LIMIT:
                raise RenderFailed(f"the body exceeds {RENDERED_BODY_LIMIT} bytes")
            chunks.append(chunk)
    except (RenderFailed, MemoryError):
        # Out of memory is for the caller to handle: a template worker retires on it.
        raise
    except RecursionError as exc:
        raise RenderFailed("RecursionError: nested too deep") from exc
    except Exception as exc:
        # Whatever else a template's filters, methods or data raise, it fails the render.
        raise RenderFailed(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        _range_left.reset(token)
    body = "".join(chunks).encode("utf-8", "replace")
    if len(body) > RENDERED_BODY_LIMIT:
        raise RenderFailed(f"the body exceeds {RENDERED_BODY_LIMIT} bytes")
    try:
        json.loads(body)
    except ValueError as exc:
        raise RenderFailed(f"not valid JSON: {exc}") from exc
    return body


def _finite_or_text(text: str) -> float | str:
    value = float(text)
    return value if value not in (float("inf"), float("-inf")) else text


def parse_envelope(body: bytes) -> Any:
    """The envelope of a delivery parsed from the bytes AIR sent (None if they are not JSON)."""
    try:
        return json.loads(body.decode("utf-8", "replace"), parse_float=_finite_or_text)
    except (ValueError, RecursionError):
        return None


def delivery_context(
    body: bytes, event_id: str, received_at: datetime | None, console_url: str | None
) -> TemplateContext:
    """The context of a delivery: its envelope parsed from the bytes AIR sent."""
    return TemplateContext(parse_envelope(body), event_id, rfc3339(received_at), console_url)


def render_preset(name: str, context: TemplateContext) -> bytes:
    """A preset rendered in this process; any failure, out of memory included, is a
    ``RenderFailed``."""
    try:
        return render(name, context)
    except MemoryError as exc:
        raise RenderFailed("MemoryError: out of memory") from exc


def example_context(
    envelope: dict[str, Any],
    console_url: str | None,
    *,
    event_id: str | None = None,
    received_at: datetime | None = None,
) -> TemplateContext:
    """The context of a catalog example, as if it had just arrived: a fresh random event id
    and the current time unless given (never a constant a template could tell apart from a
    real event by)."""
    return TemplateContext(
        envelope=envelope,
        event_id=event_id or str(uuid.uuid4()),
        received_at=rfc3339(received_at or datetime.now(UTC)),
        console_url=console_url,
    )


def parse_template(value: Any, field: str) -> Any:
    """A ``template`` argument checked in this process: a preset name, or ``{"body": ...}``
    within the size limit that passes ``check_source``. Rendering it for every catalog
    example is the template workers' part (``TemplateWorkers.check``), at create and update.
    """
    if isinstance(value, str):
        if value not in PRESETS:
            raise InvalidArgument(field, f"must be one of {', '.join(PRESETS_NAMES)}, or an object")
        return value
    if not isinstance(value, dict) or set(value) != {"body"}:
        raise InvalidArgument(field, 'must be a preset name or an object {"body": "<template>"}')
    body = value["body"]
    if not isinstance(body, str) or not body.strip():
        raise InvalidArgument(f"{field}.body", "must be a non-empty string")
    if len(body) > TEMPLATE_SOURCE_LIMIT:
        raise InvalidArgument(
            f"{field}.body", f"must be at most {TEMPLATE_SOURCE_LIMIT} characters"
        )
    try:
        check_source(body)
    except TemplateRefused as exc:
        raise InvalidArgument(field, str(exc)) from exc
    return {"body": body}


# --- the presets --------------------------------------------------------------------------------

_FOOTER = (
    '("AIR event " ~ event_name ~ " · Organization " ~ (organization_id | text)'
    ' ~ " · Severity " ~ severity)'
)

# Microsoft Teams (Workflows and connector webhooks): an Adaptive Card in a message.
TEAMS = (
    """{%- set color = {"critical": "Attention", "error": "Attention", "warning": "Warning"} -%}
{%- set urls = links | selectattr("absolute") | list -%}
{"type": "message", "attachments": [{
  "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
  "content": {
    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
    "type": "AdaptiveCard", "version": "1.4", "msteams": {"width": "Full"},
    "body": [
      {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": true,
       "color": {{ color.get(severity, "Default") | tojson }},
       "text": {{ title | clip(150) | tojson }}},
      {"type": "TextBlock", "wrap": true, "text": {{ summary | clip(500) | md | tojson }}}
      {%- if fields %},
      {"type": "FactSet", "facts": [
        {%- for f in fields[:10] %}
        {"title": {{ f.label | clip(40) | md | tojson }},
         "value": {{ f.value | clip(160) | md | tojson }}}
        {{- "," if not loop.last }}
        {%- endfor %}]}
      {%- endif %},
      {"type": "TextBlock", "wrap": true, "isSubtle": true, "size": "Small",
       "text": {{ """
    + _FOOTER
    + """ | clip(200) | tojson }}}
    ]
    {%- if urls %},
    "actions": [
      {%- for link in urls[:3] %}
      {"type": "Action.OpenUrl", "title": {{ link.label | tojson }},
       "url": {{ link.url | tojson }}}{{ "," if not loop.last }}
      {%- endfor %}]
    {%- endif %}
  }
}]}
"""
)

# Discord: one embed (title, description with the links, up to 8 fields, footer), and no
# mention of anyone whatever the event says.
DISCORD = (
    """{%- set colors = {"critical": 13632027, "error": 15158332, "warning": 15844367} -%}
{%- set urls = links | selectattr("absolute") | list -%}
{%- set description -%}
{{ summary | clip(400) | md }}
{%- for link in urls[:3] %}
[{{ link.label }}]({{ link.url | clip(300) }})
{%- endfor -%}
{%- endset -%}
{"username": "AIR", "allowed_mentions": {"parse": []},
 "embeds": [{
   "title": {{ title | clip(256) | tojson }},
   "description": {{ description | clip(1800) | tojson }},
   {%- if urls and urls[0].url | length <= 2000 %}
   "url": {{ urls[0].url | tojson }},
   {%- endif %}
   "color": {{ colors[severity] if severity in colors else 3066993 }},
   "fields": [
     {%- for f in fields[:8] %}
     {"name": {{ f.label | clip(64) | md | tojson }},
      "value": {{ f.value | clip(150) | md | tojson }}, "inline": true}
     {{- "," if not loop.last }}
     {%- endfor %}],
   "footer": {"text": {{ """
    + _FOOTER
    + """ | clip(200) | tojson }}}
   {%- if received_at %},
   "timestamp": {{ received_at | tojson }}
   {%- endif %}
 }]}
"""
)

# Google Chat: a text message (its *bold* and <url|label> link syntax).
GOOGLE_CHAT = (
    """{%- set urls = links | selectattr("absolute") | list -%}
{%- set text -%}
*{{ title | chat }}*
{{ summary | clip(500) | chat }}
{% for f in fields[:15] %}
{{ f.label | clip(60) | chat }}: {{ f.value | clip(200) | chat }}
{%- endfor %}
{%- for link in urls[:3] %}
<{{ link.url }}|{{ link.label }}>
{%- endfor %}
_{{ """
    + _FOOTER
    + """ | clip(200) | chat }}_
{%- endset -%}
{"text": {{ text | clip(4000) | tojson }}}
"""
)

# Mattermost: a Markdown text message.
MATTERMOST = (
    """{%- set urls = links | selectattr("absolute") | list -%}
{%- set text -%}
#### {{ title | md }}
{{ summary | clip(1000) | md }}
{% for f in fields %}
- **{{ f.label | clip(100) | md }}:** {{ f.value | clip(500) | md }}
{%- endfor %}
{%- if urls %}

{% for link in urls[:5] %}[{{ link.label }}]({{ link.url }}) {% endfor %}
{%- endif %}

_{{ """
    + _FOOTER
    + """ | clip(200) | md }}_
{%- endset -%}
{"username": "AIR", "text": {{ text | clip(16000) | tojson }}}
"""
)

PRESETS: dict[str, str] = {
    "teams": TEAMS,
    "discord": DISCORD,
    "google_chat": GOOGLE_CHAT,
    "mattermost": MATTERMOST,
}
