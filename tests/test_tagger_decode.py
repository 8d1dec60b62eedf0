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
