"""Base weights: official checkpoints (``training.model.base_models``) downloaded once into a cache and
verified by SHA-256; a checkpoint without a published hash must load into its model, and its hash is logged.

``SAM_CHECKPOINT`` semantics: a file path, ``random`` (seeded random initialisation for tests and
demos, announced loudly), or unset/empty for the official checkpoint of the chosen model.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from training.model.base_models import BASE_MODELS, OfficialCheckpoint, base_model, build_sam, check_model_type

__all__ = ["OfficialCheckpoint"]

log = logging.getLogger(__name__)

RANDOM = "random"


class CheckpointError(RuntimeError):
    """The base weights cannot be had; the message says where to put the file."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("SAMLOOP_MODEL_CACHE") or Path.home() / ".cache" / "samloop" / "models")


def file_sha256(path: Path, remember: bool = True) -> str:
    """SHA-256 of a file, remembered in a sidecar keyed by size and mtime (vit_h is 2.4 GB)."""
    stat = path.stat()
    sidecar = path.with_name(path.name + ".sha256.json")
    stamp = {"size": stat.st_size, "mtime": stat.st_mtime_ns}
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("stamp") == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    if not remember:
        return value
    # A read-only model directory only costs a re-hash next time.
    with contextlib.suppress(OSError):
        sidecar.write_text(json.dumps({"stamp": stamp, "sha256": value}))
    return value


def download_official(model_type: str, cache_dir: Path | None = None) -> Path:
    """Return the verified official checkpoint for ``model_type``, downloading it if needed."""
    spec = base_model(model_type).checkpoint
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / spec.filename
    if target.exists():
        if spec.sha256 is None or file_sha256(target) == spec.sha256:
            return target
        raise CheckpointError(
            f"{target} does not match the official SHA-256 {spec.sha256} (corrupt or partial download); "
            f"delete it and retry, or download {spec.url} yourself into {cache_dir}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial_path = target.with_name(target.name + ".part")
    log.info("downloading %s checkpoint from %s into %s", model_type, spec.url, cache_dir)
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as response, partial_path.open("wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial_path.unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot download the {model_type} checkpoint from {spec.url} ({exc}). "
            f"Without internet access, download it elsewhere and put it at {target}, "
            f"or set SAM_CHECKPOINT to its path (or SAM_CHECKPOINT=random for a demo without weights)"
        ) from exc
    actual = file_sha256(partial_path, remember=False)
    if spec.sha256 is None:
        _check_unhashed(model_type, partial_path, actual)
    elif actual != spec.sha256:
        partial_path.unlink(missing_ok=True)
        raise CheckpointError(f"downloaded {spec.url} has SHA-256 {actual}, expected {spec.sha256}; not used")
    os.replace(partial_path, target)
    return target


def _check_unhashed(model_type: str, path: Path, digest: str) -> None:
    """A checkpoint without a published hash: it must load into the model; its hash is logged so that
    it can be recorded (the file's sidecar keeps it for later starts)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        build_sam(model_type, 256, state_dict=state.get("model", state))
    except Exception as exc:  # any failure means the file is not this model's checkpoint
        path.unlink(missing_ok=True)
        raise CheckpointError(f"downloaded {model_type} checkpoint does not fit the model: {exc}") from exc
    log.warning("%s checkpoint has no published SHA-256; first download has %s", model_type, digest)


@dataclass(frozen=True)
class BaseWeights:
    """Where the base model's weights come from, and the identity adapters are bound to."""

    model_type: str
    path: Path | None  # None for random initialisation
    sha256: str  # "random" for random initialisation

    @property
    def is_random(self) -> bool:
        return self.path is None


def resolve_checkpoint(model_type: str, checkpoint: str | None, cache_dir: Path | None = None) -> BaseWeights:
    """Turn a ``SAM_CHECKPOINT`` value into verified base weights (downloading official ones)."""
    check_model_type(model_type)
    value = (checkpoint or "").strip()
    if value.lower() == RANDOM:
        log.warning(
            "SAM_CHECKPOINT=random: %s is RANDOMLY INITIALISED; predictions mean nothing until "
            "trained. Use this for tests and demos only.", model_type,
        )
        return BaseWeights(model_type, None, RANDOM)
    if not value:
        path = download_official(model_type, cache_dir)
        return BaseWeights(model_type, path, base_model(model_type).checkpoint.sha256 or file_sha256(path))
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"SAM_CHECKPOINT={value!r} is not a file; give the path to a {model_type} checkpoint, "
            f"leave it empty to download the official one, or use 'random'"
        )
    return BaseWeights(model_type, path, file_sha256(path))


def load_base_model(weights: BaseWeights, image_size: int) -> torch.nn.Module:
    """Build the SAM model for ``weights`` at ``image_size`` (eval mode, CPU)."""
    if weights.path is None:
        return build_sam(weights.model_type, image_size)
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file; all mean the same here
        raise CheckpointError(f"cannot read checkpoint {weights.path}: {exc}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not any(isinstance(value, torch.Tensor) for value in state.values()):
        held = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict without tensors"
        raise CheckpointError(f"checkpoint {weights.path} holds {held}, not a state dict: give a "
                              f"{weights.model_type} SAM checkpoint file (a dict of parameter tensors)")
    try:
        return build_sam(weights.model_type, image_size, state_dict=state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {weights.path} does not fit the {weights.model_type} model: {str(exc)[:300]}"
        ) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.model.weights", description="Download and verify official SAM checkpoints."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    download = sub.add_parser("download", help="download the official checkpoint into the cache and verify it")
    download.add_argument("--model", default="vit_t", choices=sorted(BASE_MODELS))
    download.add_argument("--cache", type=Path, default=None, help="cache directory (default SAMLOOP_MODEL_CACHE)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        path = download_official(args.model, args.cache)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
