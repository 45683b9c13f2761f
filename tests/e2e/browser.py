"""Headless Chromium (Debian's build) driven by Playwright, for screenshots of Label Studio pages.

Playwright's own browser download cannot work here, so the Debian ``chromium`` package is used through
``executable_path``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

    from tests.e2e.label_studio import LabelStudioServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PLAYWRIGHT_REQUIREMENT = "playwright==1.65.2"


def ensure_chromium() -> Path:
    """Install Debian's ``chromium`` and ``chromium-driver`` with apt when ``/usr/bin/chromium`` is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"{CHROMIUM} is missing and apt-get is not available to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver", "fonts-liberation"],
    ):
        proc = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} still missing after apt-get install chromium")
    return CHROMIUM


def ensure_playwright() -> None:
    """pip-install the ``playwright`` package into this interpreter when it is missing (no browser download)."""
    if importlib.util.find_spec("playwright") is not None:
        return
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", PLAYWRIGHT_REQUIREMENT],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {PLAYWRIGHT_REQUIREMENT} failed:\n{proc.stderr[-3000:]}")
    importlib.invalidate_caches()


def login(page: Page, ls: LabelStudioServer) -> None:
    """Log into Label Studio through its login form; the page keeps the session cookie."""
    page.goto(f"{ls.url}/user/login/", wait_until="domcontentloaded")
    page.fill("input[name=email]", ls.username)
    page.fill("input[name=password]", ls.password)
    with page.expect_navigation(wait_until="domcontentloaded"):
        page.click("button[type=submit], input[type=submit]")
    if "/user/login" in page.url:
        raise RuntimeError(f"Label Studio login failed for {ls.username}; still on {page.url}")


def screenshot_ls_page(
    browser: Browser,
    ls: LabelStudioServer,
    page_path: str,
    out_path: Path,
    *,
    wait_for_selector: str | None = None,
    settle_ms: int = 3000,
    viewport: tuple[int, int] = (1400, 900),
    before_shot: Callable[[Page], None] | None = None,
) -> Path:
    """Log in, open ``page_path`` (e.g. ``/projects/3/data?task=7``) and save a PNG screenshot to ``out_path``.

    ``wait_for_selector`` waits for an element (e.g. ``.lsf-main-view`` or ``canvas``) before the shot;
    ``settle_ms`` then lets late rendering (images, masks) finish. ``before_shot(page)`` runs after that
    (e.g. to click a tab), followed by another ``settle_ms`` wait.
    """
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        page = context.new_page()
        login(page, ls)
        page.goto(f"{ls.url}{page_path}", wait_until="domcontentloaded")
        if wait_for_selector:
            page.wait_for_selector(wait_for_selector, timeout=60_000)
        page.wait_for_timeout(settle_ms)
        if before_shot is not None:
            before_shot(page)
            page.wait_for_timeout(settle_ms)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out_path), full_page=False)
    finally:
        context.close()
    return out_path
