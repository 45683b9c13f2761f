"""Issue 16, faults: the disk fills up while an adapter or an embedding is saved. The disk is real: a
small tmpfs mounted over the directory (needs root, as CI and the dev machines have; skipped
otherwise), filled to the last byte. What was stored before stays stored and served."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.backend.conftest import Backend, brush_task, encode, keypoint, noise_image, predict_body


@contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): these tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Write a file until the disk at ``path`` is full; returns it (delete it to free the space)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: nothing left to flush on close
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert os.statvfs(path).f_bavail == 0
    return filler


def click(backend: Backend, project: str, url: str) -> dict:
    body = predict_body(project, [brush_task(1, url)], context={"result": [keypoint(40, 50, "cat", width=96,
                                                                                     height=80)]})
    response = backend.client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_full_disk_while_an_embedding_is_stored_still_answers_the_click(
        make_backend: Callable[..., Backend], tmp_path, file_server):
    with small_disk(tmp_path / "app0" / "embeddings", 2048) as store_dir:
        backend = make_backend()
        first = file_server.add("/first.png", encode(noise_image(80, 96, 1)))
        second = file_server.add("/second.png", encode(noise_image(80, 96, 2)))
        assert "error" not in click(backend, "5", first)
        filler = fill(store_dir)
        answered = click(backend, "5", second)  # encoded, but its embedding cannot be written
        assert "error" not in answered and answered["result"]
        assert "error" not in click(backend, "5", second)
        models = backend.services.models
        models.cache.clear()
        # Full, the store cannot even be read (its index records access times): encoded again, answered.
        assert "error" not in click(backend, "5", first)
        filler.unlink()
        # What was stored before the disk filled is intact: read back, no encoding.
        models.cache.clear()
        encoded = models.encoded_images
        assert "error" not in click(backend, "5", first)
        assert models.encoded_images == encoded


def test_full_disk_while_an_adapter_is_published_keeps_the_previous_version_served(
        make_backend: Callable[..., Backend], tmp_path, file_server):
    with small_disk(tmp_path / "app0" / "adapters", 8192) as adapter_dir:
        backend = make_backend()
        assert backend.publish("6", ["cat", "dog"], seed=1) == 1
        url = file_server.add("/served.png", encode(noise_image(80, 96, 3)))
        before = click(backend, "6", url)
        assert before["model_version"].endswith("-p6-v1")
        filler = fill(adapter_dir)
        with pytest.raises(OSError) as failed:
            backend.publish("6", ["cat", "dog"], seed=2)
        assert failed.value.errno == errno.ENOSPC
        registry = backend.registry
        assert [v.version for v in registry.versions("6")] == [1] and registry.active_version("6") == 1
        assert [p.name for p in (adapter_dir / "6").iterdir() if p.name.startswith(".tmp")] == []
        after = click(backend, "6", url)
        assert after["model_version"] == before["model_version"]
        assert [r["value"]["rle"] for r in after["result"]] == [r["value"]["rle"] for r in before["result"]]
        filler.unlink()  # space again: the next run publishes
        assert backend.publish("6", ["cat", "dog"], seed=2) == 2
        assert click(backend, "6", url)["model_version"].endswith("-p6-v2")
