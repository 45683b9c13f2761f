"""What an image encoder hands the mask decoder: one embedding, and for some families finer maps.

SAM 1 gives one B x 256 x G x G embedding (G = image size / 16). SAM 2 adds two high-resolution maps
its decoder mixes into the mask upsampling: B x 32 x 4G x 4G and B x 64 x 2G x 2G. Everything that
keeps, moves, batches or crops features (the store, the trainer's windows) goes through this type,
so it never needs to know the family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageFeatures:
    """``embedding``: B x C x G x G. ``high_res``: finer maps, each B x C_i x kG x kG (k an integer)."""

    embedding: torch.Tensor
    high_res: tuple[torch.Tensor, ...] = ()

    @classmethod
    def of(cls, value: ImageFeatures | torch.Tensor) -> ImageFeatures:
        """Features as given, or a bare embedding tensor (SAM 1) as features."""
        return value if isinstance(value, ImageFeatures) else cls(value)

    def tensors(self) -> list[torch.Tensor]:
        return [self.embedding, *self.high_res]

    @classmethod
    def from_tensors(cls, tensors: list[torch.Tensor]) -> ImageFeatures:
        return cls(tensors[0], tuple(tensors[1:]))

    def map(self, fn) -> ImageFeatures:
        """The same features with ``fn`` applied to every tensor."""
        return ImageFeatures.from_tensors([fn(t) for t in self.tensors()])

    def to(self, *args, **kwargs) -> ImageFeatures:
        return self.map(lambda t: t.to(*args, **kwargs))

    def float(self) -> ImageFeatures:
        return self.map(lambda t: t.float())

    def item(self, index: int) -> ImageFeatures:
        """Image ``index`` of the batch, keeping a batch dimension of 1."""
        return self.map(lambda t: t[index : index + 1])

    @staticmethod
    def cat(items: list[ImageFeatures]) -> ImageFeatures:
        columns = zip(*(f.tensors() for f in items), strict=True)
        return ImageFeatures.from_tensors([torch.cat(list(c)) for c in columns])

    def window(self, row: int, col: int, tokens: int) -> ImageFeatures:
        """A ``tokens`` x ``tokens`` window of the embedding grid from token (row, col), and the same
        area of each finer map."""
        grid = self.embedding.shape[-1]

        def crop(t: torch.Tensor) -> torch.Tensor:
            k = t.shape[-1] // grid
            return t[..., row * k : (row + tokens) * k, col * k : (col + tokens) * k]

        return self.map(crop)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.embedding.shape[-2:])

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.tensors())
