"""The status page in a real browser (headless Chromium driven by Selenium, tests/browser.py)
against a running relay and a real sink on 127.0.0.1: a wrong key refused on the form, sign
in, the relay's state, sign out. Skips, saying why, where Chromium or its driver is missing.

``AIR_RELAY_STATUS_SCREENSHOT=docs/status-page.png`` also saves the page as it is then (the
picture in docs/operations.md); without it, nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import browser
from tests.support import ADMIN_KEY, RelayFactory

pytestmark = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))


async def test_sign_in_see_the_relay_and_sign_out(make_relay: RelayFactory, tmp_path: Path) -> None:
    relay = await make_relay()
    page = str(relay.make_url("/status"))
    with browser.chromium(tmp_path / "profile") as chrome:
        await chrome.open(page)
        assert await chrome.exists("#api_key")

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

        shot = os.environ.get("AIR_RELAY_STATUS_SCREENSHOT")
        if shot:
            await chrome.screenshot(Path(shot))

        await chrome.click("#sign-out")
        assert await chrome.exists("#api_key")
        assert not await chrome.cookies()
        await chrome.reload()
        assert await chrome.exists("#api_key")
