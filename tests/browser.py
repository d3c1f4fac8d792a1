"""A headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium, for
the status page's browser test: kept to 127.0.0.1 (every other name resolves to nothing, no
background traffic), its WebDriver calls run on a thread so the relay's event loop keeps
serving while the browser waits on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
DRIVER_CANDIDATES = ("chromedriver", "/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

# Nothing but 127.0.0.1: other names do not resolve, and the browser's own services are off.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root in CI, and in containers without user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
    "--metrics-recording-only",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,860",
)


def _which(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = shutil.which(name) or (name if os.access(name, os.X_OK) else None)
        if found:
            return found
    return None


def missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _which(CHROMIUM_CANDIDATES) is None:
        return "chromium is not installed (apt-get install -y chromium; .ci/run does)"
    if _which(DRIVER_CANDIDATES) is None:
        return "chromedriver is not installed (apt-get install -y chromium-driver; .ci/run does)"
    return None


class Browser:
    """The few things the test does with a page, each awaited off the event loop."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, url: str) -> None:
        await self._run(self.driver.get, url)

    async def reload(self) -> None:
        await self._run(self.driver.refresh)

    async def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        def read() -> str:
            return str(self.driver.find_element(By.CSS_SELECTOR, css).text)

        return str(await self._run(read))

    async def attribute(self, css: str, name: str) -> str | None:
        from selenium.webdriver.common.by import By

        def read() -> str | None:
            value = self.driver.find_element(By.CSS_SELECTOR, css).get_attribute(name)
            return None if value is None else str(value)

        result = await self._run(read)
        return None if result is None else str(result)

    async def style(self, css: str, prop: str) -> str:
        """The computed value of a CSS property of the first element matching ``css``."""
        from selenium.webdriver.common.by import By

        def read() -> str:
            return str(self.driver.find_element(By.CSS_SELECTOR, css).value_of_css_property(prop))

        return str(await self._run(read))

    async def exists(self, css: str) -> bool:
        from selenium.webdriver.common.by import By

        def find() -> bool:
            return bool(self.driver.find_elements(By.CSS_SELECTOR, css))

        return bool(await self._run(find))

    async def type(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By

        def fill() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(value)

        await self._run(fill)

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        def press() -> None:
            self.driver.find_element(By.CSS_SELECTOR, css).click()

        await self._run(press)

    async def cookies(self) -> list[dict[str, Any]]:
        return list(await self._run(self.driver.get_cookies))

    async def title(self) -> str:
        return str(await self._run(lambda: self.driver.title))

    async def console_errors(self) -> list[dict[str, Any]]:
        logs = await self._run(self.driver.get_log, "browser")
        return [entry for entry in logs if entry.get("level") == "SEVERE"]

    async def screenshot(self, path: Path) -> None:
        def shoot() -> None:
            # The page's full height, so every row is in the picture.
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            # The window's frame takes some of its height even headless: leave room for it.
            self.driver.set_window_size(1280, max(600, int(height) + 160))
            self.driver.save_screenshot(str(path))

        await self._run(shoot)


@contextlib.contextmanager
def chromium(profile_dir: Path) -> Iterator[Browser]:
    """A headless Chromium with its own profile under ``profile_dir``, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    binary = _which(CHROMIUM_CANDIDATES)
    assert binary is not None
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Given the driver's path, Selenium does not run its manager (which would download one).
    service = Service(executable_path=_which(DRIVER_CANDIDATES), log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
