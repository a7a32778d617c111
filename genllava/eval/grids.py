"""Image grids a person can look at: each row a caption and its images, upscaled, on white."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

CELL = 96
LABEL_LINES = 6


def save_grid(rows: list[tuple[str, list[Image.Image | None]]], path: str | Path, columns: list[str] | None = None) -> Path:
    width = max(len(images) for _, images in rows)
    label_width, header = 300, 18 if columns else 0
    grid = Image.new("RGB", (label_width + width * (CELL + 4), header + len(rows) * (CELL + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns or []):
        draw.text((label_width + c * (CELL + 4) + 2, 2), name, fill="black")
    for r, (label, images) in enumerate(rows):
        y = header + r * (CELL + 4)
        lines = textwrap.wrap(label, 46)[:LABEL_LINES]  # whole prompts, not cut mid-word
        for i, line in enumerate(lines):
            draw.text((4, y + CELL // 2 - 6 * len(lines) + 12 * i), line, fill="black")
        for c, image in enumerate(images):
            x = label_width + c * (CELL + 4)
            if image is None:
                draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), outline="gray")
                draw.text((x + 8, y + CELL // 2 - 6), "(no image)", fill="gray")
            else:
                grid.paste(image.resize((CELL, CELL), Image.NEAREST), (x, y))
                draw.rectangle((x - 1, y - 1, x + CELL, y + CELL), outline="lightgray")  # white images need a frame
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return Path(path)
