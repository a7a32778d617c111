"""SynthDoG-EN (Kim et al. 2022, `naver-clova-ix/synthdog-en`): synthetic documents to read aloud.

Native layout: Parquet files (`data/train-*.parquet`) with `image` (`{"bytes", "path"}`) and
`ground_truth`, a JSON string whose `gt_parse.text_sequence` is the rendered text.
Config: `path` = the folder with the Parquet files (or one file). Only the training split is read:
`validation-*.parquet` files in the same folder are ignored. Each row becomes a reading request
(in one of a few phrasings) answered with the full text: Figure A1's long form.
"""

from __future__ import annotations

import json
import random

from ..records import Reject
from ..templates import LONG_VQA
from .base import Draft, image_question, parquet_candidates, parquet_files, parquet_image, parquet_row

TASK = "understanding"
NEEDS_IMAGES = False  # images are inside the Parquet rows
OPTIONS = {}
REQUESTS = (
    "What is written in this image?",
    "Read all the text in the image.",
    "Transcribe the text in this document.",
    "What does the document say?",
)


def files(src):
    return [path for root in src.paths for path in parquet_files(root, "train")]


def where(item) -> str:
    return item[0]


def candidates(src) -> list:
    return parquet_candidates(files(src))


def draft(item, src, rng: random.Random) -> Draft:
    row = parquet_row(item)
    try:
        text = json.loads(row["ground_truth"])["gt_parse"]["text_sequence"]
    except (KeyError, TypeError):
        raise Reject("bad_record") from None
    except json.JSONDecodeError:
        raise Reject("bad_json") from None
    if not isinstance(text, str):
        raise Reject("bad_record")
    if not text.strip():
        raise Reject("empty_answer")
    return image_question(f"{item[0].rsplit('/', 1)[-1]}:{item[1]}:{item[2]}", parquet_image(row.get("image")),
                          rng.choice(REQUESTS), text.strip(), LONG_VQA)
