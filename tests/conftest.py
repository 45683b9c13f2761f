"""Fixtures shared by every test package.

- ``browser`` (session): headless Debian Chromium through Playwright (``tests.e2e.browser``). One for the
  whole run: Playwright's sync API cannot start a second instance while the first one's event loop runs,
  so the admin console's page test and the end-to-end tests must share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    from tests.e2e.browser import CHROMIUM_ARGS, ensure_chromium, ensure_playwright

    chromium = ensure_chromium()
    ensure_playwright()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()
