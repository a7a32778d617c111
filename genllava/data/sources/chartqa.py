"""ChartQA (Masry et al. 2022).

Native layout: a split folder such as `ChartQA Dataset/train/` holding `train_human.json` and
`train_augmented.json` (JSON lists of `{"imgname", "query", "label"}`) and the charts in `png/`.
Config: `path` = the `train/` folder, `images` defaults to its `png/`. Only the training split is
read: `train_*.json` files; `val_*` / `test_*` files put in the same folder are ignored.
Answers are short: Figure A1's short-answer template.
"""

from __future__ import annotations

import random

from ..templates import SHORT_VQA
from .base import Draft, candidates_of, image_question, image_under, load_json_records, text_field

TASK = "understanding"
NEEDS_IMAGES = True
DEFAULT_IMAGES = "png"  # relative to `path` when the config gives no `images`
OPTIONS = {}


def files(src):
    return sorted(p for root in src.paths
                  for p in (root.glob("train_*.json") if root.is_dir() else [root]))


def candidates(src) -> list:
    return candidates_of(files(src), load_json_records)


def draft(item, src, rng: random.Random) -> Draft:
    question = text_field(item, "query", "empty_question")
    answer = text_field(item, "label", "empty_answer")
    name = text_field(item, "imgname")
    return image_question(name, image_under(src.images, name), question, answer, SHORT_VQA)
