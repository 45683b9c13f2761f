"""``python -m backend`` refuses a start the environment spoils with one line, ``error: ...``, and exit 2:
no traceback, no uvicorn "Application startup failed" (issue 22). Each case runs the real command.

Offline is simulated with an empty model cache and an HTTPS proxy on a closed port: the checkpoint
download fails as it does without a network (urllib honours ``https_proxy``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from pydantic import ValidationError

from backend.settings import Settings
from backend.startup import describe_settings_error
from testkit.waiting import wait_for
from tests.backend.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # discard: nothing listens there


def environment(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean environment: only what the backend needs, nothing of the caller's samloop settings."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "SAMLOOP_DATA_DIR": str(tmp_path / "data"), "SAMLOOP_MODEL_CACHE": str(tmp_path / "models"),
           "SAM_IMAGE_SIZE": "256", "PRECISION": "fp32", "COMPILE_DECODER": "false", "PREENCODE_MAX_TASKS": "0",
           "SAMLOOP_EMBEDDED_WORKER": "false", "OMP_NUM_THREADS": "1", "LOG_LEVEL": "WARNING"}
    return {**env, **overrides}


def refused(tmp_path: Path, **overrides: str) -> str:
    """Run ``python -m backend`` that must refuse to start; its one error line."""
    done = subprocess.run([sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(free_port())],
                          cwd=REPO, env=environment(tmp_path, **overrides), capture_output=True, text=True,
                          timeout=180)
    stderr = done.stderr
    assert done.returncode == 2, f"exit {done.returncode}; stderr:\n{stderr}"
    assert "Traceback" not in stderr and "Application startup failed" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    return errors[0]


def test_an_unknown_sam_model_is_one_line(tmp_path):
    line = refused(tmp_path, SAM_MODEL="sam2.1_hiera_x", SAM_CHECKPOINT="random")
    assert line.startswith("error: SAM_MODEL: unknown SAM model 'sam2.1_hiera_x'; valid models:"), line
    assert "vit_t" in line


def test_offline_without_a_checkpoint_is_one_line(tmp_path):
    line = refused(tmp_path, https_proxy=CLOSED_PORT_PROXY, HTTPS_PROXY=CLOSED_PORT_PROXY, no_proxy="",
                   NO_PROXY="")
    assert "cannot download the vit_t checkpoint" in line, line
    assert f"put it at {tmp_path / 'models' / 'mobile_sam.pt'}" in line and "SAM_CHECKPOINT" in line, line
    assert not (tmp_path / "data" / "redis.pid").exists(), "refused before the embedded Redis started"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_where_there_is_none_is_one_line(tmp_path):
    line = refused(tmp_path, DEVICE="cuda", SAM_CHECKPOINT="random")
    assert line == "error: DEVICE=cuda but torch sees no CUDA device (torch.cuda.is_available() is False)"


def test_a_checkpoint_that_does_not_load_is_one_line(tmp_path):
    garbage = tmp_path / "weights.pt"
    garbage.write_bytes(b"not a checkpoint")
    line = refused(tmp_path, SAM_CHECKPOINT=str(garbage))
    assert line.startswith(f"error: cannot read checkpoint {garbage}"), line


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"SAM_IMAGE_SIZE": "1000"}, "error: SAM_IMAGE_SIZE must be a multiple of 16 and at least 64, got 1000"),
    ({"SAM_MODEL": "sam2.1_hiera_t", "SAM_IMAGE_SIZE": "1040"},
     "error: SAM_IMAGE_SIZE: image size for sam2.1_hiera_t must be a multiple of 32 and at least 64, got 1040"),
    ({"SAMLOOP_WORKER_NICE": "25"},
     "error: SAMLOOP_WORKER_NICE: Input should be less than or equal to 19 (got '25')"),
    ({"REDIS_URL": "localhost:6379"}, "error: REDIS_URL must start with one of redis://"),
    ({"SAMLOOP_REDIS_PREFIX": "samloop:"}, "error: SAMLOOP_REDIS_PREFIX must be a non-empty key prefix"),
])
def test_a_bad_setting_is_one_line(tmp_path, overrides, expected):
    assert refused(tmp_path, SAM_CHECKPOINT="random", **overrides).startswith(expected)


def test_several_bad_settings_share_the_line():
    with pytest.raises(ValidationError) as caught:
        Settings(SAM_IMAGE_SIZE=100, LOG_LEVEL="chatty", MAX_PROMPT_POINTS=0)
    message = describe_settings_error(caught.value)
    assert "\n" not in message
    assert "SAM_IMAGE_SIZE must be a multiple of 16" in message and "LOG_LEVEL must be DEBUG" in message
    assert "MAX_PROMPT_POINTS: Input should be greater than or equal to 1 (got 0)" in message
    with pytest.raises(ValidationError) as caught:
        Settings(BASIC_AUTH_USER="admin", BASIC_AUTH_PASS="")
    assert describe_settings_error(caught.value) == "set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither"


def test_a_started_backend_stops_its_redis_on_sigterm(tmp_path):
    """Services are built before uvicorn starts: the app's shutdown must still close them."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=REPO, env=environment(tmp_path, SAM_CHECKPOINT="random"),
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), timeout=150, interval=0.25)
        children = psutil.Process(process.pid).children(recursive=True)
        assert any("redis-server" in child.name() for child in children), children
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in stderr, stderr
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"left running after SIGTERM: {alive}"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
