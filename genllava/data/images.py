"""Loading user images safely: every odd mode becomes plain RGB, every failure one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 64_000_000  # larger than any real photo; beyond it we refuse (decompression bombs)


class ImageError(ValueError):
    """An image that cannot be used; the message names it and says what to do."""


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode: EXIF rotation applied, alpha composited on white, 16-bit scaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit modes span 0..65535 whatever this picture holds; 32-bit "I" is often 8-bit data.
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array / peak * 255).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
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
