"""The registry of base models: name -> family, builder, official checkpoint and feature layout.

Every other module asks this registry (``base_model(name)``) how to build, encode and decode; no module
outside ``training.model.families`` imports a model package. A name not in ``BASE_MODELS`` raises
``ValueError`` listing the valid ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from training.model.families import sam1, sam2
from training.model.families.base import Family

log = logging.getLogger(__name__)

# Random initialisation is seeded so that every process (backend, workers on other hosts)
# builds the same "random" base model and adapters trained on it stay valid everywhere.
RANDOM_INIT_SEED = 0
MIN_IMAGE_SIZE = 64


@dataclass(frozen=True)
class OfficialCheckpoint:
    """Where the official weights are, and their SHA-256 (None: none published; recorded on first
    download and the state dict's keys and shapes checked instead)."""

    url: str
    sha256: str | None
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BaseModelSpec:
    """A named base model: ``build(image_size, state_dict or None)`` gives its modules (see ``Family``)."""

    name: str
    family: Family
    build: Callable[[int, dict | None], nn.Module]
    checkpoint: OfficialCheckpoint

    def feature_shapes(self, image_size: int) -> dict[str, tuple[int, int, int]]:
        """The embedding layout: feature name -> (C, H, W) of one image at ``image_size``."""
        return self.family.feature_shapes(image_size)


_HF = "https://huggingface.co/facebook"


def _sam2(name: str, config: str, repo: str, filename: str, sha256: str, size: int) -> BaseModelSpec:
    url = f"{_HF}/{repo}/resolve/main/{filename}"
    return BaseModelSpec(name, sam2.SAM2, sam2.builder(config), OfficialCheckpoint(url, sha256, size))


def _sam1(name: str, build: Callable[[int], nn.Module], url: str, sha256: str) -> BaseModelSpec:
    return BaseModelSpec(name, sam1.SAM1, sam1.loader(build), OfficialCheckpoint(url, sha256))


_META = "https://dl.fbaipublicfiles.com/segment_anything"
BASE_MODELS: dict[str, BaseModelSpec] = {
    "vit_t": _sam1("vit_t", sam1.build_vit_t,
                   "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                   "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
    "vit_b": _sam1("vit_b", sam1.VIT_B, f"{_META}/sam_vit_b_01ec64.pth",
                   "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": _sam1("vit_l", sam1.VIT_L, f"{_META}/sam_vit_l_0b3195.pth",
                   "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": _sam1("vit_h", sam1.VIT_H, f"{_META}/sam_vit_h_4b8939.pth",
                   "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    # SHA-256 and sizes: the Git LFS pointers of the checkpoints on the model hub (facebook/sam2.1-hiera-*).
    "sam2.1_hiera_t": _sam2("sam2.1_hiera_t", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1-hiera-tiny",
                            "sam2.1_hiera_tiny.pt",
                            "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156008466),
    "sam2.1_hiera_s": _sam2("sam2.1_hiera_s", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1-hiera-small",
                            "sam2.1_hiera_small.pt",
                            "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184416285),
    "sam2.1_hiera_b+": _sam2("sam2.1_hiera_b+", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1-hiera-base-plus",
                             "sam2.1_hiera_base_plus.pt",
                             "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323606802),
    "sam2.1_hiera_l": _sam2("sam2.1_hiera_l", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1-hiera-large",
                            "sam2.1_hiera_large.pt",
                            "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898083611),
}


def base_model(name: str) -> BaseModelSpec:
    """The registered base model ``name``; ValueError listing the valid names otherwise."""
    spec = BASE_MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown SAM model {name!r}; valid models: {', '.join(sorted(BASE_MODELS))}")
    return spec


def check_model_type(model_type: str) -> str:
    base_model(model_type)
    return model_type


def check_image_size(image_size: int, model_type: str = "vit_t") -> int:
    multiple = base_model(model_type).family.image_multiple
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE or image_size % multiple:
        raise ValueError(f"image size for {model_type} must be a multiple of {multiple} and at least "
                         f"{MIN_IMAGE_SIZE}, got {image_size!r}")
    return image_size


def build_sam(model_type: str, image_size: int = 1024, state_dict: dict | None = None) -> nn.Module:
    """Build base model ``model_type`` in eval mode.

    Args:
        model_type: a name in ``BASE_MODELS`` (``vit_t`` is MobileSAM).
        image_size: square input size in pixels (a multiple of the family's ``image_multiple``).
        state_dict: weights of the official checkpoint (resized to ``image_size`` where the family needs
            it); ``None`` gives the seeded random initialisation.
    """
    spec = base_model(model_type)
    check_image_size(image_size, model_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = spec.build(image_size, state_dict)
    # eval() after loading: TinyViT caches its attention biases when switched to eval mode.
    model.train()
    model.eval()
    return model
