"""The tagger's decode (adds.tagger.decode): the same pixels as load_image + SquashResize, bit for bit, for every
mode; errors are load_image's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adds.data.base import SquashResize
from adds.data.images import ImageLoadError, image_to_tensor, load_image
from adds.tagger.decode import pixels_of, squash_image


def _photo(tmp_path, mode: str, size=(90, 60), name="a.png"):
    array = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    image = Image.fromarray(array, "RGBA")
    image = image.convert(mode) if mode != "RGBA" else image
    path = tmp_path / name
    image.save(path)
    return path


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_pixels_are_load_images_bit_for_bit(tmp_path, mode):
    path = _photo(tmp_path, mode, name="a.tiff" if mode == "CMYK" else "a.png")
    with Image.open(path) as image:
        image.load()
        assert torch.equal(pixels_of(image), image_to_tensor(image))
    for size in (32, 64, 200):  # shrink and enlarge
        pixels, original = squash_image(path, size)
        assert original == (60, 90) and pixels.shape == (3, size, size) and pixels.dtype == torch.float32
        assert torch.equal(pixels, SquashResize(size)(load_image(path)))


def test_errors_are_load_image_errors(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        squash_image(broken, 32)
    with pytest.raises(ImageLoadError, match="file not found"):
        squash_image(tmp_path / "missing.jpg", 32)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_fast_decode_is_within_8bit_rounding_of_the_exact_path(tmp_path, mode):
    path = _photo(tmp_path, mode, size=(300, 200), name="big.jpg")
    for size in (32, 100, 200):  # shrinking: the fast path
        fast, original = squash_image(path, size, fast=True)
        exact = squash_image(path, size)[0]
        assert original == (200, 300) and fast.shape == (3, size, size) and fast.dtype == torch.float32
        assert fast.is_contiguous() and 0.0 <= float(fast.min()) and float(fast.max()) <= 1.0
        assert not torch.equal(fast, exact)
        assert (fast - exact).abs().max() <= 2.5 / 255 and (fast - exact).abs().mean() <= 0.5 / 255
    assert torch.equal(squash_image(path, 224, fast=True)[0], squash_image(path, 224)[0])  # enlarging: exact


def test_fast_decode_keeps_the_exact_path_for_other_modes(tmp_path):
    path = _photo(tmp_path, "RGBA")
    assert torch.equal(squash_image(path, 32, fast=True)[0], squash_image(path, 32)[0])


def test_tagger_fast_decode_scores_close_to_exact(tmp_path, tiny_towers):
    from adds.tagger import CLIPBaseline, Tagger, TaggerConfig

    path = _photo(tmp_path, "RGB", size=(120, 90), name="c.jpg")  # larger than the tiny tower's 32 px
    labels = ["red", "blue", "green"]
    exact = Tagger(CLIPBaseline(tiny_towers), TaggerConfig(threshold=None, label_cache=False), labels=labels)
    fast = Tagger(CLIPBaseline(tiny_towers), TaggerConfig(threshold=None, label_cache=False, fast_decode=True),
                  labels=labels)
    assert torch.allclose(fast.scores([path]), exact.scores([path]), atol=5e-3)
    assert not torch.equal(fast.prepare(path).pixels, exact.prepare(path).pixels)
