"""Install and run a real Label Studio server for end-to-end tests.

Label Studio lives in its own venv (its Django/pydantic pins clash with the project's), created on first
use and reused afterwards. One server per test session, on a free port, in a temporary data directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from testkit.locks import file_lock

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

LS_VERSION = "1.23.2"
# Label Studio 1.23.2 asks for any sentry-sdk 2.x or later, and sentry-sdk 3 dropped an option it passes
# (`send_default_pii`), so the server would not start.
LS_PINS = ("sentry-sdk<3",)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO_ROOT / ".venv-ls"
INSTALL_TIMEOUT_S = 900.0
START_TIMEOUT_S = 240.0

DEFAULT_USERNAME = "e2e@samloop.test"
DEFAULT_PASSWORD = "samloop-e2e-pass"
# LS accepts any string as the legacy token when LABEL_STUDIO_USER_TOKEN is set at first start.
DEFAULT_LEGACY_TOKEN = "samloop0e2e0legacy0token0000000000000000"


class LabelStudioError(RuntimeError):
    """Label Studio could not be installed, started or asked for something."""


def venv_path() -> Path:
    """The Label Studio venv: ``$SAMLOOP_LS_VENV`` or ``<repo>/.venv-ls``."""
    return Path(os.environ.get("SAMLOOP_LS_VENV") or DEFAULT_VENV)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def ensure_label_studio(venv: Path | None = None) -> Path:
    """Install ``label-studio==LS_VERSION`` into ``venv`` unless already there.

    Returns the path of the ``label-studio`` executable. Takes about a minute the first time.
    """
    venv = venv or venv_path()
    exe = venv / "bin" / "label-studio"
    marker = venv / f".samloop-label-studio-{LS_VERSION}-{'-'.join(LS_PINS)}"
    if marker.exists() and exe.exists():
        return exe
    # Lock and log live inside the venv folder, which is gitignored.
    with file_lock(venv / ".samloop-install.lock"):
        if marker.exists() and exe.exists():
            return exe
        log = venv / ".samloop-install.log"
        with log.open("w") as out:
            steps = []
            # `python -m venv` fills a folder that already holds the lock file.
            if not (venv / "bin" / "python").exists():
                steps.append([sys.executable, "-m", "venv", str(venv)])
            steps.append([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"label-studio=={LS_VERSION}",
                          *LS_PINS])
            for cmd in steps:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S)
                if proc.returncode != 0:
                    raise LabelStudioError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{_tail(log)}")
        if not exe.exists():
            raise LabelStudioError(f"label-studio not found at {exe} after install:\n{_tail(log)}")
        marker.touch()
    return exe


@dataclass
class LabelStudioServer:
    """A running Label Studio and the credentials of its one user."""

    url: str
    username: str
    password: str
    legacy_token: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _pat: str | None = field(default=None, repr=False)

    @property
    def legacy_headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.legacy_token}"}

    def client(self, timeout: float = 60.0) -> httpx.Client:
        """An httpx client for the REST API, authenticated with the legacy token."""
        return httpx.Client(base_url=self.url, headers=self.legacy_headers, timeout=timeout)

    def personal_access_token(self) -> str:
        """The user's personal access token (a JWT refresh token), created on first call.

        LS allows one live PAT per user (a second ``POST /api/token/`` answers 409), so it is cached here.
        """
        if self._pat is None:
            resp = httpx.post(f"{self.url}/api/token/", headers=self.legacy_headers, json={}, timeout=30)
            if resp.status_code != 201:
                raise LabelStudioError(f"POST /api/token/ -> {resp.status_code}: {resp.text[:500]}")
            self._pat = str(resp.json()["token"])
        return self._pat

    def access_token(self) -> str:
        """A short-lived Bearer access token exchanged for the PAT at ``/api/token/refresh/``."""
        resp = httpx.post(f"{self.url}/api/token/refresh/", json={"refresh": self.personal_access_token()})
        if resp.status_code != 200:
            raise LabelStudioError(f"POST /api/token/refresh/ -> {resp.status_code}: {resp.text[:500]}")
        return str(resp.json()["access"])

    def sdk(self, use_pat: bool = False) -> LabelStudio:
        """A ``label_studio_sdk.LabelStudio`` client with the legacy token, or the PAT (SDK refreshes it)."""
        from label_studio_sdk import LabelStudio

        key = self.personal_access_token() if use_pat else self.legacy_token
        return LabelStudio(base_url=self.url, api_key=key)

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)


def _server_env(data_dir: Path, url: str, username: str, password: str, token: str) -> dict[str, str]:
    env = dict(os.environ)
    # The project venv must not leak into Label Studio's interpreter.
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    env.update(
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_HOST=url,
        # Without these two LS refuses loopback backends and silently drops their webhooks.
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        COLLECT_ANALYTICS="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait_ready(server: LabelStudioServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise LabelStudioError(
                f"label-studio exited with {server.process.returncode} while starting:\n{server.log_tail()}"
            )
        try:
            resp = httpx.get(f"{server.url}/api/current-user/whoami", headers=server.legacy_headers, timeout=5)
            if resp.status_code == 200:
                return
            last = f"{resp.status_code} {resp.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1.0)
    raise LabelStudioError(f"label-studio not ready after {timeout:.0f} s ({last}):\n{server.log_tail()}")


def stop_label_studio(server: LabelStudioServer, grace_s: float = 20.0) -> None:
    """Terminate the server's whole process group (label-studio forks a web server)."""
    proc = server.process
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_label_studio(
    data_dir: Path,
    *,
    exe: Path | None = None,
    port: int | None = None,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    legacy_token: str = DEFAULT_LEGACY_TOKEN,
    timeout: float = START_TIMEOUT_S,
) -> LabelStudioServer:
    """Start ``label-studio`` on ``port`` (a free one by default) and wait until its API answers.

    ``data_dir`` holds the SQLite database, uploads and the server log (``label-studio.log``).
    Raises ``LabelStudioError`` with the log tail when it does not come up; stop it with
    ``stop_label_studio``.
    """
    exe = exe or ensure_label_studio()
    port = port or free_port()
    url = f"http://localhost:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "label-studio.log"
    cmd = [str(exe), "start", "--no-browser", "--port", str(port), "--internal-host", "127.0.0.1"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=_server_env(data_dir, url, username, password, legacy_token),
            cwd=data_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LabelStudioServer(url, username, password, legacy_token, data_dir, log_path, proc)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        stop_label_studio(server)
        raise
    return server


@contextlib.contextmanager
def running_label_studio(data_dir: Path, **kwargs: object) -> Iterator[LabelStudioServer]:
    """``start_label_studio`` as a context manager that always stops the server."""
    server = start_label_studio(data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_label_studio(server)
