"""The operations a model family answers; everything outside ``families`` calls these, never its modules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.model.features import ImageFeatures


@dataclass(frozen=True)
class FeatureMap:
    """One tensor of an image's features: its name, channels and input pixels per cell."""

    name: str
    channels: int
    stride: int

    def shape(self, image_size: int) -> tuple[int, int, int]:
        side = image_size // self.stride
        return self.channels, side, side


class Family:
    """A family of base models sharing one architecture (subclasses override what differs).

    A built base model is an ``nn.Module`` with ``image_encoder``, ``prompt_encoder`` and
    ``mask_decoder`` children and ``pixel_mean`` / ``pixel_std`` buffers (3 x 1 x 1, 0-255 scale).
    """

    name = "family"
    # "longest_side": resize the longest side to the input size and pad (SAM 1); "square": stretch the
    # image to the square input (SAM 2, as its own transforms do).
    resize = "longest_side"
    # Input sizes must be a multiple of this (patch and pooling strides).
    image_multiple = 16
    # Whether clicks after the first feed the previous low-resolution logits back as a mask prompt.
    feeds_back_mask = False
    # Whether ``training.inference.compiled_decoder`` may compile ``predict_masks`` (it traces without breaks).
    compilable = False
    # The tensors of an image's features, in ``ImageFeatures`` order (the embedding first).
    feature_maps: tuple[FeatureMap, ...] = (FeatureMap("image_embed", 256, 16),)

    def feature_shapes(self, image_size: int) -> dict[str, tuple[int, int, int]]:
        """name -> (C, H, W) of each feature tensor of one image at ``image_size``."""
        return {m.name: m.shape(image_size) for m in self.feature_maps}

    def encode(self, model: nn.Module, batch: torch.Tensor) -> ImageFeatures:
        """B x 3 x S x S preprocessed images -> their features."""
        raise NotImplementedError

    def prompts(self, model: nn.Module, coords: torch.Tensor | None, labels: torch.Tensor | None,
                box: torch.Tensor | None, mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sparse B x N x 256, dense B x 256 x G x G) prompt embeddings."""
        points = (coords, labels) if coords is not None else None
        return model.prompt_encoder(points=points, boxes=box, masks=mask_input)

    def decode(self, decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(B x M x 4G x 4G mask logits, B x M IoU predictions); M is 3 with multimask else 1: the decoder's own
        forward (its module call: hooks run). The compiled click decoder runs it as ``predict_masks`` then
        ``select``, which must give the same; its tests compare the two."""
        raise NotImplementedError

    def predict_masks(self, decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor,
                      sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every mask token's (B x K x 4G x 4G logits, B x K IoU predictions): what
        ``training.inference.compiled_decoder`` compiles, so no branch on tensor values (a graph break)."""
        raise NotImplementedError

    def select(self, decoder: nn.Module, masks: torch.Tensor, iou: torch.Tensor,
               multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's choice among ``predict_masks``' tokens: the three candidates, or the single mask."""
        chosen = slice(1, None) if multimask else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]

    def output_tokens(self, decoder: nn.Module) -> torch.Tensor:
        """The decoder's own output tokens, in the order its transformer sees them (K x 256)."""
        return torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])

    def upscale(self, decoder: nn.Module, src: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
        """The transformer's image output (B x 256 x G x G) upscaled to mask resolution (B x 32 x 4G x 4G)."""
        return decoder.output_upscaling(src)

    def image_only_projections(self, decoder: nn.Module) -> list[nn.Linear]:
        """Projections of the decoder's first block that read only the image (reusable across clicks)."""
        first = decoder.transformer.layers[0]
        return [first.cross_attn_token_to_image.k_proj, first.cross_attn_token_to_image.v_proj,
                first.cross_attn_image_to_token.q_proj]

    def input_size(self, original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
        """(h, w) of an image of ``original_size`` in the model's input frame, before padding."""
        if self.resize == "square":
            return image_size, image_size
        height, width = original_size
        scale = image_size / max(height, width)
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))
