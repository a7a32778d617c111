"""laion/gpt4v-dataset: GPT-4V descriptions of LAION images.

Native layout: rows `{"link", "caption"}` in Parquet, JSON or JSON lines. The dataset ships links,
not images: download each `link` into the `images` folder and name the file by the SHA-1 hex digest
of the link (any extension), or add an `image` column holding the path relative to `images`
(docs/data.md has a short download script). A link that was not downloaded is a missing image.
Config: `path` = the annotation file(s), `images` = the download folder. Long answers.
"""

from __future__ import annotations

import hashlib
import os
import random
from functools import lru_cache
from pathlib import Path

from ..records import MISSING
from ..templates import LONG_VQA
from .base import (Draft, _row_group, candidates_of, image_question, image_under, import_pyarrow, iter_json_records,
                   text_field)

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {}
REQUESTS = (
    "Describe this image in detail.",
    "Provide a detailed description of the image.",
    "What is shown in this image? Describe it thoroughly.",
    "Write a detailed caption for this image.",
)


def files(src):
    return list(src.paths)


def _read(path) -> list:
    if path.suffix == ".parquet":
        return [row for group in range(import_pyarrow().ParquetFile(path).metadata.num_row_groups)
                for row in _row_group(str(path), group)]
    return iter_json_records(path)


def candidates(src) -> list:
    return candidates_of(src.paths, _read)


@lru_cache(maxsize=4)
def _by_stem(folder: str) -> dict[str, str]:
    return {Path(name).stem: name for name in sorted(os.listdir(folder))}


def draft(item, src, rng: random.Random) -> Draft:
    caption = text_field(item, "caption", "empty_answer")
    if item.get("image"):
        image = image_under(src.images, item["image"])
    else:
        name = _by_stem(str(src.images)).get(hashlib.sha1(text_field(item, "link").encode()).hexdigest())
        image = src.images / name if name else MISSING
    return image_question(str(item.get("link", item.get("image", ""))), image, rng.choice(REQUESTS), caption,
                          LONG_VQA)
