"""`genllava eval shapes`: every capability scored on a fresh seed of the shapes world.

Answers are judged by exact match (after normalising case and punctuation); images by the
world's deterministic detector. A multi-turn conversation (generate, edit, ask) counts only if
both images and the answer are right; the model's own earlier replies stay in its history.
"""

from __future__ import annotations

import re
from typing import Callable

from tqdm.auto import tqdm

from ..data.conversation import parse_turn
from ..model.modeling import GenLlava, Reply
from ..shapes.detector import matches
from ..shapes.tasks import make_eval_records
from ..shapes.world import NUMBER_WORDS


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


# Every answer in the shapes world is shorter; the bound keeps an untrained model's babble from
# growing a three-turn history past the model's length limit.
MAX_ANSWER_TOKENS = 32


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_single_turn(model: GenLlava, records: list[dict], batch_size: int, seed: int) -> list[Reply]:
    replies = []
    for chunk in _batches(records, batch_size):
        conversations = [[parse_turn(r["conversations"][0])] for r in chunk]
        replies += model.generate(conversations, [r.get("image") for r in chunk], seed=seed,
                                  max_new_tokens=MAX_ANSWER_TOKENS)
    return replies


def is_right(record: dict, reply: Reply) -> bool:
    return normalise(reply.text) == normalise(record["meta"]["answers"][0])


def score_answers(records, replies) -> float:
    return sum(is_right(r, rep) for r, rep in zip(records, replies)) / len(records)


def accuracy_by(records, replies, group: Callable[[dict], str]) -> dict[str, float]:
    """Answer accuracy per group of records, e.g. per kind of question (where, what colour, ...)."""
    by_group: dict[str, list[bool]] = {}
    for record, reply in zip(records, replies):
        by_group.setdefault(group(record), []).append(is_right(record, reply))
    return {name: sum(right) / len(right) for name, right in sorted(by_group.items())}


def question_kind(record: dict) -> str:
    return record["meta"]["question_kinds"][0]


def shape_count(record: dict) -> str:
    """How many shapes the input image shows: two shapes ask the model to bind each attribute to
    the right shape, which one shape never does."""
    count = record["meta"]["image_shapes"]
    return f"{NUMBER_WORDS[count]} shape{'s' * (count != 1)}"


def score_images(records, replies) -> float:
    return sum(rep.image is not None and matches(rep.image, r["meta"]["target_scenes"][0])
               for r, rep in zip(records, replies)) / len(records)


def run_multiturn(model: GenLlava, records: list[dict], batch_size: int, seed: int) -> tuple[float, list[list[Reply]]]:
    correct, transcripts = 0, []
    for chunk in _batches(records, batch_size):
        users = [[parse_turn(t) for t in r["conversations"][0::2]] for r in chunk]
        histories = [[] for _ in chunk]
        replies_per_turn = []
        for turn in range(3):
            for history, u in zip(histories, users):
                history.append(u[turn])
            replies = model.generate(histories, [None] * len(chunk), seed=seed + turn, max_new_tokens=MAX_ANSWER_TOKENS)
            replies_per_turn.append(replies)
            for history, reply in zip(histories, replies):
                history.append(reply.as_message())
        for i, record in enumerate(chunk):
            first, second, answer = (replies_per_turn[t][i] for t in range(3))
            scenes = record["meta"]["target_scenes"]
            ok = (first.image is not None and matches(first.image, scenes[0]) and second.image is not None
                  and matches(second.image, scenes[1]) and normalise(answer.text) == normalise(record["meta"]["answers"][0]))
            correct += ok
            transcripts.append([first, second, answer])
    return correct / len(records), transcripts


def evaluate_shapes(model: GenLlava, seed: int = 1234, samples: int = 50, batch_size: int = 25,
                    log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Returns (metrics, examples) where examples keeps records and replies for image grids."""
    model.eval()
    results, examples = {}, {}
    stages = tqdm(total=6, desc="evaluate")
    for task in ("understanding", "text"):
        records = make_eval_records(task, samples, seed)
        replies = run_single_turn(model, records, batch_size, seed)
        results[task] = {"accuracy": score_answers(records, replies), "samples": samples}
        if task == "understanding":
            results[task]["by_question_kind"] = accuracy_by(records, replies, question_kind)
            results[task]["by_shape_count"] = accuracy_by(records, replies, shape_count)
        examples[task] = (records, replies)
        stages.update()
    for name, heldout in (("generation", False), ("generation_heldout", True)):
        records = make_eval_records("generation", samples, seed, heldout=heldout)
        replies = run_single_turn(model, records, batch_size, seed)
        examples[name] = (records, replies)
        stages.update()
    results["generation"] = {"accuracy": score_images(*examples["generation"]),
                             "accuracy_heldout": score_images(*examples["generation_heldout"]), "samples": samples}
    records = make_eval_records("editing", samples, seed)
    replies = run_single_turn(model, records, batch_size, seed)
    results["editing"] = {"accuracy": score_images(records, replies), "samples": samples}
    examples["editing"] = (records, replies)
    stages.update()
    records = make_eval_records("multiturn", samples, seed)
    accuracy, transcripts = run_multiturn(model, records, batch_size, seed)
    results["multiturn"] = {"accuracy": accuracy, "samples": samples}
    examples["multiturn"] = (records, transcripts)
    stages.update()
    stages.close()
    return results, examples
