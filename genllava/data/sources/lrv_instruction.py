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

from ..templates import IMAGE_TOKEN, LONG_VQA, text_answer
from .base import Draft, gpt, human, image_under, load_json_records, text_field

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}


def files(src):
    return list(src.paths)


def candidates(src) -> list:
    return [item for path in src.paths for item in load_json_records(path)]


def draft(item, src, rng: random.Random) -> Draft:
    image_id = text_field(item, "image_id")
    name = image_id if PurePosixPath(image_id).suffix else f"{image_id}.jpg"
    question = text_field(item, "question", "empty_question")
    answer = text_field(item, "answer", "empty_answer")
    return Draft(origin=image_id,
                 conversations=[human(f"{IMAGE_TOKEN}\n" + LONG_VQA.format(question=question)),
                                gpt(text_answer(answer))],
                 image=image_under(src.images, name))
