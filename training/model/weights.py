"""Base SAM weights: official checkpoints downloaded once into a cache and verified by SHA-256.

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

from training.model.builders import build_sam, check_model_type

log = logging.getLogger(__name__)

RANDOM = "random"


@dataclass(frozen=True)
class OfficialCheckpoint:
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    "vit_t": OfficialCheckpoint(
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    ),
    "vit_b": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "vit_l": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_h": OfficialCheckpoint(
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
}


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
    spec = OFFICIAL_CHECKPOINTS[check_model_type(model_type)]
    cache_dir = Path(cache_dir or default_cache_dir())
    target = cache_dir / spec.filename
    if target.exists():
        if file_sha256(target) == spec.sha256:
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
    if actual != spec.sha256:
        partial_path.unlink(missing_ok=True)
        raise CheckpointError(f"downloaded {spec.url} has SHA-256 {actual}, expected {spec.sha256}; not used")
    os.replace(partial_path, target)
    return target


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
        return BaseWeights(model_type, path, OFFICIAL_CHECKPOINTS[model_type].sha256)
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
    download.add_argument("--model", default="vit_t", choices=sorted(OFFICIAL_CHECKPOINTS))
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
