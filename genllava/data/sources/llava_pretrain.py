"""LLaVA-Pretrain (`blip_laion_cc_sbu_558k.json` + `images/`), inverted into caption -> image samples.

Native layout: a JSON list of `{"id", "image": "00453/004539375.jpg", "conversations": [human
"<image>\\n<describe request>", gpt "<BLIP caption>"]}`. The caption becomes a generation request in
one of Figure A1's phrasings ("Please generate an image of ...") and the image becomes the target
of a `[T2I]` image answer. Config: `path` = the JSON file, `images` = the `images/` folder.
"""

from __future__ import annotations

import random

from ..records import Reject
from ..templates import generation_prompt, image_answer
from .base import (Draft, conversations_of, gpt, human, image_under, json_candidates, json_files, one_line,
                   text_field)

TASK = "generation"
NEEDS_IMAGES = True
OPTIONS = {}
files, candidates = json_files, json_candidates  # `path` names the JSON file(s)


def draft(item, src, rng: random.Random) -> Draft:
    answers = [turn for turn in conversations_of(item) if isinstance(turn, dict) and turn.get("from") == "gpt"]
    if len(answers) != 1:
        raise Reject("not_alternating")
    # The template ends the sentence itself, so drop the caption's own full stop.
    caption = one_line(text_field(answers[0], "value", "empty_answer")).rstrip(". ")
    if not caption:
        raise Reject("empty_answer")
    return Draft(origin=str(item.get("id", "")),
                 conversations=[human(generation_prompt(caption, rng)), gpt(image_answer())],
                 targets=[image_under(src.images, item.get("image"))])
