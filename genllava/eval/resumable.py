"""Images written as they are made, so a killed run resumes where it stopped."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image


def save_atomically(image: Image.Image, path: Path) -> None:
    """PNG written to a temporary name and renamed: a kill never leaves a half-written image that a
    resumed run would take as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
