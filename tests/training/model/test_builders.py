import pytest
import torch

from training.model.base_models import BASE_MODELS, build_sam, check_image_size


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="sam2.1_hiera_t, vit_b, vit_h, vit_l, vit_t"):
        build_sam("vit_x", 256)


@pytest.mark.parametrize("size", [0, 100, 250, 1000.0])
def test_bad_image_size_is_refused(size):
    with pytest.raises(ValueError, match="multiple of 16"):
        check_image_size(size)


def test_registry_has_every_sam_variant():
    assert set(BASE_MODELS) == {"vit_t", "vit_b", "vit_l", "vit_h", "sam2.1_hiera_t", "sam2.1_hiera_s",
                                "sam2.1_hiera_b+", "sam2.1_hiera_l"}


@pytest.mark.parametrize(("model_type", "size"), [("vit_t", 256), ("vit_t", 128), ("vit_b", 128)])
def test_shapes_and_dtypes(model_type, size):
    sam = build_sam(model_type, size)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        embeddings = sam.image_encoder(images)
        grid = size // 16
        assert embeddings.shape == (2, 256, grid, grid)
        assert embeddings.dtype == torch.float32
        sparse, dense = sam.prompt_encoder(points=(torch.tensor([[[10.0, 20.0]]]), torch.tensor([[1]])),
                                           boxes=None, masks=None)
        masks, iou = sam.mask_decoder(embeddings[:1], sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    assert masks.shape == (1, 3, 4 * grid, 4 * grid)
    assert iou.shape == (1, 3)


def test_random_initialisation_is_the_same_in_every_process():
    a, b = build_sam("vit_t", 128), build_sam("vit_t", 128)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_1024_checkpoint_loads_at_a_smaller_size():
    full = build_sam("vit_b", 1024)
    with torch.no_grad():
        full.image_encoder.pos_embed.normal_()
    small = build_sam("vit_b", 256, state_dict=full.state_dict())
    assert small.image_encoder.pos_embed.shape == (1, 16, 16, 768)
    # A smooth resize keeps the table's overall scale.
    assert small.image_encoder.pos_embed.std() > 0.2
    # Global-attention blocks' relative position tables follow the grid (2G - 1 rows).
    assert small.image_encoder.blocks[2].attn.rel_pos_h.shape[0] == 31
    assert torch.equal(small.mask_decoder.iou_token.weight, full.mask_decoder.iou_token.weight)
