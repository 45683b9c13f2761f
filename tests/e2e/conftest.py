"""Fixtures for end-to-end tests against a real Label Studio 1.23.2.

- ``label_studio`` (session): a running server (``LabelStudioServer``), installed into ``.venv-ls`` on first use.
- ``ls_client``: an ``httpx.Client`` on that server with the legacy token, for ``tests.e2e.ls_api``.
- ``stub_backend``: a recording stand-in ML backend on a free loopback port.
- ``browser`` (session, from ``tests/conftest.py``): headless Chromium; see ``browser.screenshot_ls_page``.
- ``samloop_factory`` (module): starts real samloop backends (``python -m backend``) against that server;
  all of them are stopped when the module ends. Durations measured by the scenarios are printed at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.label_studio import LabelStudioError, LabelStudioServer, start_label_studio, stop_label_studio
from tests.e2e.samloop_backend import TIMINGS, BackendError, SamloopBackend, backend_env
from tests.e2e.stub_backend import StubMLBackend

E2E_DIR = Path(__file__).parent


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("samloop e2e timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {name}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/e2e needs the server, so mark it e2e even if a test forgets to.
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    data_dir = tmp_path_factory.mktemp("label-studio")
    try:
        server = start_label_studio(data_dir)
    except LabelStudioError as exc:
        pytest.fail(f"Label Studio did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        stop_label_studio(server)


@pytest.fixture
def ls_client(label_studio: LabelStudioServer) -> Iterator[httpx.Client]:
    with label_studio.client() as client:
        yield client


@pytest.fixture
def stub_backend() -> Iterator[StubMLBackend]:
    stub = StubMLBackend().start()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture(scope="module")
def samloop_factory(
    label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., SamloopBackend]]:
    """``make(api_key=None, start=True, **env)``: a samloop backend against ``label_studio`` in a fresh data dir.

    ``api_key`` defaults to the legacy token; ``env`` overrides ``backend_env``'s values (e.g. REDIS_URL,
    WEBHOOK_SECRET). Every backend made is stopped when the module ends.
    """
    made: list[SamloopBackend] = []

    def make(api_key: str | None = None, start: bool = True, **env: str) -> SamloopBackend:
        root = tmp_path_factory.mktemp("samloop")
        data_dir = root / "data"
        backend = SamloopBackend(
            backend_env(label_studio.url, api_key or label_studio.legacy_token, data_dir, **env),
            data_dir,
            root / "backend.log",
        )
        made.append(backend)
        if start:
            try:
                backend.start()
            except BackendError as exc:
                pytest.fail(f"samloop backend did not start: {exc}", pytrace=False)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            backend.stop()
