from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.settings import Settings
from backend.versioning import model_version
from training.model.artifact import BaseIdentity


def test_defaults(monkeypatch):
    for name in ("REDIS_URL", "SAM_IMAGE_SIZE", "SAMLOOP_DATA_DIR", "LABEL_STUDIO_URL", "BASIC_AUTH_USER",
                 "BASIC_AUTH_PASS", "SAMLOOP_ADAPTER_STORE", "EMBEDDING_CACHE_MB", "ENCODER_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.SAM_MODEL == "vit_t" and settings.SAM_IMAGE_SIZE == 1024
    assert settings.EMBEDDING_CACHE_MB == 256
    assert settings.encoder_batch_size("cpu") == 1 and settings.encoder_batch_size("cuda") == 4
    assert settings.embedded_redis and settings.adapter_store == "local"
    assert settings.adapter_dir == Path("data/adapters")


def test_environment_is_read_and_redis_url_selects_the_redis_store(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/2")
    monkeypatch.setenv("SAM_IMAGE_SIZE", "512")
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://ls:8080/")
    settings = Settings()
    assert settings.adapter_store == "redis" and settings.SAM_IMAGE_SIZE == 512
    assert settings.LABEL_STUDIO_URL == "http://ls:8080"


def test_an_explicit_encoder_batch_size_applies_on_every_device(monkeypatch):
    monkeypatch.setenv("ENCODER_BATCH_SIZE", "3")
    settings = Settings()
    assert settings.encoder_batch_size("cpu") == 3 and settings.encoder_batch_size("cuda") == 3


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"SAM_IMAGE_SIZE": 1000}, "multiple of 16"),
        ({"SAM_MODEL": "sam2.1_hiera_t", "SAM_IMAGE_SIZE": 1040},
         "SAM_IMAGE_SIZE: image size for sam2.1_hiera_t must be a multiple of 32"),
        ({"SAM_MODEL": "vit_q"}, "SAM_MODEL"),
        ({"LABEL_STUDIO_URL": "ls:8080"}, "http:// or https://"),
        ({"BASIC_AUTH_USER": "admin"}, "both BASIC_AUTH_USER and BASIC_AUTH_PASS"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"SAMLOOP_ADAPTER_STORE": "s3"}, "SAMLOOP_ADAPTER_STORE"),
        ({"ENCODER_BATCH_SIZE": 0}, "ENCODER_BATCH_SIZE must be auto or at least 1"),
        ({"ENCODER_BATCH_SIZE": "many"}, "ENCODER_BATCH_SIZE"),
    ],
)
def test_bad_values_are_named(values, words):
    with pytest.raises(ValidationError, match=words):
        Settings(**values)


def test_a_sam2_size_that_is_a_multiple_of_32_is_accepted():
    assert Settings(SAM_MODEL="sam2.1_hiera_t", SAM_IMAGE_SIZE=1024).SAM_IMAGE_SIZE == 1024


def test_model_version_spelling():
    base = BaseIdentity("vit_t", "random", 256)
    assert model_version(base, None, None) == "samloop-vit_t-256-RANDOM-WEIGHTS-untrained"
    assert model_version(base, "3", 2) == "samloop-vit_t-256-RANDOM-WEIGHTS-p3-v2"
    assert model_version(BaseIdentity("vit_b", "abc", 1024), "7", 1) == "samloop-vit_b-1024-p7-v1"
    with pytest.raises(ValueError, match="project"):
        model_version(base, None, 3)


def test_one_device_rule_for_the_backend_and_the_jobs(tmp_path):
    from tests.backend.conftest import make_settings
    from training.pipeline.settings import JobSettings

    assert make_settings(tmp_path, "p", DEVICE="cuda:1").DEVICE == "cuda:1"
    assert JobSettings(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValidationError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        make_settings(tmp_path, "p", DEVICE="gpu")
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        JobSettings(device="gpu")
