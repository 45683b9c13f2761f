"""SAM 1: MobileSAM ``vit_t`` and SAM ``vit_b/l/h``, built at a configurable input size.

The upstream builders hard-code a 1024 px input; these build the same upstream modules
(unmodified) at any multiple of 16 so CPU inference and tests can run at 256 or 512 px.
"""

from __future__ import annotations

import logging
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

with warnings.catch_warnings():
    # mobile_sam imports timm's deprecated module paths and registers TinyViT names timm already has: seven
    # warnings at every start that say nothing about samloop. Only these, only during this import.
    warnings.filterwarnings("ignore", message=r"Importing from timm\.models\.", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Overwriting tiny_vit_\w+ in registry", category=UserWarning)
    from mobile_sam.modeling import TinyViT

from training.model.families.base import Family
from training.model.features import ImageFeatures

log = logging.getLogger(__name__)

PROMPT_EMBED_DIM = 256
PATCH_SIZE = 16


class SizedTinyViT(TinyViT):
    """TinyViT whose output grid follows ``img_size`` (upstream fixes it at 64x64, i.e. 1024 px)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        batch, _, channels = x.size()
        side = self.img_size // PATCH_SIZE
        x = x.view(batch, side, side, channels).permute(0, 3, 1, 2)
        return self.neck(x)


def _prompt_and_decoder(image_size: int) -> tuple[PromptEncoder, MaskDecoder]:
    grid = image_size // PATCH_SIZE
    prompt_encoder = PromptEncoder(
        embed_dim=PROMPT_EMBED_DIM,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
        transformer_dim=PROMPT_EMBED_DIM,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return prompt_encoder, mask_decoder


def _assemble(image_encoder: torch.nn.Module, image_size: int) -> Sam:
    prompt_encoder, mask_decoder = _prompt_and_decoder(image_size)
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_vit_t(image_size: int) -> Sam:
    encoder = SizedTinyViT(
        img_size=image_size,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    return _assemble(encoder, image_size)


def _build_vit(image_size: int, embed_dim: int, depth: int, num_heads: int, global_attn: list[int]) -> Sam:
    encoder = ImageEncoderViT(
        depth=depth,
        embed_dim=embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=num_heads,
        patch_size=PATCH_SIZE,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attn,
        window_size=14,
        out_chans=PROMPT_EMBED_DIM,
    )
    return _assemble(encoder, image_size)


def resize_state_dict(state_dict: dict, target: dict) -> dict:
    """Interpolate position tables of a 1024 px checkpoint to the target model's grid.

    SAM's ViT stores an absolute ``pos_embed`` (1, G, G, C) and, in its global-attention blocks,
    relative tables ``rel_pos_h/w`` (2G-1, C); both depend on the grid G = image_size / 16.
    """
    resized = dict(state_dict)
    for name, tensor in state_dict.items():
        want = target.get(name)
        if want is None or want.shape == tensor.shape:
            continue
        if name.endswith("pos_embed") and tensor.dim() == 4:
            grid = want.shape[1:3]
            resized[name] = F.interpolate(
                tensor.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic", align_corners=False
            ).permute(0, 2, 3, 1).to(tensor.dtype)
        elif "rel_pos" in name and tensor.dim() == 2:
            resized[name] = F.interpolate(
                tensor.T.unsqueeze(0).float(), size=want.shape[0], mode="linear", align_corners=False
            )[0].T.to(tensor.dtype)
        elif "mask_downscaling" not in name:
            log.debug("leaving %s at %s (model wants %s)", name, tuple(tensor.shape), tuple(want.shape))
    return resized


VIT_B = partial(_build_vit, embed_dim=768, depth=12, num_heads=12, global_attn=[2, 5, 8, 11])
VIT_L = partial(_build_vit, embed_dim=1024, depth=24, num_heads=16, global_attn=[5, 11, 17, 23])
VIT_H = partial(_build_vit, embed_dim=1280, depth=32, num_heads=16, global_attn=[7, 15, 23, 31])


def loader(build):
    """A builder that also loads a 1024 px state dict (position tables resized to the model's grid)."""

    def build_and_load(image_size: int, state_dict: dict | None) -> Sam:
        sam = build(image_size)
        if state_dict is not None:
            sam.load_state_dict(resize_state_dict(state_dict, sam.state_dict()), strict=True)
        return sam

    return build_and_load


class Sam1Family(Family):
    """SAM 1: one 256-channel embedding; the decoder is called as ``segment_anything`` defines it."""

    name = "sam1"
    compilable = True

    def encode(self, model: nn.Module, batch: torch.Tensor) -> ImageFeatures:
        return ImageFeatures(model.image_encoder(batch))

    def decode(self, decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return decoder(image_embeddings=features.embedding, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                       dense_prompt_embeddings=dense, multimask_output=multimask)

    def predict_masks(self, decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor,
                      sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decoder.predict_masks(image_embeddings=features.embedding, image_pe=image_pe,
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


SAM1 = Sam1Family()
