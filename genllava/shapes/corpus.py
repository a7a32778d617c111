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


def _chat(user: str, answer: str, rng: random.Random) -> str:
    """One exchange in the chat layout GenLLaVA trains with; half of them open with its system
    prompt (the base LM answered 0.99 of the text questions without it, 0.75 behind it)."""
    system = templates.SYSTEM_PROMPT + "\n\n" if rng.random() < 0.5 else ""
    return (f"{system}{templates.USER_PREFIX}{templates.CONTENT_LEAD}{user}{templates.TURN_SEPARATOR}"
            f"{templates.ASSISTANT_PREFIX}{templates.CONTENT_LEAD}{answer}")


def _reading(rng: random.Random) -> str:
    """A scene's description, then one to three questions about it, in turns."""
    scene = random_scene(rng)
    turns = [scene_question(scene, rng) for _ in range(rng.randint(1, 3))]
    first = _chat(f"This is an image of {scene.caption()}.{templates.TURN_SEPARATOR}{turns[0][0]}", turns[0][1], rng)
    return first + "".join(f"{templates.TURN_SEPARATOR}{templates.USER_PREFIX}{templates.CONTENT_LEAD}{q}{templates.TURN_SEPARATOR}"
                           f"{templates.ASSISTANT_PREFIX}{templates.CONTENT_LEAD}{a}" for q, a in turns[1:])


def world_text(count: int, seed: int) -> Iterator[str]:
    """`count` documents: captions, questions with answers, text tasks and instructions.

    Half are reading comprehension: questions about a scene after the scene's description, so the
    model learns to answer from its context (as a real LLM can), not to guess a prior. At a
    quarter of the documents the LM answered 0.62 of such questions from the text alone, and
    understanding from images stayed just below that.
    """
    rng = random.Random(seed)
    for i in range(count):
        kind = i % 8
        if kind == 0:
            yield f"This is an image of {random_scene(rng).caption()}."
        elif kind <= 4:
            yield _reading(rng)
        elif kind <= 6:
            yield _chat(*text_task(rng), rng)
        else:
            record = GENERATORS[rng.choice(["generation", "editing", "multiturn"])](rng, "corpus")
            yield " ".join(_strip_markers(turn["value"]) for turn in record["conversations"] if turn["from"] == "human")
    yield templates.SYSTEM_PROMPT
