"""The detector is the judge of generation and editing: exact on clean renders, tolerant of mild
decoder noise, and never fooled into accepting the wrong scene."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from PIL import Image

from genllava.shapes.detector import detect, matches
from genllava.shapes.world import BACKGROUND, COLORS, POSITIONS, SHAPES, Scene, Shape, random_scene, render


def one_shape_scenes():
    return [Scene((Shape(c, s, p),)) for c, s, p in itertools.product(COLORS, SHAPES, POSITIONS)]


@pytest.mark.parametrize("size", [32, 64])
def test_detector_reads_exact_renders(size):
    rng = random.Random(size)
    scenes = [random_scene(rng) for _ in range(250)]
    assert {len(s.shapes) for s in scenes} == {1, 2}
    correct = sum(matches(render(s, size), s) for s in scenes)
    assert correct / len(scenes) >= 0.99
    # every colour x shape x position on its own, and detect() returns exactly the scene
    for scene in one_shape_scenes():
        assert detect(render(scene, size)) == scene, scene


def test_detect_returns_shapes_in_position_order():
    scene = Scene((Shape("red", "circle", "top left"), Shape("blue", "triangle", "bottom right")))
    assert detect(render(scene, 64)).shapes == scene.shapes


def _one_change(scene: Scene, attribute: str, rng: random.Random) -> Scene:
    """The scene with one attribute of one shape changed to a value no other shape has."""
    index = rng.randrange(len(scene.shapes))
    pools = {"color": list(COLORS), "shape": list(SHAPES), "position": list(POSITIONS)}
    used = {getattr(s, attribute) for s in scene.shapes}
    value = rng.choice([v for v in pools[attribute] if v not in used])
    return scene.with_shape(index, **{attribute: value})


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("attribute", ["color", "shape", "position"])
def test_detector_rejects_a_scene_differing_in_one_attribute(size, attribute):
    rng = random.Random(f"{size}-{attribute}")
    for _ in range(60):
        scene = random_scene(rng)
        wrong = _one_change(scene, attribute, rng)
        assert wrong != scene
        image = render(scene, size)
        assert matches(image, scene)
        assert not matches(image, wrong), (scene, wrong)


def test_detector_rejects_missing_and_extra_shapes():
    a = Shape("red", "circle", "top left")
    b = Shape("blue", "square", "bottom right")
    both = Scene((a, b))
    assert not matches(render(both), Scene((a,)))
    assert not matches(render(Scene((a,))), both)
    assert matches(render(both), Scene((b, a)))  # order of listing does not matter


@pytest.mark.parametrize("size", [32, 64])
def test_blank_image_detects_nothing(size):
    blank = Image.new("RGB", (size, size), BACKGROUND)
    assert detect(blank).shapes == ()
    assert matches(blank, Scene(()))
    assert not matches(blank, Scene((Shape("red", "circle", "center"),)))


def test_colours_far_from_the_palette_are_background():
    image = Image.new("RGB", (64, 64), BACKGROUND)
    image.paste((128, 128, 128), (16, 16, 48, 48))  # a big grey square: not a colour of the world
    assert detect(image).shapes == ()
    black = Image.new("RGB", (32, 32), (0, 0, 0))
    assert detect(black).shapes == ()


def test_specks_are_ignored():
    scene = Scene((Shape("yellow", "square", "top right"),))
    array = np.asarray(render(scene, 64)).copy()
    rng = np.random.default_rng(0)
    for r, c in rng.integers(0, 64, size=(12, 2)):
        array[r, c] = COLORS["red"]  # single red pixels scattered around
    assert detect(Image.fromarray(array)) == scene


def test_detector_tolerates_mild_noise():
    rng = random.Random(3)
    noise = np.random.default_rng(3)
    scenes = [random_scene(rng) for _ in range(60)]
    ok = 0
    for scene in scenes:
        array = np.asarray(render(scene, 32)).astype(np.float32)
        noisy = (array + noise.normal(0, 12, array.shape)).clip(0, 255).astype(np.uint8)
        ok += matches(Image.fromarray(noisy), scene)
    assert ok / len(scenes) >= 0.95


def test_detector_accepts_other_modes():
    scene = Scene((Shape("purple", "circle", "center"),))
    rgba = render(scene, 32).convert("RGBA")
    assert detect(rgba) == scene
