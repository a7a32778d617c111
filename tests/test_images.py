"""Loading user images: every odd mode becomes RGB with the right content; every failure is one
ImageError line that names the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from genllava.data import images as images_module
from genllava.data.images import ImageError, load_image, to_rgb

RED = (220, 40, 40)


def load_saved(image: Image.Image, path, **save_kwargs) -> Image.Image:
    image.save(path, **save_kwargs)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    return loaded


def test_rgba_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (0, 0, 0, 0))  # transparent black
    rgba.paste((*RED, 255), (0, 0, 10, 10))  # opaque red left half
    rgba.paste((0, 0, 255, 128), (10, 0, 20, 5))  # half-transparent blue, top right
    out = load_saved(rgba, tmp_path / "a.png")
    assert out.size == (20, 10)
    assert out.getpixel((2, 2)) == RED
    assert out.getpixel((15, 8)) == (255, 255, 255)  # transparent -> white, not black
    r, g, b = out.getpixel((15, 2))
    assert abs(r - 127) <= 2 and abs(g - 127) <= 2 and b == 255  # 50 % blue over white


def test_palette_image_with_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, *RED, 10, 200, 30] + [0] * (256 * 3 - 9))
    palette.paste(1, (0, 0, 4, 8))
    palette.paste(2, (4, 0, 8, 4))
    palette.info["transparency"] = 0  # index 0 (black) is transparent
    out = load_saved(palette, tmp_path / "p.png", transparency=0)
    assert out.getpixel((1, 1)) == RED
    assert out.getpixel((6, 1)) == (10, 200, 30)
    assert out.getpixel((6, 6)) == (255, 255, 255)


def test_palette_image_without_transparency(tmp_path):
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 12, 34, 56] + [0] * (256 * 3 - 6))
    out = load_saved(palette, tmp_path / "p.gif")
    assert out.getpixel((0, 0)) == (12, 34, 56)


def test_16_bit_grayscale_is_scaled_to_8_bit(tmp_path):
    array = np.zeros((4, 4), dtype=np.uint16)
    array[0, :] = 65535
    array[1, :] = 32768
    array[2, :] = 1000
    image = Image.fromarray(array)  # uint16 -> I;16
    assert image.mode == "I;16"
    out = load_saved(image, tmp_path / "deep.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert abs(out.getpixel((0, 1))[0] - 127) <= 1
    assert out.getpixel((0, 2))[0] in (3, 4)
    assert out.getpixel((0, 3)) == (0, 0, 0)
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)  # in memory as well as from disk


def test_grayscale_and_bilevel_and_cmyk(tmp_path):
    gray = Image.new("L", (5, 5), 100)
    assert load_saved(gray, tmp_path / "l.png").getpixel((2, 2)) == (100, 100, 100)
    la = Image.new("LA", (5, 5), (100, 0))
    assert load_saved(la, tmp_path / "la.png").getpixel((2, 2)) == (255, 255, 255)
    bilevel = Image.new("1", (5, 5), 1)
    assert load_saved(bilevel, tmp_path / "one.png").getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = load_saved(cmyk, tmp_path / "c.jpg", quality=95).getpixel((4, 4))
    assert r > 200 and g < 50 and b < 50


def test_exif_rotated_jpeg_is_upright(tmp_path):
    stored = Image.new("RGB", (60, 20), (0, 0, 255))  # stored landscape: red left, blue right
    stored.paste(RED, (0, 0, 30, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:
        assert raw.size == (60, 20)
    out = load_image(path)
    assert out.size == (20, 60)  # width and height swapped
    # rotating clockwise puts the stored left (red) half on top
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 55))
    assert top[0] > 180 and top[2] < 90
    assert bottom[2] > 180 and bottom[0] < 90


def test_real_photographs_load(photos):
    for path in photos:
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (512, 512)
        assert np.asarray(image).std() > 10  # real content, not a blank


def _assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert isinstance(err.value, ValueError)  # the CLI treats it as a user mistake


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line_naming(err, path)
    assert "does not exist" in str(err.value)


def test_directory(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image(tmp_path)
    _assert_one_line_naming(err, tmp_path)
    assert "directory" in str(err.value)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a JPEG\n" * 10)
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line_naming(err, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line_naming(err, path)


def test_truncated_photograph(tmp_path, photos):
    data = open(photos[0], "rb").read()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line_naming(err, path)


def test_truncated_png(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    data = full.read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line_naming(err, path)


def test_refuses_huge_images(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(images_module, "MAX_PIXELS", 1000)
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line_naming(err, path)
    assert "40x40" in str(err.value)
