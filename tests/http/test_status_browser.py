"""The status page in a real browser (headless Chromium driven by Selenium, tests/browser.py)
against a running relay and real sinks on 127.0.0.1: a wrong key refused on the form, sign
in, a sink that fails shown ``failing``, then ``healthy`` once it recovers (on reload), the
other states beside it, and sign out. Skips, saying why, where Chromium or its driver is
missing.

``AIR_RELAY_STATUS_SCREENSHOT=docs/status-page.png`` also saves the page while the sink is
failing (the picture in docs/operations.md); without it, nothing is written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests import browser
from tests.support import (
    ADMIN_KEY,
    SLACK_INTEGRATION,
    RelayFactory,
    Reply,
    SinkServer,
    create_sink,
    make_sink_server,
    post_event,
)

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))

EVENT = {
    "eventName": "CaseCreatedEvent",
    "organizationId": 0,
    "data": {"id": "C-0042", "name": "Suspicious login", "ownerUser": "analyst"},
}
# Sinks that wait for an event this test never sends stay idle.
OTHER_EVENT = ["AirVersionAvailableEvent"]


async def reload_until(chrome: browser.Browser, css: str, state: str, timeout: float = 15) -> None:
    """Reload the page until the element ``css`` shows ``state`` (as an operator would)."""
    deadline = time.monotonic() + timeout
    while True:
        await chrome.reload()
        if await chrome.exists(css) and await chrome.text(css) == state:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{css} never showed {state}: {await chrome.text('main')}")


async def sinks(relay: Any, failing: SinkServer, working: SinkServer) -> dict[str, str]:
    """One sink in each state to be: the ids of those the test watches."""
    soc = await create_sink(
        relay, {"Webhook": {"url": failing.url()}}, name="SOC webhook <primary>"
    )
    archive = await create_sink(relay, {"Webhook": {"url": working.url()}}, name="Archive")
    await create_sink(
        relay,
        {"PagerDuty": {"integration_key": "e93facc04764012d7bfb002500d5d1a6"}},
        name="PagerDuty on-call",
        events=OTHER_EVENT,
    )
    await create_sink(
        relay,
        {"Slack": {"channel": "#soc-alerts", "slack_integration_id": SLACK_INTEGRATION}},
        name="Slack #soc-alerts",
        active=False,
    )
    return {"soc": soc["id"], "archive": archive["id"]}


async def test_sign_in_watch_a_sink_fail_and_recover_sign_out(
    make_relay: RelayFactory, aiohttp_server: Any, tmp_path: Path
) -> None:
    failing, working = (
        await make_sink_server(aiohttp_server),
        await make_sink_server(aiohttp_server),
    )
    failing.default = Reply(status=503, body="upstream maintenance")
    relay = await make_relay(
        # The first claim's attempts fail; the next is an hour away, so the delivery waits
        # (pending) until the sink's recovery releases the backlog.
        delivery={"retry": {"schedule_seconds": [3600]}},
        # Where Slack and PagerDuty would be sent (nothing is: those sinks are idle or off).
        slack={"api_base_url": working.url("/slack")},
        pagerduty={"events_url": working.url("/pagerduty")},
    )
    ids = await sinks(relay, failing, working)
    soc, archive = f"#sink-{ids['soc']} .state", f"#sink-{ids['archive']} .state"
    with browser.chromium(tmp_path / "profile") as chrome:
        await chrome.open(str(relay.make_url("/status")))
        await chrome.type("#api_key", "not-the-key")
        await chrome.click("#sign-in")
        assert "not valid" in await chrome.text("#sign-in-error")
        assert not await chrome.cookies()

        await chrome.type("#api_key", ADMIN_KEY)
        await chrome.click("#sign-in")
        assert "reachable" in await chrome.text("#relay-database")
        (cookie,) = await chrome.cookies()
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert ADMIN_KEY not in cookie["value"]
        # The stylesheet applies under the CSP, and nothing was refused by it.
        assert await chrome.style("header", "background-color") == "rgba(36, 41, 47, 1)"
        refused = [e for e in await chrome.console_errors() if "Security Policy" in e["message"]]
        assert not refused, refused
        assert await chrome.text(soc) == "idle"

        assert (await post_event(relay, EVENT)).status == 202
        await reload_until(chrome, soc, "failing")
        await reload_until(chrome, archive, "healthy")
        row = await chrome.text(f"#sink-{ids['soc']}")
        assert "SOC webhook <primary>" in row and "HTTP 503" in row
        assert "idle" in await chrome.text("#sinks") and "inactive" in await chrome.text("#sinks")
        # A colour as well as the word.
        assert await chrome.style(soc, "color") != await chrome.style(archive, "color")
        shot = os.environ.get("AIR_RELAY_STATUS_SCREENSHOT")
        if shot:
            await chrome.screenshot(Path(shot))

        failing.default = Reply(status=200)
        assert (await post_event(relay, EVENT)).status == 202
        await reload_until(chrome, soc, "healthy")

        await chrome.click("#sign-out")
        assert await chrome.exists("#api_key")
        assert not await chrome.cookies()
        await chrome.reload()
        assert await chrome.exists("#api_key") and not await chrome.exists("#sinks")
