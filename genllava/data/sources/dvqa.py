"""DVQA (Kafle et al. 2018): questions about bar charts.

Native layout: `qa/train_qa.json`, a JSON list of `{"image": "bar_train_00000000.png", "question",
"answer", "question_id", "template_id", ...}`, and the charts in `images/`.
Config: `path` = the QA file, `images` = the chart folder. Short answers: Figure A1's short template.
"""

from __future__ import annotations

import random

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
    answer = text_field(item, "answer", "empty_answer")
    return Draft(origin=str(item.get("question_id", "")),
                 conversations=[human(f"{IMAGE_TOKEN}\n" + SHORT_VQA.format(question=question)),
                                gpt(text_answer(answer))],
                 image=image_under(src.images, item.get("image")))
