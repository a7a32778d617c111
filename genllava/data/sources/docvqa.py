"""DocVQA (Mathew et al. 2021), single-page task as distributed by the RRC portal.

Native layout: `train_v1.0_withQT.json` (or `train_v1.0.json`) = `{"dataset_name", "data": [
{"questionId", "question", "image": "documents/xxx.png", "answers": [...], ...}]}`, images under the
folder that holds `documents/`. Config: `path` = the JSON file, `images` = that folder.
Answers are short: Figure A1's short-answer template, first annotator answer as the target.
"""

from __future__ import annotations

import random

from ..records import Reject
from ..templates import IMAGE_TOKEN, SHORT_VQA, text_answer
from .base import Draft, gpt, human, image_under, load_json_records, text_field

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}


def files(src):
    return list(src.paths)


def candidates(src) -> list:
    return [item for path in src.paths for item in load_json_records(path)]


def draft(item, src, rng: random.Random) -> Draft:
    question = text_field(item, "question", "empty_question")
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        raise Reject("empty_answer")
    answer = text_field({"answer": answers[0]}, "answer", "empty_answer")
    return Draft(origin=str(item.get("questionId", "")),
                 conversations=[human(f"{IMAGE_TOKEN}\n" + SHORT_VQA.format(question=question)),
                                gpt(text_answer(answer))],
                 image=image_under(src.images, item.get("image")))
