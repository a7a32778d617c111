"""LRV-Instruction (Liu et al. 2023): instructions with positive and negative (unanswerable) answers.

Native layout: `filter_cap1.json` / `filter_cap_more1.json` (Visual Genome images, folder `image/`)
and `chart_release_update.json` (chart images, folder `chart_image/`): JSON lists (or
`{"annotations": [...]}`) of `{"image_id", "question", "answer", "task"?}`. The image is
`{image_id}.jpg`, or `image_id` itself when it already names a file (the chart part).
Config: `path` = the JSON file(s) sharing one image folder, `images` = that folder; give the chart
part its own source entry with `reader: lrv_instruction`. Answers are sentences: Figure A1's long form.
"""

from __future__ import annotations

import random
from pathlib import PurePosixPath

from ..templates import LONG_VQA
from .base import Draft, image_question, image_under, json_candidates, json_files, text_field

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}
files, candidates = json_files, json_candidates  # `path` names the JSON file(s)


def draft(item, src, rng: random.Random) -> Draft:
    image_id = text_field(item, "image_id")
    name = image_id if PurePosixPath(image_id).suffix else f"{image_id}.jpg"
    question = text_field(item, "question", "empty_question")
    answer = text_field(item, "answer", "empty_answer")
    return image_question(image_id, image_under(src.images, name), question, answer, LONG_VQA)
