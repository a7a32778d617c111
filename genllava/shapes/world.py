"""The shapes world: a procedural, seeded scene language that every capability can be tested on.

A scene is one or two coloured shapes at named positions on a white background. Rendering is
exact (no anti-aliasing) so the detector can parse any render back into the same scene.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
# Centres as fractions of the image side; far enough apart that two shapes never touch.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
BACKGROUND = (255, 255, 255)
SHAPE_SIZE = 0.34  # side of the bounding box as a fraction of the image side
IMAGE_SIZE = 32
NUMBER_WORDS = ("zero", "one", "two", "three")

# Colour x shape pairs never used as generation/edit targets in training (compositional hold-out).
HELDOUT_COMBOS: tuple[tuple[str, str], ...] = (("purple", "triangle"), ("green", "circle"))


@dataclass(frozen=True)
class Shape:
    color: str
    shape: str
    position: str

    def describe(self) -> str:
        return f"a {self.color} {self.shape} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]

    def caption(self) -> str:
        return " and ".join(s.describe() for s in self.shapes)

    def with_shape(self, index: int, **changes) -> "Scene":
        shapes = list(self.shapes)
        shapes[index] = replace(shapes[index], **changes)
        return Scene(tuple(shapes))


def is_heldout(shape: Shape) -> bool:
    return (shape.color, shape.shape) in HELDOUT_COMBOS


def random_shape(rng: random.Random, allow_heldout: bool = True, position: str | None = None) -> Shape:
    while True:
        s = Shape(rng.choice(list(COLORS)), rng.choice(SHAPES), position or rng.choice(list(POSITIONS)))
        if allow_heldout or not is_heldout(s):
            return s


def random_scene(rng: random.Random, max_shapes: int = 2, allow_heldout: bool = True, min_shapes: int = 1) -> Scene:
    """A scene of min_shapes..max_shapes shapes at distinct positions, listed in position order.

    Shapes in one scene differ in colour and in kind, so "the circle" or "the red shape" always
    names one shape, and two blobs of one colour never merge for the detector.
    """
    n = rng.randint(min_shapes, max_shapes)
    positions = rng.sample(list(POSITIONS), n)
    colors = rng.sample(list(COLORS), n)
    kinds = rng.sample(SHAPES, n)
    shapes = [Shape(c, k, p) for c, k, p in zip(colors, kinds, positions)]
    if not allow_heldout and any(is_heldout(s) for s in shapes):
        return random_scene(rng, max_shapes, allow_heldout, min_shapes)
    shapes.sort(key=lambda s: list(POSITIONS).index(s.position))
    return Scene(tuple(shapes))


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    half = SHAPE_SIZE * size / 2
    for s in scene.shapes:
        cx, cy = POSITIONS[s.position][0] * size, POSITIONS[s.position][1] * size
        box = (round(cx - half), round(cy - half), round(cx + half) - 1, round(cy + half) - 1)
        color = COLORS[s.color]
        if s.shape == "circle":
            draw.ellipse(box, fill=color)
        elif s.shape == "square":
            draw.rectangle(box, fill=color)
        else:  # apex up
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=color)
    return image
