"""The runtime rules: device, precision, and the free-core reading that caps intra-op threads."""

import builtins
import os

import pytest
import torch

from training.inference import runtime


def test_free_cores_is_between_one_and_the_core_count():
    runtime.free_cores.cache_clear()
    assert 1 <= runtime.free_cores() <= len(os.sched_getaffinity(0))


def test_free_cores_reads_proc_at_most_once_per_ttl(monkeypatch):
    opened = []

    def counting_open(path, *args, **kwargs):
        opened.append(path)
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(runtime, "open", counting_open, raising=False)
    runtime.free_cores.cache_clear()
    first = runtime.free_cores()
    reads = len(opened)
    assert reads >= 1  # the first call scans /proc
    assert [runtime.free_cores() for _ in range(50)] == [first] * 50
    assert len(opened) == reads  # the next calls within the TTL do not
    runtime.free_cores.cache_clear()
    runtime.free_cores()
    assert len(opened) > reads


@pytest.mark.parametrize("name, expected", [("cpu", "cpu"), ("auto", "cuda" if torch.cuda.is_available() else "cpu")])
def test_device_rule(name, expected):
    assert runtime.resolve_device(name).type == expected


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "CPU"])
def test_malformed_device_names_are_refused(name):
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        runtime.resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="sees no CUDA device"):
        runtime.resolve_device("cuda")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_precision_uses_bf16_only_on_cpus_that_run_it_natively(monkeypatch, native, expected):
    # Emulated bf16 made the vit_t encoder 10-50x slower than fp32 on a CPU without avx512_bf16.
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype(cpu, "auto") == expected
    assert runtime.autocast_dtype(cpu, "bf16") == torch.bfloat16
    assert runtime.autocast_dtype(cpu, "fp32") is None
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        runtime.autocast_dtype(cpu, "fp16")
