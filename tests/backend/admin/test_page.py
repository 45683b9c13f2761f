"""The console's page in a real headless Chromium (Debian's, through Playwright) against a live backend.

Enter the token, flip predictions off and see the API agree, activate an older version and see the served
model_version change, watch a running job's progress move, cancel it; the screenshot goes to docs/.
"""

from __future__ import annotations

import pytest

from backend.admin.overview import control_of
from tests.backend.admin.conftest import REPO, TOKEN, wait_for
from tests.backend.conftest import publish_adapter

pytestmark = pytest.mark.e2e  # a browser: run with the end-to-end tests, not in the quick loop

SCREENSHOT = REPO / "docs" / "admin-console.png"


def api_project(live, project: str) -> dict:
    with live.client() as client:
        return client.get(f"/admin/api/projects/{project}").json()


def trained(live, project: str, runs: int) -> None:
    """Versions with held-out scores, as training jobs publish them (so the plot has points)."""
    live.job_overrides[project] = {"steps": 12, "step_seconds": 0.02}
    for run in range(runs):
        with live.client() as client:
            client.post(f"/admin/api/projects/{project}/train")
        wait_for(lambda run=run: (s := api_project(live, project))["job"] is None and len(s["versions"]) == run + 2)


def sign_in(page, live, token: str) -> None:
    page.goto(f"{live.url}/admin/")
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def test_the_page_switches_activates_and_follows_a_job(live, worker, project, browser):
    publish_adapter(live.registry, live.services.models.weights, project, ["cat", "dog"])
    trained(live, project, 2)  # v2, v3 (active)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, live, "wrong-token")
        page.wait_for_selector("#login-error:has-text('wrong token')")
        sign_in(page, live, TOKEN)
        card = page.locator(f"[id='project-{project}']")
        card.wait_for()
        assert card.locator(".model-version").inner_text().endswith(f"-p{project}-v3")
        # The heading names Label Studio's id and when that instance created the project.
        heading = card.locator("h2").inner_text()
        assert heading.startswith(f"Project {project.partition('.')[0]} ") and "created 2024-04-05 19:34 UTC" in heading

        card.locator("input[data-switch=predictions]").click()
        wait_for(lambda: api_project(live, project)["switches"]["predictions"] is False)
        card.locator("input[data-switch=predictions]:not(:checked)").wait_for()

        card.locator("button[data-activate='2']").click()
        card.locator(".model-version", has_text=f"-p{project}-v2").wait_for()
        assert api_project(live, project)["model_version"].endswith(f"-p{project}-v2")

        live.job_overrides[project] = {"steps": 300, "step_seconds": 0.1}
        card.locator("button[data-train]").click()
        step = card.locator(".job-step")
        first = wait_for(lambda: (text := step.inner_text() if step.count() else "").isdigit() and int(text) >= 3
                         and int(text))
        wait_for(lambda: int(step.inner_text()) > first)  # the page follows the job without a reload
        assert card.locator(".job-stage").inner_text() == "training"
        page.wait_for_timeout(1600)  # one more poll: the loss curve has a few points
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

        card.locator("button[data-cancel]").click()
        card.locator(".run-status", has_text="cancelled").wait_for()
        assert card.locator(".job-stage").inner_text() == "idle"
        assert api_project(live, project)["active_version"] == 2

        live.job_overrides[project] = {"steps": 1, "step_seconds": 0.0}
        page.once("dialog", lambda dialog: dialog.accept())  # "Retrain ... from scratch?"
        card.locator("button[data-retrain]").click()
        full_key = control_of(live.services).keys(project).full
        wait_for(lambda: live.services.redis.client.get(full_key) == b"1")
    finally:
        context.close()
