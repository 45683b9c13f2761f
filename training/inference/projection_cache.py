"""Clicks on the same image share the part of SAM's decoder that sees only the image.

In the first block of SAM's two-way transformer three projections read nothing but the image tokens
(the embedding plus the "no mask" dense prompt, and the positional encoding): the keys and values of
the token-to-image attention and the queries of the image-to-token attention. They are three
4096 x 256 x 128 products at 1024 px, about a fifth of the decoder's arithmetic, and they give the
same answer for every click on an image. With ``decoding(embedding)`` around a decode, each of them
keeps its last output and hands it back while the same embedding (the same tensor object) is decoded
again with the same shape. Only for a frozen decoder (SAM's own): a trained one's weights change.
Callers serialise decodes on a model (the backend's model lock; one thread in a training job).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import MethodType

import torch
from segment_anything.modeling.mask_decoder import MaskDecoder
from torch import nn

__all__ = ["cache_image_projections", "decoding", "plain_copy"]

_image: ContextVar[torch.Tensor | None] = ContextVar("samloop_decoded_image", default=None)


@contextmanager
def decoding(embedding: torch.Tensor) -> Iterator[None]:
    """Decodes inside this block are of ``embedding``: image-only projections may be reused."""
    token = _image.set(embedding)
    try:
        yield
    finally:
        _image.reset(token)


def _image_only_projections(decoder: MaskDecoder) -> list[nn.Linear]:
    first = decoder.transformer.layers[0]
    return [first.cross_attn_token_to_image.k_proj, first.cross_attn_token_to_image.v_proj,
            first.cross_attn_image_to_token.q_proj]


def cache_image_projections(decoder: MaskDecoder) -> None:
    """Make the first block's image-only projections of a frozen ``decoder`` reuse their output
    within ``decoding`` (the modules and their state dict are unchanged)."""
    if any(p.requires_grad for p in decoder.parameters()):
        raise ValueError("only a frozen decoder's projections can be reused between decodes")
    for linear in _image_only_projections(decoder):
        if getattr(linear, "_samloop_cached", False):
            continue
        plain = linear.forward
        state: dict = {"image": None, "out": None}

        def forward(self: nn.Linear, x: torch.Tensor, plain=plain, state=state) -> torch.Tensor:
            image = _image.get()
            if image is None:
                return plain(x)
            kept = state["image"]() if state["image"] is not None else None
            if kept is image and state["out"].shape[:-1] == x.shape[:-1]:
                return state["out"]
            out = plain(x)
            state["image"], state["out"] = weakref.ref(image), out
            return out

        linear.forward = MethodType(forward, linear)
        linear._samloop_cached = True


def plain_copy(decoder: MaskDecoder) -> MaskDecoder:
    """A deep copy of ``decoder`` without the reuse above: for ``torch.compile``, which would trace the
    context-variable lookup and the per-module state (the compiled decoder is fast enough without it)."""
    twin = copy.deepcopy(decoder)
    for linear in _image_only_projections(twin):
        linear.__dict__.pop("forward", None)
        linear.__dict__.pop("_samloop_cached", None)
    return twin
