"""SAM with a LoRA adapter and one learned prompt per class (its file format: ``artifact``).

Coordinates: images enter as H x W x 3 uint8 RGB; the model sees them resized so the longest
side is ``image_size`` and padded at the bottom/right (SAM's convention). Point and box prompts
are (x, y) pixels in the original image unless a docstring says otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.model.artifact import AdapterHeader, AdapterMismatchError, Artifact, BaseIdentity, write_artifact
from training.model.base_models import base_model
from training.model.config import AdapterConfig
from training.model.features import ImageFeatures

ADAPTER_INIT_SEED = 0
# (decoder, features, image_pe, sparse, dense, multimask) -> (mask logits, IoU predictions)
DecoderRun = Callable[[nn.Module, ImageFeatures, torch.Tensor, torch.Tensor, torch.Tensor, bool],
                      tuple[torch.Tensor, torch.Tensor]]


def _freeze(module: nn.Module) -> None:
    for param in module.parameters():
        param.requires_grad_(False)


def _check_class_names(class_names: list[str]) -> None:
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class names must be non-empty and unique, got {class_names!r}")


class SamAdapter(nn.Module):
    """A base model (any family of ``training.model.base_models``) whose encoder/decoder carry the parts
    named by ``AdapterConfig``.

    ``class_prompts`` has shape (C, T, 256): T learned sparse tokens for each of the C classes,
    fed to the mask decoder in place of point/box prompts.
    """

    def __init__(self, sam: nn.Module, base: BaseIdentity, class_names: list[str], config: AdapterConfig) -> None:
        super().__init__()
        _check_class_names(class_names)
        self.sam = sam
        self.base = base
        self.family = base_model(base.model_type).family
        self.config = config
        self.class_names = list(class_names)
        _freeze(sam)
        # SAM's own decoder, kept apart from the adapted one: clicks are answered by it unless the
        # adapter's decoder measured better on clicks (not saved: it is the base model's).
        # Only with the base encoder: after an adapted encoder, SAM's decoder would not be SAM.
        own = config.decoder_tuning.changes_part and config.keeps_base_embeddings
        self.base_mask_decoder = copy.deepcopy(sam.mask_decoder) if own else None
        # peft draws LoRA A matrices from the global RNG: seed it so the same config gives the same
        # starting adapter in every process (reproducible training runs).
        lora = (config.lora_rank, config.lora_alpha, config.lora_dropout)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ADAPTER_INIT_SEED)
            config.encoder_tuning.inject(sam.image_encoder, *lora, config.lora_targets)
            config.decoder_tuning.inject(sam.mask_decoder, *lora, config.decoder_lora_targets)
        dim = sam.prompt_encoder.embed_dim
        generator = torch.Generator().manual_seed(len(class_names))
        self.class_prompts = nn.Parameter(torch.randn(len(class_names), config.prompt_tokens, dim,
                                                      generator=generator))
        # What "no adapter" means for this model: LoRA B matrices are zero, so the base acts alone.
        self._base_state = {k: v.clone() for k, v in self.adapter_state().items() if k != "class_prompts"}
        self._dense_pe_cache: dict[tuple, torch.Tensor] = {}
        self.eval()

    # ----- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SamAdapter:
        super().train(mode)
        if mode and not self.updates_norm_statistics:
            self.sam.image_encoder.eval()
        return self

    @property
    def updates_norm_statistics(self) -> bool:
        return self.config.updates_norm_statistics(self.base.is_random)

    @property
    def image_size(self) -> int:
        return self.base.image_size

    @property
    def device(self) -> torch.device:
        return self.class_prompts.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # ----- image side ----------------------------------------------------------------------------
    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of an image of ``original_size`` after resizing its longest side to image_size."""
        return self.family.input_size(original_size, self.image_size)

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """H x W x 3 uint8 RGB -> (3 x S x S normalised float tensor, (h, w) before padding)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got shape {image.shape} dtype {image.dtype}")
        new_h, new_w = self.input_size(image.shape[:2])
        shrinking = new_h * new_w < image.shape[0] * image.shape[1]
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        tensor = torch.from_numpy(resized).permute(2, 0, 1).float()
        sam = self.sam
        tensor = (tensor - sam.pixel_mean.cpu()) / sam.pixel_std.cpu()
        padded = F.pad(tensor, (0, self.image_size - new_w, 0, self.image_size - new_h))
        return padded, (new_h, new_w)

    def encode(self, batch: torch.Tensor) -> ImageFeatures:
        """B x 3 x S x S preprocessed images -> their features (B x 256 x S/16 x S/16 embeddings, and the
        family's finer maps)."""
        return self.family.encode(self.sam, batch)

    # ----- decoder side ------------------------------------------------------------------------------
    def _dense_pe(self, embedding: torch.Tensor, origin: tuple[int, int] | None) -> torch.Tensor:
        """The positional encoding under ``embedding``: the whole grid, or the window of the grid
        whose top-left token is ``origin`` (training on windows keeps every token's true position)."""
        pe = self._grid_pe()
        if origin is None:
            return pe
        (row, col), (height, width) = origin, embedding.shape[-2:]
        return pe[..., row : row + height, col : col + width]

    def _grid_pe(self) -> torch.Tensor:
        """``get_dense_pe()``, computed once: it rebuilds a G x G sin/cos grid on every call (~0.8 ms of a
        ~25 ms click at 1024 px) from a buffer that never changes but when loaded (which bumps its version).
        Kept per inference mode: an inference tensor cannot be saved for backward, and a normal one would
        be copied before every compiled click (``compiled_decoder._uniform``)."""
        source = self.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        version = 0 if source.is_inference() else source._version  # inference tensors keep no version
        key = (source.device, version, torch.is_inference_mode_enabled())
        pe = self._dense_pe_cache.get(key)
        if pe is None:
            with torch.no_grad():
                pe = self.sam.prompt_encoder.get_dense_pe()
            current = {k: v for k, v in self._dense_pe_cache.items() if k[:2] == key[:2]}
            self._dense_pe_cache = current | {key: pe}
        return pe

    def _decode(self, features: ImageFeatures, sparse: torch.Tensor, dense: torch.Tensor,
                multimask: bool = False, base: bool = False, origin: tuple[int, int] | None = None,
                run: DecoderRun | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        decoder = self.base_mask_decoder if base and self.base_mask_decoder is not None else self.sam.mask_decoder
        embedding = features.embedding
        image_pe = self._dense_pe(embedding, origin)
        dense = dense[..., : embedding.shape[-2], : embedding.shape[-1]]
        if run is not None:
            return run(decoder, features, image_pe, sparse, dense, multimask)
        return self.family.decode(decoder, features, image_pe, sparse, dense, multimask)

    def _no_mask_dense(self, count: int, embedding: torch.Tensor) -> torch.Tensor:
        weight = self.sam.prompt_encoder.no_mask_embed.weight
        return weight.reshape(1, -1, 1, 1).expand(count, -1, *embedding.shape[-2:])

    def class_logits(self, embedding: ImageFeatures | torch.Tensor, class_indices: list[int] | None = None,
                     origin: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Promptless masks for classes of one image.

        Args:
            embedding: the image's features (a bare 1 x 256 x G x G tensor for SAM 1).
            class_indices: indices into ``class_names`` (default all). With joint decoding every
                class is decoded together (classes see each other) and these are picked after.
            origin: when ``embedding`` is a window of the image's grid, its top-left (row, column).
        Returns:
            (K x 1 x 4G x 4G low-resolution mask logits, K x 1 predicted IoU).
        """
        features = ImageFeatures.of(embedding)
        if self.config.class_decoding == "joint":
            logits, iou = self._joint_class_logits(features, origin)
            if class_indices is None:
                return logits, iou
            return logits[class_indices], iou[class_indices]
        prompts = self.class_prompts if class_indices is None else self.class_prompts[class_indices]
        dense = self._no_mask_dense(prompts.shape[0], features.embedding)
        return self._decode(features, prompts, dense, origin=origin)

    def _joint_class_logits(self, features: ImageFeatures, origin: tuple[int, int] | None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every class in one pass of SAM's two-way transformer: the C x T class tokens follow SAM's
        IoU and mask tokens; the output of each class's first token drives the first mask
        hypernetwork and the IoU head, in place of SAM's own mask token."""
        decoder, embedding = self.sam.mask_decoder, features.embedding
        count, per_class, dim = self.class_prompts.shape
        own = self.family.output_tokens(decoder)
        tokens = torch.cat([own, self.class_prompts.reshape(count * per_class, dim)]).unsqueeze(0)
        src = embedding + self._no_mask_dense(1, embedding)
        _, channels, height, width = src.shape
        hs, src = decoder.transformer(src, self._dense_pe(embedding, origin), tokens)
        first = own.shape[0] + torch.arange(count, device=hs.device) * per_class
        class_out = hs[0, first]  # C x 256
        src = src.transpose(1, 2).reshape(1, channels, height, width)
        upscaled = self.family.upscale(decoder, src, features)
        hyper = decoder.output_hypernetworks_mlps[0](class_out)  # C x 32
        masks = hyper @ upscaled.flatten(2)[0]  # C x (4G * 4G)
        iou = decoder.iou_prediction_head(class_out)[:, :1]
        return masks.reshape(count, 1, *upscaled.shape[-2:]), iou

    def prompt_logits(self, embedding: ImageFeatures | torch.Tensor, coords: torch.Tensor | None,
                      labels: torch.Tensor | None, box: torch.Tensor | None,
                      class_indices: list[int | None] | None = None, multimask: bool = False,
                      base_decoder: bool = False, origin: tuple[int, int] | None = None,
                      run: DecoderRun | None = None, mask_input: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for point/box prompts on one image, optionally conditioned on class prompts.

        Args:
            embedding: the image's features (a bare 1 x 256 x G x G tensor for SAM 1).
            coords: B x N x 2 (x, y) in the model's input frame (after resize), or None.
            labels: B x N, 1 positive / 0 negative, or None.
            box: B x 4 (x0, y0, x1, y1) in the input frame, or None.
            class_indices: B entries; a class index adds that class's learned tokens to that prompt
                (None entries, or None for all, leave the prompt as SAM's own).
            base_decoder: answer with SAM's own decoder (and no class tokens) instead of the adapter's.
            origin: as in ``class_logits``; coordinates stay in the whole image's frame.
            run: calls the chosen decoder as ``run(decoder, features, image_pe, sparse, dense, multimask)``
                (a compiled one: ``training.inference.compiled_decoder``); None: ``family.decode``.
            mask_input: B x 1 x 4G x 4G low-resolution logits of the previous mask, fed back as a mask
                prompt (families with ``feeds_back_mask``), or None.
        Returns:
            (B x M x 4G x 4G logits, B x M IoU predictions); M is 3 with multimask else 1.
        """
        features = ImageFeatures.of(embedding)
        sparse, dense = self.family.prompts(self.sam, coords, labels, box, mask_input)
        if not base_decoder and class_indices is not None and any(i is not None for i in class_indices):
            if len(class_indices) != sparse.shape[0]:
                raise ValueError(f"{len(class_indices)} class indices for {sparse.shape[0]} prompts")
            # Rows without a class get zero tokens: attention still sees them, but they carry nothing.
            tokens = torch.stack([
                self.class_prompts[i] if i is not None else torch.zeros_like(self.class_prompts[0])
                for i in class_indices
            ])
            sparse = torch.cat([sparse, tokens.to(sparse.dtype)], dim=1)
        return self._decode(features, sparse, dense, multimask, base=base_decoder, origin=origin, run=run)

    def set_classes(self, class_names: list[str]) -> None:
        """Change the class list: known classes keep their prompts, new ones get fresh prompts."""
        _check_class_names(class_names)
        if list(class_names) == self.class_names:
            return
        generator = torch.Generator().manual_seed(len(class_names))
        fresh = torch.randn(len(class_names), *self.class_prompts.shape[1:], generator=generator)
        rows = [
            self.class_prompts.detach()[self.class_names.index(n)].cpu() if n in self.class_names else fresh[k]
            for k, n in enumerate(class_names)
        ]
        self.class_prompts = nn.Parameter(torch.stack(rows).to(self.device))
        self.class_names = list(class_names)

    def upscale(self, low_res: torch.Tensor, input_size: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
        """K x 1 x 4G x 4G logits -> K x out_h x out_w logits (padding removed)."""
        # Crop the padding at low resolution first: cheaper than upsampling the padded square.
        scale = low_res.shape[-1] / self.image_size
        crop_h = max(1, round(input_size[0] * scale))
        crop_w = max(1, round(input_size[1] * scale))
        cropped = low_res[..., :crop_h, :crop_w].float()
        return F.interpolate(cropped, out_size, mode="bilinear", align_corners=False)[:, 0]

    # ----- artifact ------------------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The tensors this adapter owns (what is saved), keyed by this module's state_dict names."""
        state = {"class_prompts": self.class_prompts}
        parts = {"sam.image_encoder.": self.config.encoder_tuning, "sam.mask_decoder.": self.config.decoder_tuning}
        norm_buffers = self._norm_buffer_names() if self.updates_norm_statistics else set()
        for name, tensor in self.state_dict(keep_vars=True).items():
            saved = any(name.startswith(p) and t.saves(name[len(p):]) for p, t in parts.items())
            if saved or name in norm_buffers:
                state[name] = tensor
        return {k: v.detach() for k, v in state.items()}

    def _norm_buffer_names(self) -> set[str]:
        names = set()
        for module_name, module in self.sam.image_encoder.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                names.update(f"sam.image_encoder.{module_name}.{b}" for b, _ in module.named_buffers())
        return names

    def to_bytes(self, metadata: dict | None = None) -> bytes:
        """Serialise the adapter (safetensors) with its identity and ``metadata`` in the header."""
        header = AdapterHeader(self.base, list(self.class_names), self.config, extra=dict(metadata or {}))
        return write_artifact(header, self.adapter_state())

    def load_adapter_state(self, tensors: dict[str, torch.Tensor]) -> None:
        own = self.adapter_state()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise AdapterMismatchError(
                f"adapter tensors do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for name, tensor in tensors.items():
            if own[name].shape != tensor.shape:
                raise AdapterMismatchError(
                    f"adapter tensor {name} has shape {tuple(tensor.shape)}, model has {tuple(own[name].shape)}"
                )
        self.load_state_dict(tensors, strict=False)
        # TinyViT caches attention biases on eval(); refresh them after new encoder weights.
        self.sam.image_encoder.train(self.sam.image_encoder.training)


    def apply_artifact(self, artifact: Artifact) -> None:
        """Swap in another adapter with the same AdapterConfig (class count may differ)."""
        header = artifact.header
        header.check_base(self.base)
        if header.config != self.config:
            raise AdapterMismatchError(f"adapter config {header.config} differs from this model's {self.config}")
        prompts = artifact.tensors["class_prompts"].to(self.device)
        self.class_prompts = nn.Parameter(prompts.clone(), requires_grad=True)
        self.class_names = list(header.class_names)
        self.load_adapter_state(artifact.tensors)

    def reset_to_base(self) -> None:
        """Make the model behave as the plain base model (keeps the class prompts)."""
        self.load_adapter_state({**self._base_state, "class_prompts": self.class_prompts.detach()})
