"""The on-disk embedding store: round trips, its bound, corrupt entries, restarts, half precision."""

import numpy as np
import pytest
import torch

from training.inference.embedding_store import MB, EmbeddingStore, decode_entry, embedding_key, encode_entry
from training.inference.predictor import ImageEmbedding, Predictor
from training.model.artifact import BaseIdentity
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint

BASE = BaseIdentity("vit_t", "random", 256)


def fake_embedding(seed: int, grid: int = 16) -> ImageEmbedding:
    values = torch.from_numpy(np.random.default_rng(seed).normal(size=(1, 256, grid, grid)).astype(np.float32))
    return ImageEmbedding(values, (200, 256), (400, 512))


def test_round_trip_keeps_geometry_and_values_within_half_precision(tmp_path):
    store = EmbeddingStore(tmp_path, 8 * MB)
    original = fake_embedding(0)
    key = embedding_key(BASE, "abc")
    store.put(key, original)
    loaded = store.get(key)
    assert loaded.input_size == (200, 256) and loaded.original_size == (400, 512)
    assert loaded.embedding.dtype == torch.float32
    torch.testing.assert_close(loaded.embedding, original.embedding, rtol=1e-3, atol=2e-3)
    assert store.get(embedding_key(BASE, "other")) is None
    assert store.stats()["hits"] == 1 and store.stats()["misses"] == 1


def test_keys_differ_by_base_weights_size_and_content():
    keys = {embedding_key(BASE, "a"), embedding_key(BaseIdentity("vit_t", "random", 512), "a"),
            embedding_key(BaseIdentity("vit_t", "f00d", 256), "a"), embedding_key(BASE, "b")}
    assert len(keys) == 4


def test_the_bound_holds_and_recently_used_entries_stay(tmp_path):
    store = EmbeddingStore(tmp_path, 2 * MB)  # each entry is 128 KB in half precision
    store.put("keep", fake_embedding(0))
    for i in range(40):
        store.get("keep")  # used all along: the least recently used entries go first
        store.put(f"e{i}", fake_embedding(i))
        assert store.nbytes <= 2 * MB
    assert "keep" in store and "e0" not in store and "e39" in store
    assert 5 <= len(store) < 16


def test_a_truncated_entry_is_dropped_and_recomputed_not_served(tmp_path):
    store = EmbeddingStore(tmp_path, 8 * MB)
    store.put("k", fake_embedding(1))
    files = [p for p in tmp_path.rglob("*.val")]
    assert len(files) == 1  # large values are files beside the SQLite index
    files[0].write_bytes(files[0].read_bytes()[:1000])
    assert store.get("k") is None
    assert store.corrupt == 1 and "k" not in store


def test_corrupt_bytes_fail_their_checksum():
    data = bytearray(encode_entry(fake_embedding(2)))
    data[-5] ^= 0xFF
    with pytest.raises(ValueError, match="CRC"):
        decode_entry(bytes(data))
    with pytest.raises(ValueError, match="unreadable"):
        decode_entry(b"\x00\x00")


def test_entries_survive_a_restart(tmp_path):
    first = EmbeddingStore(tmp_path, 8 * MB)
    first.put("k", fake_embedding(3))
    first.close()
    again = EmbeddingStore(tmp_path, 8 * MB)
    assert again.get("k") is not None


def test_the_store_refuses_a_bound_below_one_mb(tmp_path):
    with pytest.raises(ValueError, match="at least 1 MB"):
        EmbeddingStore(tmp_path, 1000)


def test_clicks_from_half_precision_match_full_precision(tmp_path):
    model = new_adapter_model(resolve_checkpoint("vit_t", "random"), 256, ["a"]).eval()
    predictor = Predictor(model, precision="fp32")
    rng = np.random.default_rng(0)
    image = (rng.random((240, 256, 3)) * 255).astype(np.uint8)
    full = predictor.embed([image])[0]
    half = decode_entry(encode_entry(full, half=True))
    for clicks in ([[60.0, 80.0]], [[60.0, 80.0], [200.0, 30.0]]):
        points = np.array(clicks)
        labels = np.array([1] + [0] * (len(clicks) - 1))
        a = predictor.predict_prompt(full, points, labels).mask
        b = predictor.predict_prompt(half, points, labels).mask
        iou = (a & b).sum() / max(1, (a | b).sum())
        assert a.any() and iou >= 0.99  # tolerance: at most 1 % of the mask's pixels differ


def test_every_feature_map_of_a_sam2_embedding_round_trips(tmp_path):
    """SAM 2.1: the embedding and its two high-resolution maps, half precision, CRC over all of them."""
    model = new_adapter_model(resolve_checkpoint("sam2.1_hiera_t", "random"), 128, ["a"])
    image = (np.random.default_rng(2).random((70, 110, 3)) * 255).astype(np.uint8)
    original = Predictor(model, precision="fp32").embed([image])[0]
    assert [tuple(t.shape) for t in original.features.tensors()] == [(1, 256, 8, 8), (1, 32, 32, 32), (1, 64, 16, 16)]
    store = EmbeddingStore(tmp_path, 8 * MB)
    key = embedding_key(BaseIdentity("sam2.1_hiera_t", "random", 128), "img")
    store.put(key, original)
    loaded = store.get(key)
    for got, want in zip(loaded.features.tensors(), original.features.tensors(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=2e-3)
    assert loaded.nbytes == original.nbytes and loaded.original_size == (70, 110)
    data = bytearray(encode_entry(original))
    data[-3] ^= 0xFF  # the last map's bytes are covered by the CRC too
    with pytest.raises(ValueError, match="CRC"):
        decode_entry(bytes(data))


def test_an_entry_written_before_feature_layouts_still_reads():
    import json
    import struct
    import zlib

    values = np.arange(8, dtype=np.float16).reshape(1, 2, 2, 2)
    payload = values.tobytes()
    header = json.dumps({"shape": [1, 2, 2, 2], "dtype": "float16", "input_size": [4, 4], "original_size": [8, 8],
                         "crc32": zlib.crc32(payload)}).encode()
    entry = decode_entry(struct.pack(">I", len(header)) + header + payload)
    assert entry.high_res == () and torch.equal(entry.embedding, torch.from_numpy(values.astype(np.float32)))
