"""``python -m backend admin ...`` as a user runs it (a subprocess) against a live backend and a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from backend.admin.cli import parse_assignments
from backend.admin.overview import control_of
from backend.app import create_app
from backend.webhook import RecordingScheduler
from tests.backend.admin.conftest import REPO, TOKEN, serve, wait_for
from tests.backend.conftest import make_settings, publish_adapter
from training.registry import LocalRegistry


def admin(live, *args: str, token: str | None = TOKEN, url: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI with the URL and token in the environment (as an operator's shell would have them)."""
    env = {k: v for k, v in os.environ.items() if k not in {"ADMIN_TOKEN", "SAMLOOP_URL"}}
    env["SAMLOOP_URL"] = url or live.url
    if token is not None:
        env["ADMIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "backend", "admin", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def status_json(live, project: str) -> dict:
    done = admin(live, "--json", "status", project)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_set_activate_delete_round_trip(live, project):
    for seed in range(3):
        publish_adapter(live.registry, live.services.models.weights, project, ["cat"], seed=seed)
    switched = admin(live, "set", project, "predictions=off", "split_instances=on")
    assert switched.returncode == 0, switched.stderr
    assert "predictions=False" in switched.stdout and "split_instances=True" in switched.stdout
    assert live.services.store.get(project).predictions is False
    back = admin(live, "activate", project, "1")
    assert back.returncode == 0 and "serving samloop-vit_t-256-RANDOM-WEIGHTS" in back.stdout
    assert status_json(live, project)["model_version"].endswith(f"-p{project}-v1")
    assert admin(live, "activate", project, "3").returncode == 0
    assert live.registry.active_version(project) == 3
    deleted = admin(live, "delete", project, "2")
    assert deleted.returncode == 0, deleted.stderr
    assert [v["version"] for v in status_json(live, project)["versions"]] == [1, 3]
    refused = admin(live, "delete", project, "3")
    assert refused.returncode == 2 and "409" in refused.stderr and "active" in refused.stderr


def test_status_lists_every_project(live, project):
    publish_adapter(live.registry, live.services.models.weights, project, ["cat"])
    done = admin(live, "status")
    assert done.returncode == 0 and f"project {project}: serving" in done.stdout and "v1" in done.stdout


def test_train_full_asks_for_a_retrain_from_scratch(live, project):
    publish_adapter(live.registry, live.services.models.weights, project, ["cat"])
    asked = admin(live, "--json", "train", "--full", project)
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["training"]["full"] is True
    assert live.services.redis.client.get(control_of(live.services).keys(project).full) == b"1"


def test_train_and_cancel_a_running_job(live, worker, project):
    publish_adapter(live.registry, live.services.models.weights, project, ["cat"])
    live.job_overrides[project] = {"steps": 400, "step_seconds": 0.1}
    queued = admin(live, "--json", "train", project)
    assert queued.returncode == 0, queued.stderr
    job_id = json.loads(queued.stdout)["training"]["job_id"]
    wait_for(lambda: ((status_json(live, project)["job"] or {}).get("step") or 0) >= 2)
    running = admin(live, "status", project)
    assert f"job {job_id}: training, step" in running.stdout
    cancelled = admin(live, "--json", "cancel", project)
    assert json.loads(cancelled.stdout)["training"]["stopped"] == [job_id]
    after = wait_for(lambda: (s := status_json(live, project))["job"] is None and s)
    assert after["active_version"] == 1 and len(after["versions"]) == 1


def test_clear_errors(live, project):
    wrong = admin(live, "status", token="not-the-token")
    assert wrong.returncode == 4 and "refused the admin token" in wrong.stderr
    missing = admin(live, "status", token="")
    assert missing.returncode == 4 and "no admin token" in missing.stderr
    down = admin(live, "status", url="http://127.0.0.1:9")
    assert down.returncode == 3 and "cannot reach the samloop backend at http://127.0.0.1:9" in down.stderr
    bad = admin(live, "set", project, "colour=red")
    assert bad.returncode == 2 and "'colour'" in bad.stderr
    malformed = admin(live, "set", project, "predictions")
    assert malformed.returncode == 2 and "key=value" in malformed.stderr


def test_console_off_is_named(tmp_path, redis_prefix):
    app = create_app(make_settings(tmp_path, redis_prefix), registry=LocalRegistry(tmp_path / "adapters"),
                     scheduler=RecordingScheduler())  # no ADMIN_TOKEN
    url, stop = serve(app)
    try:
        done = admin(None, "status", url=url)
    finally:
        stop()
    assert done.returncode == 5 and "is ADMIN_TOKEN set on the backend?" in done.stderr


@pytest.mark.parametrize(("pairs", "expected"), [
    (["predictions=off", "auto_training=true"], {"predictions": False, "auto_training": True}),
    (["pinned_version=3"], {"pinned_version": 3}),
    (["pinned_version=none"], {"pinned_version": None}),
    (["adapter=encoder"], {"adapter": "encoder"}),
])
def test_assignments(pairs, expected):
    assert parse_assignments(pairs) == expected


def test_move_a_bare_ids_adapters(live, project):
    bare = project.partition(".")[0]
    publish_adapter(live.registry, live.services.models.weights, bare, ["cat"])
    done = admin(live, "move", bare, project)
    assert done.returncode == 0, done.stderr
    assert f"moved project {bare}'s 1 adapter version(s) to {project}" in done.stdout
    assert [v.version for v in live.registry.versions(project)] == [1] and live.registry.versions(bare) == []
    refused = admin(live, "move", bare, project)
    assert refused.returncode != 0 and f"nothing was stored under project {bare}" in refused.stderr
