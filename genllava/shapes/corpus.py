"""Plain text of the shapes world: what the world's tokenizer and language model learn from."""

from __future__ import annotations

import random
from typing import Iterator

from ..data import templates
from .tasks import GENERATORS, scene_question, text_task
from .world import random_scene


def _strip_markers(text: str) -> str:
    for token in templates.ADDED_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def world_text(count: int, seed: int) -> Iterator[str]:
    """`count` documents: captions, questions with answers, text tasks and instructions.

    A question about a scene comes after the scene's description, as in a reading-comprehension
    text: the model learns to answer from its context (as a real LLM can), not to guess a prior.
    """
    rng = random.Random(seed)
    for i in range(count):
        kind = i % 4
        if kind == 0:
            yield f"This is an image of {random_scene(rng).caption()}."
        elif kind == 1:
            scene = random_scene(rng)
            question, answer = scene_question(scene, rng)
            yield (f"This is an image of {scene.caption()}.{templates.TURN_SEPARATOR}{templates.USER_PREFIX}{templates.CONTENT_LEAD}{question}{templates.TURN_SEPARATOR}"
                   f"{templates.ASSISTANT_PREFIX}{templates.CONTENT_LEAD}{answer}")
        elif kind == 2:
            question, answer = text_task(rng)
            yield (f"{templates.USER_PREFIX}{templates.CONTENT_LEAD}{question}{templates.TURN_SEPARATOR}"
                   f"{templates.ASSISTANT_PREFIX}{templates.CONTENT_LEAD}{answer}")
        else:
            record = GENERATORS[rng.choice(["generation", "editing", "multiturn"])](rng, "corpus")
            yield " ".join(_strip_markers(turn["value"]) for turn in record["conversations"] if turn["from"] == "human")
    yield templates.SYSTEM_PROMPT
