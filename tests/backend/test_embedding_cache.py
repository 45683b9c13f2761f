import torch

from backend.embedding_cache import EmbeddingCache
from training.inference.predictor import ImageEmbedding


def embedding(value: float = 0.0) -> ImageEmbedding:
    return ImageEmbedding(torch.full((1, 256, 4, 4), float(value)), (64, 64), (64, 64))  # 16 KB


def test_lru_evicts_least_recently_used_by_bytes():
    size = embedding().nbytes
    cache = EmbeddingCache(max_bytes=2 * size)
    cache.put("a", embedding(1))
    cache.put("b", embedding(2))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", embedding(3))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes == 2 * size
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 1


def test_zero_budget_caches_nothing_and_replacing_a_key_keeps_the_count():
    assert len(EmbeddingCache(0)) == 0
    cache = EmbeddingCache(0)
    cache.put("a", embedding())
    assert cache.get("a") is None
    big = EmbeddingCache(10 * embedding().nbytes)
    big.put("a", embedding(1))
    big.put("a", embedding(2))
    assert len(big) == 1 and big.nbytes == embedding().nbytes
    assert float(big.get("a").embedding[0, 0, 0, 0]) == 2.0
