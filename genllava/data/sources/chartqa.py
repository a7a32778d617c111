"""ChartQA (Masry et al. 2022).

Native layout: a split folder such as `ChartQA Dataset/train/` holding `train_human.json` and
`train_augmented.json` (JSON lists of `{"imgname", "query", "label"}`) and the charts in `png/`.
Config: `path` = the split folder (both question files are read), `images` defaults to its `png/`.
Answers are short: Figure A1's short-answer template.
"""

from __future__ import annotations

import random

from ..templates import SHORT_VQA
from .base import Draft, image_question, image_under, load_json_records, text_field

TASK = "understanding"
NEEDS_IMAGES = True
DEFAULT_IMAGES = "png"  # relative to `path` when the config gives no `images`
OPTIONS = {}


def files(src):
    return sorted(p for root in src.paths for p in (root.glob("*.json") if root.is_dir() else [root]))


def candidates(src) -> list:
    return [item for path in files(src) for item in load_json_records(path)]


def draft(item, src, rng: random.Random) -> Draft:
    question = text_field(item, "query", "empty_question")
    answer = text_field(item, "label", "empty_answer")
    name = text_field(item, "imgname")
    return image_question(name, image_under(src.images, name), question, answer, SHORT_VQA)
