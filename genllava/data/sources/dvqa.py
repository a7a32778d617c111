"""DVQA (Kafle et al. 2018): questions about bar charts.

Native layout: `qa/train_qa.json`, a JSON list of `{"image": "bar_train_00000000.png", "question",
"answer", "question_id", "template_id", ...}`, and the charts in `images/`.
Config: `path` = the QA file, `images` = the chart folder. Short answers: Figure A1's short template.
"""

from __future__ import annotations

import random

from ..templates import SHORT_VQA
from .base import Draft, json_candidates, json_files, question_row, text_field

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}
files, candidates = json_files, json_candidates  # `path` names the JSON file(s)


def draft(item, src, rng: random.Random) -> Draft:
    return question_row(item, src, "question_id", lambda row: text_field(row, "answer", "empty_answer"), SHORT_VQA)
