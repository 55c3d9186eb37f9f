"""Fixtures of the portal's browser tests: one headless Chromium for the run, one gateway
with its HTTP door on a free port over a PostgreSQL schema of its own, and a fresh page
(signed out) per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from tests.browser.browser import Page, require_chromium, start_chromium
from tests.browser.gateway import portal_gateway
from tests.browser.portal import Portal
from tests.browser.source import portal_schema
from tests.support.servers import postgres_url


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    require_chromium()
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    url = postgres_url()
    with (
        portal_schema(url) as schema,
        portal_gateway(tmp_path_factory.mktemp("portal-home")) as (base_url, tokens, secret),
    ):
        yield Portal(base_url, tokens, secret, url, schema)


@pytest.fixture
def page(chromium: webdriver.Chrome, portal: Portal) -> Page:
    shots = os.environ.get("FABRIC_SCREENSHOTS")
    result = Page(chromium, portal.url, Path(shots) if shots else None)
    result.sign_out()
    chromium.get_log("browser")  # start each test with an empty console
    return result
