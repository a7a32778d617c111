"""LLaVA-format JSON: LLaVA-Finetune (`llava_v1_5_mix665k.json`), LVIS-Instruct4V
(`lvis_instruct4v_220k.json`) and ShareGPT4V (`sharegpt4v_instruct_gpt4-vision_cap100k.json`).

Native layout: a JSON list (or JSON lines) of `{"id", "image"?, "conversations": [{"from", "value"}]}`
with `<image>` in a human turn; `image` is relative to the folder that holds the image collections
(`coco/train2017/...`, `gqa/images/...`, `sam/images/...`). Rows without `image` are text-only
(mix665k's ShareGPT rows) and are kept; a conversation that opens with a `gpt` turn loses that turn,
as LLaVA's own loader trims it. Only the named file(s) are read (a training set each).
Config: `path` = the JSON file(s), `images` = that folder (LVIS-Instruct4V needs `coco/val2017/` too).
The answers already follow LLaVA-1.5's prompts (mix665k carries Figure A1's short-answer suffix),
so questions are kept verbatim; each answer gets the `[I2T]` task token.
"""

from __future__ import annotations

import random
from pathlib import PurePosixPath

from ..records import Reject
from ..templates import IMAGE_TOKEN, text_answer
from .base import Draft, conversations_of, gpt, human, image_under, json_candidates, json_files, one_line

TASK = "understanding"
NEEDS_IMAGES = True
OPTIONS = {"dedup_against": None, "dedup_within": False}
ROLE = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
files, candidates = json_files, json_candidates  # `path` names the JSON file(s)


def draft(item, src, rng: random.Random) -> Draft:
    turns = conversations_of(item)
    image = item.get("image")
    if isinstance(image, list):  # LLaVA-OneVision style lists: one image is all this mixture takes
        if len(image) != 1:
            raise Reject("multiple_images")
        image = image[0]
    if turns and isinstance(turns[0], dict) and ROLE.get(turns[0].get("from")) == "gpt":
        turns = turns[1:]  # LLaVA's preprocess drops a leading assistant turn the same way
    conversations = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLE:
            raise Reject("bad_record")
        value = turn["value"].strip()
        conversations.append(human(value) if ROLE[turn["from"]] == "human" else gpt(text_answer(value)))
    return Draft(origin=str(item.get("id", "")), conversations=conversations,
                 image=image_under(src.images, image) if image is not None else None)


def dedup_key(item):
    """Same image file and same first question: the row is the same sample in both datasets."""
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list) or not item["conversations"]:
        return None
    first = item["conversations"][0]
    image = item.get("image")
    if not isinstance(first, dict) or not isinstance(first.get("value"), str) or not isinstance(image, str):
        return None
    question = one_line(first["value"].replace(IMAGE_TOKEN, "")).lower()
    return PurePosixPath(image).name, question
