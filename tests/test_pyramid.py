"""Pyramid-Forwarding: geometry (Table 7), crop content and order, batched encoding, random disposal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adds.pyramid import Crop, Level, PyramidConfig, PyramidForwarding, num_crops, plan, top_level

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def _covered(level: Level) -> torch.Tensor:
    """How many crops cover each pixel of a level."""
    count = torch.zeros(level.height, level.width, dtype=torch.int64)
    for c in level.crops:
        count[c.top : c.top + c.size, c.left : c.left + c.size] += 1
    return count


def _check_inside(levels: list[Level]) -> None:
    for level in levels:
        per_axis = 2**level.index
        assert len(level.crops) == per_axis * per_axis
        assert len({c.top for c in level.crops}) == per_axis
        assert len({c.left for c in level.crops}) == per_axis
        for c in level.crops:
            assert c.level == level.index
            assert 0 <= c.top and c.top + c.size <= level.height
            assert 0 <= c.left and c.left + c.size <= level.width
        assert bool((_covered(level) > 0).all())  # nothing of the resized image is lost


# ----------------------------------------------------------------------------------------------------- geometry


def test_plan_1344_full_pyramid_table7():
    levels = plan(1344, 1344, 336)
    assert [lv.index for lv in levels] == [0, 1, 2]
    assert [len(lv.crops) for lv in levels] == [1, 4, 16]
    assert num_crops(levels) == 21
    assert levels == plan(1344, 1344, 336, levels=[0, 1, 2])
    assert [(lv.height, lv.width) for lv in levels] == [(336, 336), (672, 672), (1344, 1344)]
    top = levels[2]
    assert bool((_covered(top) == 1).all())  # exact tiling: no overlap, covers 1344 x 1344
    assert sorted({c.top for c in top.crops}) == [0, 336, 672, 1008]
    _check_inside(levels)


def test_plan_640_overlapping_top_level():
    levels = plan(640, 640, 336)
    assert [lv.index for lv in levels] == [0, 1]
    assert (levels[1].height, levels[1].width) == (640, 640)
    assert [(c.top, c.left) for c in levels[1].crops] == [(0, 0), (0, 304), (304, 0), (304, 304)]
    assert all(c.size == 336 for c in levels[1].crops)
    assert int(_covered(levels[1]).max()) == 4  # the crops overlap
    assert num_crops(levels) == 5
    _check_inside(levels)


def test_plan_single_level_when_image_matches_or_is_smaller():
    assert plan(224, 224, 224) == [Level(0, 224, 224, (Crop(0, 0, 0, 224),))]
    small = plan(100, 100, 224)
    assert small == [Level(0, 224, 224, (Crop(0, 0, 0, 224),))]  # up-sampled to the base size
    assert num_crops(plan(50, 224, 224)) == 1


def test_plan_non_square():
    height, width, base = 448, 1000, 224
    assert top_level(height, width, base) == 3  # 224 * 4 = 896 < 1000 <= 1792
    levels = plan(height, width, base)
    assert [lv.index for lv in levels] == [0, 1, 2, 3]
    assert [(lv.height, lv.width) for lv in levels] == [(224, 224), (448, 448), (896, 896), (896, 1000)]
    assert [len(lv.crops) for lv in levels] == [1, 4, 16, 64]
    _check_inside(levels)
    top = levels[3]
    lefts = sorted({c.left for c in top.crops})
    assert lefts[0] == 0 and lefts[-1] == 1000 - 224
    tops = sorted({c.top for c in top.crops})
    assert tops == [96 * j for j in range(8)]  # (896 - 224) / 7 = 96: evenly spaced


def test_top_level_keeps_own_size_when_larger_than_level_below():
    levels = plan(700, 500, 336)  # L = 2 (672 < 700 <= 1344)
    assert (levels[-1].height, levels[-1].width) == (700, 672)
    _check_inside(levels)


@pytest.mark.parametrize(
    ("size", "base", "expected"), [(224, 224, 0), (225, 224, 1), (640, 336, 1), (672, 336, 1), (1344, 336, 2)]
)
def test_top_level(size, base, expected):
    assert top_level(size, size, base) == expected


def test_plan_level_selection():
    top_only = plan(1344, 1344, 336, levels=(2,))
    assert [lv.index for lv in top_only] == [2] and num_crops(top_only) == 16
    down_only = plan(1344, 1344, 336, levels=(0,))
    assert num_crops(down_only) == 1 and (down_only[0].height, down_only[0].width) == (336, 336)


def test_plan_errors():
    with pytest.raises(ValueError, match=r"level 3.*1344x1344.*maximum level .*2"):
        plan(1344, 1344, 336, levels=(0, 3))
    with pytest.raises(ValueError, match="positive"):
        plan(0, 10, 224)
    with pytest.raises(ValueError, match="positive"):
        plan(10, 10, -1)
    with pytest.raises(ValueError, match="sorted"):
        plan(1344, 1344, 336, levels=(1, 0))
    with pytest.raises(ValueError, match="non-negative"):
        plan(1344, 1344, 336, levels=(-1,))


def test_config_validation():
    assert PyramidConfig(levels=[0, 2]).levels == (0, 2)
    for bad in [
        dict(levels=(0, 0)),
        dict(levels=(2, 1)),
        dict(levels=()),
        dict(dispose_ratio=1.0),
        dict(dispose_ratio=-0.1),
    ]:
        with pytest.raises(ValueError):
            PyramidConfig(**bad)


# ----------------------------------------------------------------------------------------------------- module


def _module(base: int = 8, **cfg) -> PyramidForwarding:
    return PyramidForwarding(base, MEAN, STD, PyramidConfig(**cfg)).eval()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def test_crop_content_matches_resized_normalised_image():
    torch.manual_seed(0)
    module = _module(8)
    images = torch.rand(2, 3, 20, 27)
    crops, n = module.crops(images)
    levels = plan(20, 27, 8)
    assert n == num_crops(levels) == 1 + 4 + 16
    assert crops.shape == (2 * n, 3, 8, 8)
    for b in range(2):
        k = 0
        for level in levels:
            resized = F.interpolate(
                images[b : b + 1], size=(level.height, level.width), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0, 1)[0]
            reference = _normalise(resized)
            for c in level.crops:
                expected = reference[:, c.top : c.top + 8, c.left : c.left + 8]
                torch.testing.assert_close(crops[b * n + k], expected)
                k += 1


def test_top_level_at_own_size_is_not_resampled():
    module = _module(8)
    images = torch.rand(1, 3, 16, 16)  # L = 1 and 16 == 8 * 2: the top level is the image itself
    crops, n = module.crops(images)
    assert n == 5
    torch.testing.assert_close(crops[1], _normalise(images[0, :, :8, :8]))
    torch.testing.assert_close(crops[4], _normalise(images[0, :, 8:, 8:]))


def test_level0_only_is_plain_resize():
    module = _module(8, levels=(0,))
    images = torch.rand(3, 3, 32, 32)
    crops, n = module.crops(images)
    assert n == 1
    expected = F.interpolate(images, size=(8, 8), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    torch.testing.assert_close(crops, torch.stack([_normalise(x) for x in expected]))


def _mean_colour_encoder(calls: list[int]):
    def encode(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.mean(dim=(2, 3)).unsqueeze(1)  # (N, 1, 3)

    return encode


def test_forward_orders_tokens_image_major_and_calls_encode_once():
    module = PyramidForwarding(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), PyramidConfig()).eval()
    batch = 3
    images = torch.stack([torch.full((3, 32, 32), b / 10) for b in range(batch)])  # image b is filled with b / 10
    calls: list[int] = []
    tokens = module(images, _mean_colour_encoder(calls))
    n = 1 + 4 + 16
    assert calls == [batch * n]
    assert tokens.shape == (batch, n, 3)
    for b in range(batch):
        torch.testing.assert_close(tokens[b], torch.full((n, 3), b / 10), atol=1e-5, rtol=0)


def test_forward_keeps_crop_order_within_image():
    module = PyramidForwarding(4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), PyramidConfig(levels=(1,))).eval()
    image = torch.zeros(2, 3, 8, 8)
    for q, (r, c) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        image[:, :, r : r + 4, c : c + 4] = q / 10  # quadrant q has value q / 10
    image[1] += 0.5
    tokens = module(image, lambda x: x.mean(dim=(2, 3)).unsqueeze(1))  # (B, 4, 3)
    expected = torch.tensor([0.0, 0.1, 0.2, 0.3])
    torch.testing.assert_close(tokens[0, :, 0], expected)
    torch.testing.assert_close(tokens[1, :, 0], expected + 0.5)


def test_forward_multi_token_encoder():
    module = _module(8)
    images = torch.rand(2, 3, 16, 16)

    def encode(x: torch.Tensor) -> torch.Tensor:  # 4 tokens of dim 6 per crop, crop-dependent
        return x.flatten(1)[:, :24].reshape(x.shape[0], 4, 6)

    crops, n = module.crops(images)
    tokens = module(images, encode)
    assert tokens.shape == (2, n * 4, 6)
    torch.testing.assert_close(tokens, encode(crops).reshape(2, n, 4, 6).reshape(2, n * 4, 6))
    torch.testing.assert_close(tokens[1, :4], encode(crops[n : n + 1])[0])


def test_forward_with_tiny_tower(tiny_towers):
    size = tiny_towers.image_size
    module = PyramidForwarding(size, tiny_towers.mean, tiny_towers.std).eval()
    images = torch.rand(2, 3, 2 * size, 2 * size)
    with torch.no_grad():
        tokens = module(images, tiny_towers.encode_image_tokens)
        single = tiny_towers.encode_image_tokens(module.crops(images[1:])[0])  # (5, T, D)
    t = single.shape[1]
    assert tokens.shape == (2, 5 * t, tiny_towers.token_dim)
    torch.testing.assert_close(tokens[1], single.reshape(5 * t, -1), atol=1e-5, rtol=1e-4)


def test_encode_output_is_checked():
    module = _module(8)
    with pytest.raises(ValueError, match="encode"):
        module(torch.rand(1, 3, 8, 8), lambda x: x.mean(dim=(2, 3)))  # (N, 3): no token axis


# ----------------------------------------------------------------------------------------------------- disposal


def _kept_positions(full: torch.Tensor, kept: torch.Tensor) -> list[int]:
    """Index in ``full`` (n, 3, S, S) of each crop of ``kept`` (n', 3, S, S), matched by exact equality."""
    positions = []
    for crop in kept:
        matches = [j for j in range(full.shape[0]) if torch.equal(full[j], crop)]
        assert len(matches) == 1
        positions.append(matches[0])
    return positions


def test_disposal_counts_and_keeps_level0():
    module = _module(4, dispose_ratio=0.5)
    images = torch.rand(4, 3, 16, 16)  # base 4: levels 0, 1, 2 = 1 + 4 + 16 crops, all distinct
    full, n_full = module.eval().crops(images)
    assert n_full == 21
    kept, n = module.train().crops(images, torch.Generator().manual_seed(1))
    assert n == 1 + (20 - 10)
    full, kept = full.view(4, n_full, 3, 4, 4), kept.view(4, n, 3, 4, 4)
    chosen = []
    for b in range(4):
        positions = _kept_positions(full[b], kept[b])
        assert positions[0] == 0  # the level-0 crop is always kept, first
        assert positions == sorted(set(positions))  # a subset of the crops, in crop order
        chosen.append(positions)
    assert any(chosen[b] != chosen[0] for b in range(1, 4))  # drawn per image


def test_disposal_is_deterministic_with_generator_and_off_in_eval():
    module = _module(4, dispose_ratio=0.3)
    images = torch.rand(2, 3, 16, 16)
    module.train()
    a, n = module.crops(images, torch.Generator().manual_seed(7))
    b, _ = module.crops(images, torch.Generator().manual_seed(7))
    assert n == 1 + 20 - 6
    torch.testing.assert_close(a, b)
    module.eval()
    _, n_eval = module.crops(images, torch.Generator().manual_seed(7))
    assert n_eval == 21


def test_disposal_without_level0_keeps_at_least_one():
    module = _module(4, levels=(1,), dispose_ratio=0.9).train()
    crops, n = module.crops(torch.rand(2, 3, 8, 8))
    assert n == 1 and crops.shape == (2, 3, 4, 4)


def test_disposal_forward_shapes():
    module = _module(4, dispose_ratio=0.5).train()
    calls: list[int] = []
    tokens = module(torch.rand(3, 3, 16, 16), _mean_colour_encoder(calls))
    assert calls == [3 * 11] and tokens.shape == (3, 11, 3)


# ----------------------------------------------------------------------------------------------------- inputs


def test_uint8_input():
    module = _module(8)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    crops_u8, n = module.crops(images)
    crops_f, _ = module.crops(images.float() / 255)
    assert crops_u8.dtype == torch.float32
    torch.testing.assert_close(crops_u8, crops_f)


def test_half_precision_input_keeps_dtype():
    module = _module(8)
    crops, _ = module.crops(torch.rand(1, 3, 12, 12).half())
    assert crops.dtype == torch.float16


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 1, 16, 16), (1, 4, 16, 16), (2, 3, 16), (0, 3, 16, 16)])
def test_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)|3 \(RGB\) channels|at least one") as err:
        _module(8).crops(torch.rand(shape))
    assert str(tuple(shape)) in str(err.value)


def test_bad_dtype_and_module_args():
    with pytest.raises(ValueError, match="dtype"):
        _module(8).crops(torch.ones(1, 3, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="level 2"):
        _module(8, levels=(0, 2)).crops(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError):
        PyramidForwarding(0, MEAN, STD)
    with pytest.raises(ValueError):
        PyramidForwarding(8, (0.5, 0.5), STD)
    with pytest.raises(ValueError):
        PyramidForwarding(8, MEAN, (0.2, 0.0, 0.3))


def test_buffers_not_persistent():
    module = _module(8)
    assert "mean" not in module.state_dict() and "std" not in module.state_dict()
    assert module.mean.shape == (1, 3, 1, 1)
