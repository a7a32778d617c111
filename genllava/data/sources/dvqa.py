"""DVQA (Kafle et al. 2018): questions about bar charts.

Native layout: `qa/train_qa.json`, a JSON list of `{"image": "bar_train_00000000.png", "question",
"answer", "question_id", "template_id", ...}`, and the charts in `images/`.
Config: `path` = the QA file (or the `qa/` folder: then `train_qa.json` alone is read, never
`val_easy_qa.json` / `val_hard_qa.json`), `images` = the chart folder. Rows whose chart is another
split's (`bar_val_easy_*`, `bar_val_hard_*`) are filtered (`other_split`). Short answers: Figure A1's
short template.
"""

from __future__ import annotations

import random

from ..records import Reject
from ..templates import SHORT_VQA
from .base import Draft, candidates_of, iter_json_records, question_row, text_field

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}


def files(src):
    return [p for root in src.paths for p in ([root / "train_qa.json"] if root.is_dir() else [root])]


def candidates(src) -> list:
    return candidates_of(files(src), iter_json_records)


def draft(item, src, rng: random.Random) -> Draft:
    image = item.get("image") if isinstance(item, dict) else None
    if isinstance(image, str) and ("_val_" in image or "_test_" in image):
        raise Reject("other_split")
    return question_row(item, src, "question_id", lambda row: text_field(row, "answer", "empty_answer"), SHORT_VQA)
