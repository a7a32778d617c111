"""Loading user images safely: every odd mode becomes plain RGB, every failure one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # larger than any real photo; beyond it we refuse (decompression bombs)


class ImageError(ValueError):
    """An image that cannot be used; the message names it and says what to do."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode: the project's one image conversion (records decoder, vision processor,
    decoder targets). EXIF orientation applied; transparency (alpha channels, palette or single-colour
    `transparency`) composited on white, never on black; 16-bit scaled to 8; CMYK, YCbCr, LAB, 1-bit
    and float modes converted."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: keep the pixels as stored
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit modes span 0..65535 whatever this picture holds; 32-bit "I" is often 8-bit data.
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255).clip(0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if array.size and array.max() <= 1.0 else 255.0
        image = Image.fromarray((array / peak * 255).clip(0, 255).astype(np.uint8), "L")
    if image.mode in ("P", "L", "RGB", "1") and "transparency" in image.info:
        image = image.convert("RGBA")  # palette or colour-key transparency becomes an alpha channel
    elif image.mode == "P":
        image = image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode == "LAB":
        from PIL import ImageCms

        return ImageCms.applyTransform(image, ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"))
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image {path} does not exist; check the path")
    if path.is_dir():
        raise ImageError(f"image {path} is a directory; give the path of an image file")
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(f"image {path} is {image.width}x{image.height}, over {MAX_PIXELS} pixels; downscale it")
            image.load()
            return to_rgb(image)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"image {path} cannot be read ({type(err).__name__}); is it a valid image file?") from None
