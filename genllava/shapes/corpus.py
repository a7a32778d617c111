"""Plain text of the shapes world: what the world's tokenizer and language model learn from."""

from __future__ import annotations

import random
from typing import Iterator

from ..data import templates
from ..data.conversation import ASSISTANT, parse_record
from .tasks import GENERATORS, make_records, scene_question, text_task, understanding
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
            question, answer, _ = scene_question(scene, rng)
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


# The world LM is instruction-tuned, as Mistral-7B-Instruct is: it learns the assistant's chats in
# words (an input image given as its caption), so GenLLaVA's stage only has to teach it to see
# images and to draw them. Shares as in GenLLaVA's mix, with more text to keep it fluent.
CHAT_MIX = {"understanding": 0.4, "text": 0.2, "generation": 0.15, "editing": 0.15, "multiturn": 0.1}
IMAGE_IN_WORDS = "This is an image of {caption}."


def chat_in_words(record: dict) -> list[str]:
    """A record as the pieces of GenLLaVA's chat layout (see GenLlavaProcessor), each to be tokenized
    on its own: the input image becomes its caption; task tokens and image blocks are dropped."""
    pieces = [templates.SYSTEM_PROMPT + "\n\n"]
    for message in parse_record(record):
        if message.role == ASSISTANT:
            pieces += [templates.ASSISTANT_PREFIX, templates.CONTENT_LEAD + message.text, "</s>", templates.TURN_SEPARATOR]
            continue
        pieces.append(templates.USER_PREFIX)
        if message.has_image:
            pieces += [templates.CONTENT_LEAD + IMAGE_IN_WORDS.format(caption=record["meta"]["image_caption"]),
                       templates.TURN_SEPARATOR]
        pieces += [templates.CONTENT_LEAD + message.text, templates.TURN_SEPARATOR]
    return pieces


def chat_corpus(count: int, seed: int) -> Iterator[list[str]]:
    """`count` chats of the world in words, from the same task generators GenLLaVA trains on."""
    for record in make_records(count, seed, CHAT_MIX):
        yield chat_in_words(record)


# A second, shorter stage for the chat LM: the same chats, but most images hold two shapes and each
# carries up to six questions. Reading "the colour of the square" in a two-shape caption means
# selecting one shape by one attribute and reporting another, which the first stage's mix teaches
# too rarely. Not shipped: it raised selection in words, not GenLLaVA's in images
# (docs/findings/2026-11-27-understanding-limits.md).
READING_MIX = {"understanding": 0.6, "text": 0.1, "generation": 0.1, "editing": 0.1, "multiturn": 0.1}
READING_TWO_SHAPE_SHARE = 0.5  # of understanding images drawn with two shapes; the rest as usual
READING_MAX_QUESTIONS = 6


def reading_record(rng: random.Random, rid: str) -> dict:
    task = rng.choices(list(READING_MIX), list(READING_MIX.values()))[0]
    if task != "understanding":
        return GENERATORS[task](rng, rid)
    min_shapes = 2 if rng.random() < READING_TWO_SHAPE_SHARE else 1
    return understanding(rng, rid, long_answers=0.1, max_questions=READING_MAX_QUESTIONS, min_shapes=min_shapes)


def reading_corpus(count: int, seed: int) -> Iterator[list[str]]:
    """`count` chats of the reading stage in words (see READING_MIX)."""
    rng = random.Random(seed)
    for i in range(count):
        yield chat_in_words(reading_record(rng, f"reading-{seed}-{i}"))
