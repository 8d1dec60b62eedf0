"""Image loading: every PIL mode to RGB [0, 1], EXIF orientation, and one clear error per failure."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import adds.data.images as images_module
from adds.data.images import ImageLoadError, as_image_batch, image_to_tensor, load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _check(t: torch.Tensor, height: int, width: int) -> None:
    assert t.dtype == torch.float32 and t.shape == (3, height, width)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0


# ------------------------------------------------------------------------------------------------------- modes


def test_rgb_png_exact(tmp_path: Path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(arr).save(path)
    t = load_image(path)
    _check(t, 5, 7)
    torch.testing.assert_close(t, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(load_image(str(path)), t)


def test_rgb_jpeg(tmp_path: Path):
    path = tmp_path / "rgb.jpg"
    Image.new("RGB", (16, 8), (200, 100, 50)).save(path, quality=95)
    t = load_image(path)
    _check(t, 8, 16)
    torch.testing.assert_close(t.mean(dim=(1, 2)), torch.tensor([200, 100, 50]) / 255, atol=0.02, rtol=0)


def test_grayscale_is_replicated(tmp_path: Path):
    path = tmp_path / "gray.png"
    Image.new("L", (4, 3), 128).save(path)
    t = load_image(path)
    _check(t, 3, 4)
    assert torch.all(t == 128 / 255)


def test_one_bit(tmp_path: Path):
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    path = tmp_path / "bits.png"
    img.save(path)
    t = load_image(path)
    _check(t, 2, 4)
    assert torch.all(t[:, 0, 1] == 1.0) and float(t.sum()) == 3.0


def test_palette_with_transparency_on_white(tmp_path: Path):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.putpixel((1, 0), 1)  # red; index 0 (black) is transparent
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    t = load_image(path)
    _check(t, 1, 2)
    torch.testing.assert_close(t[:, 0, 0], torch.ones(3))  # transparent -> white, not black
    torch.testing.assert_close(t[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))


def test_rgba_composited_on_white(tmp_path: Path):
    img = Image.new("RGBA", (3, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    img.putpixel((2, 0), (0, 0, 0, 51))  # 20 % black
    path = tmp_path / "rgba.png"
    img.save(path)
    t = load_image(path)
    _check(t, 1, 3)
    torch.testing.assert_close(t[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(t[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(t[:, 0, 2], torch.full((3,), 0.8))


def test_la_composited_on_white():
    img = Image.new("LA", (2, 1))
    img.putpixel((0, 0), (0, 0))
    img.putpixel((1, 0), (0, 255))
    t = load_image(img)
    torch.testing.assert_close(t[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(t[:, 0, 1], torch.zeros(3))


def test_cmyk_jpeg(tmp_path: Path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)  # cyan 0, magenta + yellow full = red
    assert Image.open(path).mode == "CMYK"
    t = load_image(path)
    _check(t, 8, 8)
    torch.testing.assert_close(t.mean(dim=(1, 2)), torch.tensor([1.0, 0.0, 0.0]), atol=0.03, rtol=0)


def test_sixteen_bit_png_not_clipped(tmp_path: Path):
    img = Image.new("I;16", (3, 1))
    img.putpixel((0, 0), 65535)
    img.putpixel((1, 0), 32768)
    img.putpixel((2, 0), 255)
    path = tmp_path / "deep.png"
    img.save(path)
    t = load_image(path)
    _check(t, 1, 3)
    torch.testing.assert_close(t[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(t[:, 0, 1], torch.full((3,), 32768 / 65535))
    assert float(t[0, 0, 2]) < 0.01  # 255 of 65535 is dark, not white


def test_int32_and_float_modes():
    i32 = Image.fromarray(np.array([[0, 32768, 65535, 70000]], dtype=np.int32))
    assert i32.mode == "I"
    torch.testing.assert_close(image_to_tensor(i32)[0, 0], torch.tensor([0.0, 32768 / 65535, 1.0, 1.0]))
    f = Image.fromarray(np.array([[0.0, 127.5, 255.0, 400.0, np.nan]], dtype=np.float32))
    assert f.mode == "F"
    t = load_image(f)
    _check(t, 1, 5)
    torch.testing.assert_close(t[1, 0], torch.tensor([0.0, 0.5, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "LAB", "RGBX", "CMYK"])
def test_other_modes_via_pil_convert(mode: str):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8))
    img = Image.new(mode, (5, 4)) if mode == "LAB" else rgb.convert(mode)
    expected = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    t = load_image(img)
    _check(t, 4, 5)
    torch.testing.assert_close(t, expected)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_applied(tmp_path: Path, orientation: int):
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated{orientation}.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    t = load_image(path)
    _check(t, 40, 20)  # height and width swapped
    top, bottom = t[:, :5].mean(dim=(1, 2)), t[:, -5:].mean(dim=(1, 2))
    # 6: rotate 90 degrees clockwise for display (left half goes on top); 8: counter-clockwise (right half on top)
    first, second = (top, bottom) if orientation == 6 else (bottom, top)
    assert first[0] > 0.9 and first[2] < 0.1  # red
    assert second[2] > 0.9 and second[0] < 0.1  # blue


def test_pil_image_source_is_not_closed(tmp_path: Path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 2), (10, 20, 30)).save(path)
    with Image.open(path) as img:
        t = load_image(img)
        assert img.size == (3, 2)  # still usable
    _check(t, 2, 3)


# ------------------------------------------------------------------------------------------------------- errors


def _expect_error(path: Path, reason: str) -> ImageLoadError:
    with pytest.raises(ImageLoadError, match=reason) as err:
        load_image(path)
    assert str(path) in str(err.value)
    assert err.value.path == str(path)
    return err.value


def test_missing_file(tmp_path: Path):
    _expect_error(tmp_path / "nope.jpg", "not found")


def test_directory(tmp_path: Path):
    _expect_error(tmp_path, "directory")


def test_zero_byte_file(tmp_path: Path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _expect_error(path, "zero-byte")


def test_text_file_named_jpg(tmp_path: Path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 10)
    _expect_error(path, "not an image")


def test_truncated_jpeg(tmp_path: Path):
    full = tmp_path / "full.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(full, quality=95)
    data = full.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png(tmp_path: Path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "truncated or corrupt")


def test_decompression_bomb_module_limit(tmp_path: Path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 399)
    err = _expect_error(path, "decompression bomb")
    assert "400" in str(err) and "399" in str(err)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 400)
    _check(load_image(path), 20, 20)


@pytest.mark.parametrize("pil_limit", [300, 100])  # warning zone (1x-2x the limit) and PIL's own error (> 2x)
def test_decompression_bomb_pil_limit(tmp_path: Path, monkeypatch, pil_limit: int):
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(path)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    _expect_error(path, "decompression bomb")


def test_default_limit_is_pils_default():
    assert images_module.MAX_IMAGE_PIXELS == 89_478_485


def test_error_is_value_error_and_picklable():
    err = ImageLoadError("/x/y.jpg", "zero-byte file")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))


def test_bad_source_type():
    with pytest.raises(TypeError):
        load_image(b"\x89PNG")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------- batches


def test_as_image_batch_shapes_and_dtypes():
    single = torch.rand(3, 5, 6)
    out = as_image_batch(single)
    assert out.shape == (1, 3, 5, 6) and torch.equal(out[0], single)
    batch = torch.rand(2, 3, 5, 6)
    assert as_image_batch(batch) is batch
    gray = torch.rand(2, 1, 5, 6)
    out = as_image_batch(gray)
    assert out.shape == (2, 3, 5, 6) and torch.equal(out[:, 2], gray[:, 0])
    assert as_image_batch(torch.rand(1, 5, 6)).shape == (1, 3, 5, 6)
    u8 = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    out = as_image_batch(u8)
    assert out.dtype == torch.float32 and torch.equal(out[0, :, 0], torch.tensor([[0.0, 1.0]] * 3))


@pytest.mark.parametrize("shape", [(4, 5, 6), (2, 4, 5, 6), (5, 6), (1, 2, 3, 5, 6), (2, 2, 5, 6)])
def test_as_image_batch_rejects_shapes(shape):
    with pytest.raises(ValueError, match="shape") as err:
        as_image_batch(torch.rand(shape))
    assert str(tuple(shape)) in str(err.value)


def test_as_image_batch_rejects_dtype_and_type():
    with pytest.raises(ValueError, match="dtype"):
        as_image_batch(torch.ones(1, 3, 2, 2, dtype=torch.int64))
    with pytest.raises(TypeError):
        as_image_batch(np.zeros((3, 2, 2)))  # type: ignore[arg-type]


def test_loaded_image_feeds_as_image_batch(tmp_path: Path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (6, 4), (255, 0, 0)).save(path)
    batch = as_image_batch(load_image(path))
    assert batch.shape == (1, 3, 4, 6)
