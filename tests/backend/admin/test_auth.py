"""Who may use the admin console: the Bearer token only, never in a URL; no token configured, no console."""

from __future__ import annotations

import logging

import pytest

from backend.admin.auth import token_ok
from tests.backend.admin.conftest import TOKEN

PATHS = ["/admin/", "/admin", "/admin/api/projects", "/admin/static/admin.js"]


@pytest.fixture(scope="module")
def enabled(tmp_path_factory, module_redis_prefix):
    from tests.backend.conftest import start_backend

    backend, stop = start_backend(tmp_path_factory.mktemp("auth"), module_redis_prefix, ADMIN_TOKEN=TOKEN,
                                  BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="ls-pass")
    yield backend
    stop()


def test_console_off_without_a_token_everything_under_admin_is_404(make_backend, caplog):
    with caplog.at_level(logging.INFO, logger="backend.admin"):
        backend = make_backend()
    assert "admin console off: ADMIN_TOKEN is not set" in caplog.text
    client = backend.client
    for path in PATHS:
        assert client.get(path, headers={"Authorization": "Bearer anything"}).status_code == 404, path
    assert client.patch("/admin/api/projects/3", json={"predictions": False}).status_code == 404
    assert client.post("/admin/api/projects/3/train").status_code == 404


def test_no_token_and_wrong_token_are_401(enabled):
    client = enabled.client
    missing = client.get("/admin/api/projects")
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["detail"]
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for header in ("Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", f"Token {TOKEN}", "Bearer "):
        answer = client.get("/admin/api/projects", headers={"Authorization": header})
        assert answer.status_code == 401, header
    assert client.post("/admin/api/projects/3/train", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_right_token_works_and_basic_auth_is_not_needed_under_admin(enabled):
    answer = enabled.client.get("/admin/api/projects", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and "projects" in answer.json()
    # The page holds no data: it loads without a token and asks for one.
    page = enabled.client.get("/admin/")
    assert page.status_code == 200 and "Admin token" in page.text
    assert enabled.client.get("/admin/static/admin.js").status_code == 200


@pytest.mark.parametrize("name", ["token", "access_token", "admin_token", "Token"])
def test_a_token_in_the_query_string_is_refused_even_when_right(enabled, name):
    alone = enabled.client.get("/admin/api/projects", params={name: TOKEN})
    assert alone.status_code == 401 and "query string" in alone.json()["detail"]
    with_header = enabled.client.get("/admin/api/projects", params={name: TOKEN},
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert with_header.status_code == 401


def test_train_and_cancel_need_a_training_queue(enabled, project):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answer = enabled.client.post(f"/admin/api/projects/{project}/train", headers=headers)
    assert answer.status_code == 503 and "no training queue" in answer.json()["detail"]


def test_metrics_sit_behind_basic_auth_when_it_is_configured(enabled):
    assert enabled.client.get("/metrics").status_code == 401
    assert enabled.client.get("/metrics", auth=("ls", "ls-pass")).status_code == 200


def test_token_comparison():
    assert token_ok(TOKEN, TOKEN)
    assert not token_ok(TOKEN[:-1], TOKEN) and not token_ok(TOKEN + "x", TOKEN)
    assert not token_ok("", "")  # an empty configured token never matches
