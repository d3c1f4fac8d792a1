"""The status page's HTML and CSS, built as plain strings: the sign-in form, the relay's own
state and one row per sink.

Everything that comes from outside (sink names, errors, tenant ids) goes through ``_e``
(``html.escape``, quotes included) on its way into the page, attributes and text alike. The
page has no script and needs none: it is read, and reloaded.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from air_relay.model import SinkHealth

SIGN_IN_PATH = "/status/sign-in"
SIGN_OUT_PATH = "/status/sign-out"
STYLE_PATH = "/status/style.css"
# Errors longer than this are cut in the table; the whole text is in the cell's title.
_ERROR_CHARS = 200

STATES = ("healthy", "failing", "idle", "inactive")

STYLE = """\
:root { color-scheme: light; --ok: #1a7f37; --bad: #cf222e; --idle: #6e7781; --off: #afb8c1; }
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
header { display: flex; align-items: center; justify-content: space-between;
  padding: 0.6rem 1.5rem; background: #24292f; color: #fff; }
header h1 { font-size: 1.15rem; margin: 0; }
header form { margin: 0; }
main { padding: 1rem 1.5rem 2rem; }
h2 { font-size: 1rem; margin: 1.2rem 0 0.5rem; }
button { font: inherit; padding: 0.3rem 0.9rem; cursor: pointer; }
dl.relay { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1.2rem;
  margin: 0; padding: 0.8rem 1rem; background: #fff; border: 1px solid #d0d7de;
  border-radius: 6px; max-width: 40rem; }
dl.relay dt { font-weight: 600; }
dl.relay dd { margin: 0; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #d0d7de; }
th, td { text-align: left; padding: 0.4rem 0.6rem; border-bottom: 1px solid #d8dee4;
  vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error { max-width: 28rem; overflow-wrap: anywhere; font-family: ui-monospace, monospace;
  font-size: 0.85rem; }
.tenant { font-family: ui-monospace, monospace; font-size: 0.8rem; color: #57606a; }
.state { font-weight: 600; white-space: nowrap; }
.state::before { content: ""; display: inline-block; width: 0.7rem; height: 0.7rem;
  border-radius: 50%; margin-right: 0.4rem; vertical-align: -0.05rem; }
.state-healthy { color: var(--ok); } .state-healthy::before { background: var(--ok); }
.state-failing { color: var(--bad); } .state-failing::before { background: var(--bad); }
.state-idle { color: var(--idle); } .state-idle::before { background: var(--idle); }
.state-inactive { color: var(--off); } .state-inactive::before { background: var(--off); }
.up { color: var(--ok); font-weight: 600; } .down { color: var(--bad); font-weight: 600; }
.muted { color: #57606a; }
.signin { max-width: 22rem; margin: 4rem auto; padding: 1.5rem; background: #fff;
  border: 1px solid #d0d7de; border-radius: 6px; }
.signin h1 { font-size: 1.2rem; margin-top: 0; }
.signin label { display: block; font-weight: 600; margin-bottom: 0.3rem; }
.signin input { width: 100%; box-sizing: border-box; padding: 0.4rem; margin-bottom: 0.8rem;
  font: inherit; }
.alert { color: var(--bad); font-weight: 600; }
footer { padding: 0 1.5rem 1.5rem; color: #57606a; font-size: 0.85rem; }
"""


@dataclass(frozen=True)
class SpoolState:
    spooling: bool
    events: int
    bytes: int
    max_bytes: int


@dataclass(frozen=True)
class RelayState:
    """The relay's own state, as this process sees it."""

    version: str
    uptime_seconds: float
    database_reachable: bool
    schema_version: int | None
    spool: SpoolState | None  # None: no spool configured
    dispatcher: bool  # whether this process delivers (serve does; an API-only app does not)
    now: datetime


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def age(seconds: float) -> str:
    """A short duration: ``45 s``, ``12 min``, ``3 h 4 min``, ``2 d 5 h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def size(n: int) -> str:
    """Bytes for people: ``512 B``, ``3.4 MiB``, ``1.0 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    utc = value.astimezone(UTC)
    iso = utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    shown = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = age((now - utc).total_seconds())
    return f'<time datetime="{iso}">{shown}</time> <span class="muted">({ago} ago)</span>'


def _page(title: str, body: str, *, status_header: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_e(title)}</title>\n"
        f'<link rel="stylesheet" href="{STYLE_PATH}">\n</head>\n<body>\n'
        f"{status_header}{body}</body>\n</html>\n"
    )


def sign_in_page(error: str | None = None) -> str:
    """The sign-in form; ``error`` (ours, never the input) shown above it."""
    alert = f'<p class="alert" role="alert" id="sign-in-error">{_e(error)}</p>\n' if error else ""
    body = (
        '<main class="signin">\n<h1>air-relay status</h1>\n'
        f"{alert}"
        f'<form method="post" action="{SIGN_IN_PATH}">\n'
        '<label for="api_key">API key</label>\n'
        '<input type="password" id="api_key" name="api_key" autocomplete="current-password" '
        "required autofocus>\n"
        '<button type="submit" id="sign-in">Sign in</button>\n</form>\n'
        '<p class="muted">The same keys as the management API. The session lasts a few hours '
        "and sees only that key's tenants.</p>\n</main>\n"
    )
    return _page("Sign in · air-relay status", body)


def _relay_panel(relay: RelayState) -> str:
    if relay.database_reachable:
        database = f'<span class="up">reachable</span> (schema {_e(relay.schema_version)})'
    else:
        database = '<span class="down">unreachable</span>'
    if relay.spool is None:
        spool = '<span class="muted">not configured</span>'
    else:
        sp = relay.spool
        mode = '<span class="down">spooling</span>' if sp.spooling else "idle"
        spool = f"{mode}: {sp.events} events, {size(sp.bytes)} of {size(sp.max_bytes)}"
    delivery = "running in this process" if relay.dispatcher else "not run by this process"
    items = [
        ("Database", database, "relay-database"),
        ("Spool", spool, "relay-spool"),
        ("Delivery", delivery, "relay-delivery"),
        ("Version", _e(relay.version), "relay-version"),
        ("Uptime", age(relay.uptime_seconds), "relay-uptime"),
    ]
    rows = "".join(f'<dt>{k}</dt><dd id="{i}">{v}</dd>\n' for k, v, i in items)
    return f'<section id="relay">\n<h2>Relay</h2>\n<dl class="relay">\n{rows}</dl>\n</section>\n'


def _error_cell(row: SinkHealth, now: datetime) -> str:
    """The latest failure: its error, its HTTP status and when; kept (muted) after the sink
    recovered, so the cause of last night's outage is still there in the morning."""
    if not row.last_error and row.last_status_code is None:
        return '<td class="error"><span class="muted">—</span></td>'
    text = row.last_error or ""
    if row.last_status_code is not None:
        status = f"HTTP {row.last_status_code}"
        # ``http_503`` says no more than the status itself.
        redundant = text in ("", f"http_{row.last_status_code}")
        text = status if redundant else f"{status}: {text}"
    if row.consecutive_failures > 1:
        text += f" ({row.consecutive_failures} failures in a row)"
    shown = text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 1] + "…"
    cls = "error" if row.state == "failing" else "error muted"
    when = f"<br>{_when(row.last_failure_at, now)}" if row.last_failure_at else ""
    return f'<td class="{cls}" title="{_e(text)}">{_e(shown)}{when}</td>'


def _sink_row(row: SinkHealth, now: datetime, show_tenant: bool) -> str:
    state = row.state if row.state in STATES else "idle"
    oldest = (
        age((now - row.oldest_pending_at).total_seconds())
        if row.oldest_pending_at is not None
        else '<span class="muted">—</span>'
    )
    tenant = f'<br><span class="tenant">{_e(row.tenant_id)}</span>' if show_tenant else ""
    return (
        f'<tr id="sink-{_e(row.event_sink_id)}" data-state="{_e(state)}">'
        f"<td><bdi>{_e(row.name)}</bdi>{tenant}</td>"
        f"<td>{_e(row.type)}</td>"
        f'<td class="state state-{_e(state)}">{_e(state)}</td>'
        f"<td>{_when(row.since, now)}</td>"
        f"{_error_cell(row, now)}"
        f'<td class="num">{row.pending}</td>'
        f'<td class="num">{oldest}</td>'
        f'<td class="num">{row.dead}</td></tr>\n'
    )


def _sinks_table(rows: Sequence[SinkHealth] | None, now: datetime) -> str:
    if rows is None:
        inner = (
            '<p class="alert">Sink health is not available while the database is unreachable.</p>'
        )
    elif not rows:
        inner = '<p class="muted">No event sinks.</p>'
    else:
        counts = {s: sum(1 for r in rows if r.state == s) for s in STATES}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        pending, dead = sum(r.pending for r in rows), sum(r.dead for r in rows)
        delivered = sum(r.delivered_last_hour for r in rows)
        failed = sum(r.failed_attempts_last_hour for r in rows)
        totals = (
            f"{pending} pending, {dead} dead; in the last hour {delivered} delivered and "
            f"{failed} failed attempts"
        )
        show_tenant = len({r.tenant_id for r in rows}) > 1
        head = "".join(
            f"<th>{h}</th>"
            for h in (
                "Sink",
                "Type",
                "State",
                "Since",
                "Last error",
                "Pending",
                "Oldest pending",
                "Dead",
            )
        )
        body = "".join(_sink_row(r, now, show_tenant) for r in rows)
        inner = (
            f'<p id="sinks-summary">{len(rows)} sink{"" if len(rows) == 1 else "s"}: '
            f"{summary}. {totals}.</p>\n"
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"
        )
    return f'<section id="sinks">\n<h2>Sinks</h2>\n{inner}</section>\n'


def status_page(relay: RelayState, rows: Sequence[SinkHealth] | None, tenants: str) -> str:
    """The page: the relay's state and the sinks' (``rows`` None: the database is down).
    ``tenants`` says whose sinks these are."""
    header = (
        "<header>\n<h1>air-relay status</h1>\n"
        f'<form method="post" action="{SIGN_OUT_PATH}">'
        '<button type="submit" id="sign-out">Sign out</button></form>\n</header>\n'
    )
    generated = relay.now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = (
        f"<main>\n{_relay_panel(relay)}{_sinks_table(rows, relay.now)}</main>\n"
        f"<footer>Tenants: {_e(tenants)}. Generated {generated}; reload the page to refresh."
        "</footer>\n"
    )
    return _page("air-relay status", body, status_header=header)


def message_page(title: str, message: str) -> str:
    """A plain page for a refused request (for example a cross-site POST)."""
    body = f'<main class="signin">\n<h1>{_e(title)}</h1>\n<p class="alert">{_e(message)}</p>\n'
    body += '<p><a href="/status">Back to the status page</a></p>\n</main>\n'
    return _page(title, body)
