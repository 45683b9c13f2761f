"""Clicks on the same image share the part of SAM's decoder that sees only the image.

In the first block of SAM's two-way transformer three projections read nothing but the image tokens
(the embedding plus the "no mask" dense prompt, and the positional encoding): the keys and values of
the token-to-image attention and the queries of the image-to-token attention. They are three
4096 x 256 x 128 products at 1024 px, about a fifth of the decoder's arithmetic, and they give the
same answer for every click on an image. With ``decoding(embedding)`` around a decode, each of them
keeps its last output and hands it back while the same embedding (the same tensor object) is decoded
again with the same shape. Only for a frozen decoder (SAM's own): a trained one's weights change; and
only for decodes without a mask prompt (a fed-back mask changes the dense prompt, so the image tokens).
Which projections read only the image is the family's answer (``Family.image_only_projections``).
Callers serialise decodes on a model (the backend's model lock; one thread in a training job).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import MethodType

import torch
from torch import nn

from training.model.base_models import BASE_MODELS

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


Projections = Callable[[nn.Module], list[nn.Linear]]
# Every registered family's decoder so far is SAM's two-way transformer: the default answer.
_DEFAULT_PROJECTIONS: Projections = BASE_MODELS["vit_t"].family.image_only_projections


def cache_image_projections(decoder: nn.Module, projections: Projections = _DEFAULT_PROJECTIONS) -> None:
    """Make the first block's image-only projections of a frozen ``decoder`` (``projections(decoder)``,
    the family's) reuse their output within ``decoding`` (the modules and their state dict are unchanged)."""
    if any(p.requires_grad for p in decoder.parameters()):
        raise ValueError("only a frozen decoder's projections can be reused between decodes")
    for linear in projections(decoder):
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


def plain_copy(decoder: nn.Module, projections: Projections = _DEFAULT_PROJECTIONS) -> nn.Module:
    """A deep copy of ``decoder`` without the reuse above: for ``torch.compile``, which would trace the
    context-variable lookup and the per-module state (the compiled decoder is fast enough without it)."""
    twin = copy.deepcopy(decoder)
    for linear in projections(twin):
        linear.__dict__.pop("forward", None)
        linear.__dict__.pop("_samloop_cached", None)
    return twin
