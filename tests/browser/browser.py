"""Debian's headless Chromium driven through Debian's chromedriver, and the explicit
waits the portal tests use (conditions polled by WebDriverWait, never sleeps).

Selenium is given both paths, so Selenium Manager (which would try to download a
driver) is never run. Missing browser: skipped on a developer's machine, a failure
under CI=true.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = os.environ.get("FABRIC_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FABRIC_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_SECONDS = 20.0

T = TypeVar("T")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_chromium() -> tuple[str, str]:
    """The browser and driver paths; skip (or, under CI=true, fail) when either is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        reason = f"headless Chromium not installed ({', '.join(missing)} missing)"
        if _in_ci():
            pytest.fail(f"{reason}; CI=true requires it (.ci/run installs it)", pytrace=False)
        pytest.skip(f"{reason}: apt-get install chromium chromium-driver")
    return CHROMIUM, CHROMEDRIVER


def start_chromium(home: Path) -> webdriver.Chrome:
    browser, driver = require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--window-size=1440,1000",
        f"--user-data-dir={home}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


class Page:
    """The portal in one browser tab, with waits on what the page shows."""

    def __init__(self, driver: webdriver.Chrome, base_url: str, shots: Path | None) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots

    # -- waiting ------------------------------------------------------------------------

    def until(
        self, condition: Callable[[], T | None], what: str, timeout: float = WAIT_SECONDS
    ) -> T:
        def check(_: Any) -> T | None:
            try:
                return condition()
            except StaleElementReferenceException:
                return None  # the page re-rendered under us: look again

        found = WebDriverWait(self.driver, timeout).until(check, f"waiting for {what}")
        assert found is not None  # until() returns only a truthy result
        return found

    def find(self, css: str, within: WebElement | None = None) -> WebElement:
        root: Any = within or self.driver
        return self.until(lambda: _first_visible(root.find_elements(By.CSS_SELECTOR, css)), css)

    def all(self, css: str, within: WebElement | None = None) -> list[WebElement]:
        root: Any = within or self.driver
        return list(root.find_elements(By.CSS_SELECTOR, css))

    def text_of(
        self,
        css: str,
        contains: str,
        within: WebElement | None = None,
        timeout: float = WAIT_SECONDS,
    ) -> WebElement:
        """The first visible element matching `css` whose text contains `contains`."""
        root: Any = within or self.driver

        def found() -> WebElement | None:
            for element in root.find_elements(By.CSS_SELECTOR, css):
                if element.is_displayed() and contains in element.text:
                    return element
            return None

        return self.until(found, f"{css} showing {contains!r}", timeout)

    def gone(self, css: str) -> None:
        self.until(
            lambda: not any(e.is_displayed() for e in self.all(css)) or None, f"{css} hidden"
        )

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    # -- acting -------------------------------------------------------------------------

    def open(self, fragment: str = "") -> None:
        self.driver.get(self.base_url + "/" + fragment)

    def click(self, css: str, within: WebElement | None = None) -> None:
        """Clicks the first visible, enabled match (looked up again if the page re-renders
        it meanwhile)."""
        root: Any = within or self.driver

        def clicked() -> bool | None:
            element = _first_visible(root.find_elements(By.CSS_SELECTOR, css))
            if element is None or not element.is_enabled():
                return None
            element.click()
            return True

        self.until(clicked, f"{css} to click")

    def type(self, css: str, text: str, within: WebElement | None = None) -> WebElement:
        element = self.find(css, within)
        element.clear()
        element.send_keys(text)
        return element

    def sign_in(self, token: str) -> None:
        self.sign_out()
        self.type("#signin-token", token)
        self.click("#signin-submit")
        self.find("#app")

    def sign_out(self) -> None:
        """A fresh start: no session kept, the sign-in form showing."""
        self.open()
        self.script("sessionStorage.clear();")
        self.open()
        self.find("#signin-token")

    def tab(self, name: str) -> None:
        self.click(f"#tabs button[data-tab='{name}']")
        self.find(f"#tab-{name}")

    def screenshot(self, name: str) -> None:
        if self.shots is not None:
            self.shots.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(self.shots / f"{name}.png"))

    def no_alert(self) -> bool:
        try:
            self.driver.switch_to.alert  # noqa: B018 (the property raises when none is open)
        except NoAlertPresentException:
            return True
        return False

    def csp_violations(self) -> list[str]:
        """What the page logged about the Content-Security-Policy refusing something (an
        inline script or style the page must never need)."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if "Content Security Policy" in entry.get("message", "")
        ]


def _first_visible(elements: list[WebElement]) -> WebElement | None:
    for element in elements:
        if element.is_displayed():
            return element
    return None
