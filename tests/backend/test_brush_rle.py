"""backend.regions.encode_brush is byte-identical to the SDK's mask2rle (the format LS decodes)."""

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from backend.regions import encode_brush


def sdk(mask: np.ndarray) -> list[int]:
    return mask2rle(np.where(mask, np.uint8(255), np.uint8(0)))


def random_masks(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = []
    for k in range(count):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        density = rng.random()
        if k % 2:  # blocky: runs of every length class
            cells = rng.random((h // 6 + 1, w // 6 + 1)) < density
            block = np.ones((int(rng.integers(1, 30)), int(rng.integers(1, 30))), bool)
            masks.append(np.kron(cells, block)[:h, :w])
        else:
            masks.append(rng.random((h, w)) < density)
    return masks


@pytest.mark.parametrize("mask", random_masks(120, seed=7), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_matches_the_sdk_on_random_masks(mask):
    assert encode_brush(mask) == sdk(mask)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (8, 8), (300, 400), (1024, 1024)])
@pytest.mark.parametrize("fill", [False, True])
def test_matches_the_sdk_on_uniform_masks_including_runs_longer_than_2_to_16(shape, fill):
    mask = np.full(shape, fill)
    assert encode_brush(mask) == sdk(mask)


def test_matches_the_sdk_on_long_runs_with_single_pixel_breaks():
    mask = np.ones((700, 300), bool)
    mask[350, 7] = False
    mask[:, 299] = False
    assert encode_brush(mask) == sdk(mask)


def blob(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return (yy - height / 2) ** 2 / (height / 3 + 1) ** 2 + (xx - width / 3) ** 2 / (width / 4 + 1) ** 2 < 1


def speckled(height: int, width: int, density: float = 0.1) -> np.ndarray:
    return blob(height, width) ^ (np.random.default_rng(height * width).random((height, width)) < density)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (1023, 1025)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["speckled", "noise", "blob", "empty", "full"])
def test_matches_the_sdk_on_masks_of_odd_sizes(kind, shape):
    masks = {"speckled": lambda: speckled(*shape), "noise": lambda: speckled(*shape, density=0.5),
             "blob": lambda: blob(*shape), "empty": lambda: np.zeros(shape, bool), "full": lambda: np.ones(shape, bool)}
    mask = masks[kind]()
    assert encode_brush(mask) == sdk(mask)


# The SDK cuts a run into 2**16-byte pieces (2**14 pixels) and writes every piece with the 16-bit field, the
# short last one too: runs of 2**14 * k + r pixels with r <= 64 once came out with a narrower last field.
@pytest.mark.parametrize("pieces", [1, 2, 3])
@pytest.mark.parametrize("remainder", [0, 1, 2, 3, 4, 5, 16, 17, 63, 64, 65, 1000])
@pytest.mark.parametrize("fill", [False, True])
def test_matches_the_sdk_on_runs_just_over_2_to_16_bytes(pieces, remainder, fill):
    mask = np.full((2**14 * pieces + remainder, 1), fill)
    mask[-1] = not fill  # a short run after the long one
    assert encode_brush(mask) == sdk(mask)
    assert encode_brush(mask[:-1]) == sdk(mask[:-1])


def test_long_runs_between_speckle_match_the_sdk():
    mask = speckled(600, 700)
    mask[100:130] = False  # a 21000-pixel run: split, then short runs again
    mask[400:424, :] = True
    assert encode_brush(mask) == sdk(mask)


def test_accepts_uint8_masks_as_bool():
    mask = (np.arange(64).reshape(8, 8) % 3 == 0).astype(np.uint8) * 7
    assert encode_brush(mask) == sdk(mask > 0)
