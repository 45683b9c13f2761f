import hashlib
import http.server
import threading
from dataclasses import replace

import pytest
import torch

from training.model import weights as checkpoints
from training.model.base_models import BASE_MODELS, build_sam
from training.model.weights import (
    CheckpointError,
    OfficialCheckpoint,
    load_base_model,
    resolve_checkpoint,
)


def _official(monkeypatch, checkpoint):
    monkeypatch.setitem(BASE_MODELS, "vit_t", replace(BASE_MODELS["vit_t"], checkpoint=checkpoint))


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_random_is_announced(caplog):
    weights = resolve_checkpoint("vit_t", "random")
    assert weights.is_random and weights.sha256 == "random"
    assert "RANDOMLY INITIALISED" in caplog.text


def test_missing_path_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="is not a file.*random"):
        resolve_checkpoint("vit_t", str(tmp_path / "nope.pt"))


def test_unknown_model():
    with pytest.raises(ValueError, match="valid models"):
        resolve_checkpoint("vit_q", "random")


def test_official_download_verifies_and_caches(tmp_path, file_server, monkeypatch):
    root, url = file_server
    state = build_sam("vit_t", 1024).state_dict()
    torch.save(state, root / "mobile_sam.pt")
    digest = hashlib.sha256((root / "mobile_sam.pt").read_bytes()).hexdigest()
    _official(monkeypatch, OfficialCheckpoint(f"{url}/mobile_sam.pt", digest))
    cache = tmp_path / "cache"
    weights = resolve_checkpoint("vit_t", None, cache)
    assert weights.path == cache / "mobile_sam.pt" and weights.sha256 == digest
    (root / "mobile_sam.pt").unlink()  # a second call must not download again
    assert resolve_checkpoint("vit_t", "", cache).path == weights.path
    model = load_base_model(weights, 256)
    assert torch.equal(model.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])


def test_download_with_wrong_checksum_is_refused(tmp_path, file_server, monkeypatch):
    root, url = file_server
    (root / "mobile_sam.pt").write_bytes(b"not a checkpoint")
    _official(monkeypatch, OfficialCheckpoint(f"{url}/mobile_sam.pt", "0" * 64))
    with pytest.raises(CheckpointError, match="expected 0000"):
        resolve_checkpoint("vit_t", None, tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_offline_download_names_where_to_put_the_file(tmp_path, monkeypatch):
    _official(monkeypatch, OfficialCheckpoint("http://127.0.0.1:9/mobile_sam.pt", "0" * 64))
    with pytest.raises(CheckpointError, match=f"put it at {tmp_path / 'cache' / 'mobile_sam.pt'}"):
        resolve_checkpoint("vit_t", None, tmp_path / "cache")


def test_corrupt_cached_file_is_reported(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mobile_sam.pt").write_bytes(b"half a file")
    with pytest.raises(CheckpointError, match="does not match the official SHA-256"):
        resolve_checkpoint("vit_t", None, cache)


def test_unreadable_checkpoint_file(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"garbage")
    weights = resolve_checkpoint("vit_t", str(path))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_base_model(weights, 256)


@pytest.mark.parametrize(("content", "held"), [(torch.zeros(3), "a Tensor"), ({"step": 3}, "a dict without tensors")])
def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path, content, held):
    path = tmp_path / "prompts.pt"  # e.g. the stand-in's class prompts, beside it, given by mistake
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=f"holds {held}, not a state dict: give a vit_t SAM checkpoint"):
        load_base_model(resolve_checkpoint("vit_t", str(path)), 256)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "vit_t.pt"
    torch.save(build_sam("vit_t", 256).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit the vit_b model"):
        load_base_model(resolve_checkpoint("vit_b", str(path)), 256)


def test_download_cli_reports_errors(tmp_path, monkeypatch, capsys):
    _official(monkeypatch, OfficialCheckpoint("http://127.0.0.1:9/mobile_sam.pt", "0" * 64))
    assert checkpoints.main(["download", "--model", "vit_t", "--cache", str(tmp_path)]) == 2
    assert "cannot download" in capsys.readouterr().err
