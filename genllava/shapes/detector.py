"""Deterministic detector: parses any image of the shapes world back into a Scene.

It is the judge for generation and editing, so it must be exact on clean renders and robust to
the mild noise a diffusion decoder leaves: pixels snap to the nearest palette colour, small
specks are ignored, and each remaining blob is classified by how it fills its bounding box.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .world import BACKGROUND, COLORS, POSITIONS, SHAPE_SIZE, Scene, Shape

_NAMES = ["background", *COLORS]
_PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)
MAX_COLOR_DISTANCE = 90.0  # farther than this from every palette colour: treated as background


def _labels(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)
    labels = distance.argmin(-1)
    labels[distance.min(-1) > MAX_COLOR_DISTANCE] = 0
    return labels


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as an (N, 2) array of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    found = []
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        stack, pixels = [(r0, c0)], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        found.append(np.array(pixels))
    return found


def _classify(pixels: np.ndarray) -> str:
    rows, cols = pixels[:, 0], pixels[:, 1]
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    fill = len(pixels) / (height * width)
    middle = (rows.min() + rows.max()) / 2
    top, bottom = (rows < middle).sum(), (rows > middle).sum()
    if top < 0.6 * bottom:  # a triangle stands on its base: far less mass above the middle
        return "triangle"
    return "square" if fill > 0.88 else "circle"


def detect(image: Image.Image) -> Scene:
    labels = _labels(image)
    size = labels.shape[0]
    min_area = 0.3 * (SHAPE_SIZE * size) ** 2
    shapes = []
    for index in range(1, len(_NAMES)):
        for pixels in _components(labels == index):
            if len(pixels) < min_area:
                continue
            cy, cx = pixels.mean(0) / size
            position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
            shapes.append(Shape(_NAMES[index], _classify(pixels), position))
    shapes.sort(key=lambda s: list(POSITIONS).index(s.position))
    return Scene(tuple(shapes))


def matches(image: Image.Image, expected: Scene) -> bool:
    """True when the detector reads exactly the expected scene (every shape, every attribute)."""
    found = detect(image).shapes
    return set(found) == set(expected.shapes) and len(found) == len(expected.shapes)
