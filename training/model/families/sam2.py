"""SAM 2.1 Hiera (t, s, b+, l) from Meta's ``sam2`` package (the ``rf-sam-2`` wheel), image prompts only.

SAM 2's image path: the Hiera trunk and FPN neck give three maps; the two finer ones go through the
decoder's ``conv_s0`` / ``conv_s1`` once per image (as ``SAM2ImagePredictor.set_image`` does) and are
kept beside the 256-channel embedding, to which the "no memory" embedding is added. The decoder then
mixes them into its mask upsampling. Images are stretched to the square input (SAM 2's transforms),
boxes enter as two labelled corner points, and a previous mask's low-resolution logits may come back
as a mask prompt. The video parts (memory attention and encoder) are built to load a checkpoint
strictly, then dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from training.model.families.base import Family, FeatureMap
from training.model.features import ImageFeatures

# ImageNet statistics on the 0-255 scale: SAM 2's ToTensor + Normalize, as SAM 1 stores them.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
# SAM 2's prompt encoder labels a box's top-left and bottom-right corners as points 2 and 3.
BOX_CORNER_LABELS = (2, 3)


class Sam2Image(nn.Module):
    """The image-prompt parts of a ``SAM2Base`` under SAM 1's attribute names."""

    def __init__(self, base: nn.Module, image_size: int) -> None:
        super().__init__()
        self.image_encoder = base.image_encoder
        self.prompt_encoder = base.sam_prompt_encoder
        self.mask_decoder = base.sam_mask_decoder
        self.no_mem_embed = base.no_mem_embed  # 1 x 1 x 256
        self.img_size = image_size
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), persistent=False)


def build_base(config: str, image_size: int) -> nn.Module:
    """The whole ``SAM2Base`` of hydra config ``config`` (in the ``sam2`` package) at ``image_size``, with
    the postprocessing SAM 2's image predictor uses (a single mask falls back to the most stable of three)."""
    from sam2.build_sam import build_sam2  # imported here: importing sam2 initialises hydra

    return build_sam2(config, ckpt_path=None, device="cpu", mode="eval",
                      hydra_overrides_extra=[f"++model.image_size={image_size}"])


def builder(config: str):
    """A builder of the SAM 2.1 model of hydra config ``config``."""

    def build(image_size: int, state_dict: dict | None) -> Sam2Image:
        base = build_base(config, image_size)
        if state_dict is not None:
            base.load_state_dict(state_dict, strict=True)
        return Sam2Image(base, image_size)

    return build


class Sam2Family(Family):
    """SAM 2.1: an embedding plus two high-resolution maps; mask feedback; stretched square input."""

    name = "sam2.1"
    resize = "square"
    image_multiple = 32  # Hiera tiles its window position table over the stride-4 grid
    feeds_back_mask = True
    compilable = True
    feature_maps = (FeatureMap("image_embed", 256, 16), FeatureMap("high_res_s0", 32, 4),
                    FeatureMap("high_res_s1", 64, 8))

    def encode(self, model: nn.Module, batch: torch.Tensor) -> ImageFeatures:
        out = model.image_encoder(batch)
        finest, middle, coarse = out["backbone_fpn"][-3:]
        decoder = model.mask_decoder
        embedding = coarse + model.no_mem_embed.reshape(1, -1, 1, 1)
        return ImageFeatures(embedding, (decoder.conv_s0(finest), decoder.conv_s1(middle)))

    def prompts(self, model: nn.Module, coords: torch.Tensor | None, labels: torch.Tensor | None,
                box: torch.Tensor | None, mask_input: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if box is not None:
            corners = box.reshape(-1, 2, 2)
            corner_labels = torch.tensor([BOX_CORNER_LABELS], device=box.device).expand(corners.shape[0], -1)
            if coords is None:
                coords, labels = corners, corner_labels
            else:
                coords = torch.cat([corners.to(coords.dtype), coords], dim=1)
                labels = torch.cat([corner_labels.to(labels.dtype), labels], dim=1)
        points = (coords, labels) if coords is not None else None
        return model.prompt_encoder(points=points, boxes=None, masks=mask_input)

    def decode(self, decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        masks, iou, _, _ = decoder(image_embeddings=features.embedding, image_pe=image_pe,
                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                   multimask_output=multimask, repeat_image=_repeats_image(features, sparse),
                                   high_res_features=list(features.high_res))
        return masks, iou

    def predict_masks(self, decoder: nn.Module, features: ImageFeatures, image_pe: torch.Tensor,
                      sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The mask tokens' outputs and object-score logits serve SAM 2's video memory only (dropped from a graph).
        masks, iou, _, _ = decoder.predict_masks(image_embeddings=features.embedding, image_pe=image_pe,
                                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                 repeat_image=_repeats_image(features, sparse),
                                                 high_res_features=list(features.high_res))
        return masks, iou

    def select(self, decoder: nn.Module, masks: torch.Tensor, iou: torch.Tensor,
               multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # SAM 2.1's single mask falls back to the best of the three candidates when it is unstable (the
        # decoder's forward, in eval mode): done on the graph's outputs, a data-dependent choice.
        if not multimask and decoder.dynamic_multimask_via_stability and not decoder.training:
            return decoder._dynamic_multimask_via_stability(masks, iou)
        return super().select(decoder, masks, iou, multimask)

    def output_tokens(self, decoder: nn.Module) -> torch.Tensor:
        own = [decoder.iou_token.weight, decoder.mask_tokens.weight]
        if decoder.pred_obj_scores:
            own.insert(0, decoder.obj_score_token.weight)
        return torch.cat(own)

    def upscale(self, decoder: nn.Module, src: torch.Tensor, features: ImageFeatures) -> torch.Tensor:
        deconv1, norm1, act1, deconv2, act2 = decoder.output_upscaling
        finest, middle = features.high_res
        return act2(deconv2(act1(norm1(deconv1(src) + middle))) + finest)


def _repeats_image(features: ImageFeatures, sparse: torch.Tensor) -> bool:
    """Whether one image's features serve several prompt rows (the class prompts): the decoder repeats them.
    Batch sizes are static in a compiled graph, so this is a guard there, never a recompile per click."""
    return features.embedding.shape[0] == 1 and sparse.shape[0] > 1


SAM2 = Sam2Family()
