"""DocVQA (Mathew et al. 2021), single-page task as distributed by the RRC portal.

Native layout: `train_v1.0_withQT.json` (or `train_v1.0.json`) = `{"dataset_name", "data": [
{"questionId", "question", "image": "documents/xxx.png", "answers": [...], ...}]}`, images under the
folder that holds `documents/`. Config: `path` = the JSON file, `images` = that folder.
Answers are short: Figure A1's short-answer template, first annotator answer as the target.
"""

from __future__ import annotations

import random

from ..records import Reject
from ..templates import SHORT_VQA
from .base import Draft, json_candidates, json_files, question_row, text_field

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}
files, candidates = json_files, json_candidates  # `path` names the JSON file(s)


def _first_answer(item) -> str:
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        raise Reject("empty_answer")
    return text_field({"answer": answers[0]}, "answer", "empty_answer")


def draft(item, src, rng: random.Random) -> Draft:
    return question_row(item, src, "questionId", _first_answer, SHORT_VQA)
