"""DocVQA (Mathew et al. 2021), single-page task as distributed by the RRC portal.

Native layout: `train_v1.0_withQT.json` (or `train_v1.0.json`) = `{"dataset_name", "data": [
{"questionId", "question", "image": "documents/xxx.png", "answers": [...], ...}]}`, images under the
folder that holds `documents/`. Config: `path` = the JSON file, `images` = that folder.
Answers are short: Figure A1's short-answer template, first annotator answer as the target.
Only the training split is read: `path` may also be the `spdocvqa_qas/` folder (then `train_*.json`
is taken and `val_*` / `test_*` beside it are ignored); a file whose `dataset_split` is not `train`
is refused, and rows whose `data_split` says another split are filtered (`other_split`).
"""

from __future__ import annotations

import random
import re

from ..errors import DataError
from ..records import Reject
from ..templates import SHORT_VQA
from ..text import read_text
from .base import Draft, candidates_of, load_json_records, question_row, text_field

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}


def files(src):
    return [p for root in src.paths for p in (sorted(root.glob("train*.json")) if root.is_dir() else [root])]


def _read(path):
    head = read_text(path)[:4096]  # `dataset_split` comes before the data in the RRC files
    match = re.search(r'"dataset_split"\s*:\s*"([^"]*)"', head)
    if match and match.group(1).lower() != "train":
        raise DataError(f"{path} is DocVQA's {match.group(1)} split; point `path` at train_v1.0_withQT.json",
                        file=path)
    return load_json_records(path)


def candidates(src) -> list:
    return candidates_of(files(src), _read)


def _first_answer(item) -> str:
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        raise Reject("empty_answer")
    return text_field({"answer": answers[0]}, "answer", "empty_answer")


def draft(item, src, rng: random.Random) -> Draft:
    split = item.get("data_split") if isinstance(item, dict) else None
    if isinstance(split, str) and split.lower() not in ("train", ""):
        raise Reject("other_split")
    return question_row(item, src, "questionId", _first_answer, SHORT_VQA)
