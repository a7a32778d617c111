"""Task generators of the shapes world, one per capability, producing LLaVA-style records.

A record is `{"id", "image"?, "conversations", "target_image"?, "meta"}` where images are PIL
images (written to disk as PNG on export), `target_image` lists the images that the assistant's
image answers must show, in order, and `meta` holds what evaluation needs to judge an answer.
"""

from __future__ import annotations

import random
import string
from typing import Callable

from ..data.templates import IMAGE_TOKEN, SHORT_VQA, LONG_VQA, editing_prompt, generation_prompt, image_answer, text_answer
from .world import COLORS, NUMBER_WORDS, POSITIONS, SHAPES, Scene, Shape, is_heldout, random_scene, random_shape, render

TASKS = ("understanding", "text", "generation", "editing", "multiturn")


def _record(rid: str, task: str, conversations, image: Scene | None = None, targets=(), answers=(), scenes=()) -> dict:
    record = {"id": rid, "conversations": conversations, "meta": {"task": task, "answers": list(answers),
                                                                  "target_scenes": list(scenes)}}
    if image is not None:
        record["image"] = render(image)
        record["meta"]["image_caption"] = image.caption()  # the input image in words (the world LM's corpus)
        record["meta"]["image_shapes"] = len(image.shapes)
    if targets:
        record["target_image"] = list(targets)
        record["target_caption"] = [s.caption() for s in scenes]  # what each target shows, in words
    return record


def _human(text: str) -> dict:
    return {"from": "human", "value": text}


def _gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


def _drawn(scene: Scene) -> dict:
    """An image answer that first says what it draws, as MGIE's MLLM first writes an expressive
    instruction: the LM loss then teaches the caption (for an edit: understanding plus the
    change), and the [IMG] states that follow read it at fixed offsets whatever the prompt said."""
    return _gpt(image_answer(f"Here is {scene.caption()}."))


# What each question of scene_question asks, in the order of its `kind` draw; evaluation reports
# accuracy per kind, so a weak skill (e.g. reading position) shows instead of hiding in the mean.
QUESTION_KINDS = ("color_of_shape", "shape_at_position", "position_of_shape", "count", "color_at_position", "is_there")


def scene_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """A question about the scene, its one-word-or-phrase answer, and its kind (QUESTION_KINDS)."""
    shape = rng.choice(scene.shapes)
    kind = rng.randrange(6)
    name = QUESTION_KINDS[kind]
    if kind == 0:
        return f"What color is the {shape.shape}?", shape.color, name
    if kind == 1:
        return f"What shape is at the {shape.position}?", shape.shape, name
    if kind == 2:
        return f"Where is the {shape.color} {shape.shape}?", shape.position, name
    if kind == 3:
        return "How many shapes are there?", NUMBER_WORDS[len(scene.shapes)], name
    if kind == 4:
        return f"What color is the shape at the {shape.position}?", shape.color, name
    probe = shape if rng.random() < 0.5 else random_shape(rng)
    present = any((s.color, s.shape) == (probe.color, probe.shape) for s in scene.shapes)
    return f"Is there a {probe.color} {probe.shape}?", "yes" if present else "no", name


def understanding(rng: random.Random, rid: str, long_answers: float = 0.15, max_questions: int = 3,
                  min_shapes: int = 1) -> dict:
    """Questions about one image: a description, or 1..max_questions short questions in turns
    (as LLaVA-1.5 packs several VQA questions about an image into one conversation)."""
    scene = random_scene(rng, min_shapes=min_shapes)
    if rng.random() < long_answers:  # long answer: a caption
        asked = [(LONG_VQA.format(question="Describe the image."), scene.caption() + ".", "description")]
    else:
        asked = [scene_question(scene, rng) for _ in range(rng.randint(1, max_questions))]
        asked = [(SHORT_VQA.format(question=q) if i == 0 else q, a, k) for i, (q, a, k) in enumerate(asked)]
    conversations = []
    for i, (question, answer, _) in enumerate(asked):
        conversations += [_human(f"{IMAGE_TOKEN}\n{question}" if i == 0 else question), _gpt(text_answer(answer))]
    record = _record(rid, "understanding", conversations, image=scene, answers=[a for _, a, _ in asked])
    record["meta"]["question_kinds"] = [k for _, _, k in asked]
    return record


def text_task(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    a, b = rng.randrange(10), rng.randrange(10)
    if kind == 0:
        return f"What is {a} plus {b}?", str(a + b)
    if kind == 1:
        letter = rng.choice(string.ascii_uppercase[:-1])
        return f"What letter comes after {letter}?", chr(ord(letter) + 1)
    while a == b:
        b = rng.randrange(10)
    return f"Which is larger, {a} or {b}?", str(max(a, b))


def text(rng: random.Random, rid: str) -> dict:
    question, answer = text_task(rng)
    return _record(rid, "text", [_human(question), _gpt(text_answer(answer))], answers=[answer])


def generation(rng: random.Random, rid: str, heldout: bool = False) -> dict:
    """Generate a one-shape scene. heldout=True draws only held-out colour x shape pairs."""
    while True:
        shape = random_shape(rng)
        if is_heldout(shape) == heldout:
            break
    scene = Scene((shape,))
    prompt = generation_prompt(scene.caption(), rng)
    return _record(rid, "generation", [_human(prompt), _drawn(scene)], targets=[render(scene)], scenes=[scene])


def random_edit(shape: Shape, rng: random.Random, pronoun: bool = False) -> tuple[str, Shape]:
    """An edit instruction for a one-shape scene and the shape it asks for (never a held-out pair)."""
    name = "it" if pronoun else f"the {shape.shape}"
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            color = rng.choice([c for c in COLORS if c != shape.color])
            instruction, edited = f"Make {name} {color}.", Shape(color, shape.shape, shape.position)
        elif kind == 1:
            new = rng.choice([s for s in SHAPES if s != shape.shape])
            instruction, edited = f"Turn {name} into a {new}.", Shape(shape.color, new, shape.position)
        else:
            position = rng.choice([p for p in POSITIONS if p != shape.position])
            instruction, edited = f"Move {name} to the {position}.", Shape(shape.color, shape.shape, position)
        if not is_heldout(edited):
            return instruction, edited


def editing(rng: random.Random, rid: str) -> dict:
    source = random_shape(rng)
    instruction, edited = random_edit(source, rng)
    prompt = editing_prompt(instruction, rng)
    target = Scene((edited,))
    return _record(rid, "editing", [_human(f"{IMAGE_TOKEN}\n{prompt}"), _drawn(target)],
                   image=Scene((source,)), targets=[render(target)], scenes=[target])


def multiturn(rng: random.Random, rid: str) -> dict:
    """Generate an image, edit it, then ask about the result."""
    first = random_shape(rng, allow_heldout=False)
    instruction, edited = random_edit(first, rng, pronoun=True)
    kind = rng.randrange(3)
    question, answer = [("What color is it?", edited.color), ("What shape is it?", edited.shape),
                        ("Where is it?", edited.position)][kind]
    scenes = [Scene((first,)), Scene((edited,))]
    conversations = [
        _human(generation_prompt(scenes[0].caption(), rng)), _drawn(scenes[0]),
        _human(instruction), _drawn(scenes[1]),
        _human(SHORT_VQA.format(question=question)), _gpt(text_answer(answer)),
    ]
    return _record(rid, "multiturn", conversations, targets=[render(s) for s in scenes], answers=[answer],
                   scenes=scenes)


GENERATORS: dict[str, Callable[[random.Random, str], dict]] = {
    "understanding": understanding,
    "text": text,
    "generation": generation,
    "editing": editing,
    "multiturn": multiturn,
}
# Shares of each task in the default training mix. Image answers make up about half, since the
# generation head learns only from them; the rest is mostly understanding, the hardest skill here
# (docs/findings/2026-11-27-shapes-recipe.md).
DEFAULT_MIX = {"understanding": 0.42, "text": 0.06, "generation": 0.22, "editing": 0.2, "multiturn": 0.1}
MIXES = {
    "full": DEFAULT_MIX,
    "understanding-only": {"understanding": 0.8, "text": 0.2},
}


def make_records(count: int, seed: int, mix: dict[str, float] | None = None) -> list[dict]:
    """`count` records drawn from the task mix; the same seed always gives the same records."""
    mix = mix or DEFAULT_MIX
    rng = random.Random(seed)
    tasks, weights = list(mix), list(mix.values())
    return [GENERATORS[task](rng, f"{task}-{seed}-{i}")
            for i, task in enumerate(rng.choices(tasks, weights, k=count))]


def make_eval_records(task: str, count: int, seed: int, heldout: bool = False) -> list[dict]:
    rng = random.Random(seed)
    if task == "generation":
        return [generation(rng, f"generation-eval-{seed}-{i}", heldout=heldout) for i in range(count)]
    if task == "understanding":  # one short answer each: exact match is the judge
        return [understanding(rng, f"understanding-eval-{seed}-{i}", long_answers=0.0, max_questions=1)
                for i in range(count)]
    return [GENERATORS[task](rng, f"{task}-eval-{seed}-{i}") for i in range(count)]
