"""AI2D (Kembhavi et al. 2016): multiple-choice questions about science diagrams.

Native layout: the `ai2d/` folder with `questions/{image}.json` = `{"imageName", "questions": {text:
{"answerTexts": [...], "correctAnswer": i, "abcLabel", "questionId"}}}` and `images/{image}`.
Config: `path` = the `ai2d/` folder (`images` defaults to its `images/`). Images listed in
`ai2d_test_ids.csv` (next to `questions/`, if present) are the test split and are left out.
Each question becomes Figure A1's advanced-knowledge form: options as "A. ...", answer the letter.
"""

from __future__ import annotations

import json
import random
import string

from ..records import Reject
from ..templates import ADVANCED_KNOWLEDGE
from .base import Bad, Draft, image_question, image_under

TASK = "understanding"
NEEDS_IMAGES = True
DEFAULT_IMAGES = "images"
OPTIONS = {}
TEST_IDS = "ai2d_test_ids.csv"


def files(src):
    root = src.paths[0]
    test = [root / TEST_IDS] if (root / TEST_IDS).exists() else []
    return sorted((root / "questions").glob("*.json")) + test


def _test_images(root) -> set[str]:
    path = root / TEST_IDS
    if not path.exists():
        return set()
    return {line.strip().split(",")[0] for line in path.read_text().splitlines() if line.strip()}


def candidates(src) -> list:
    root = src.paths[0]
    test = _test_images(root)
    items = []
    for path in sorted((root / "questions").glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            image, questions = data["imageName"], data["questions"]
            assert isinstance(image, str) and isinstance(questions, dict)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            items.append(Bad("bad_json", str(path)))
            continue
        except (KeyError, TypeError, AssertionError):
            items.append(Bad("bad_record", str(path)))
            continue
        for question, spec in questions.items():
            if image.split(".")[0] in test:
                items.append(Bad("test_split", str(path)))
            else:
                items.append({"image": image, "question": question, **(spec if isinstance(spec, dict) else {})})
    return items


def draft(item, src, rng: random.Random) -> Draft:
    options, correct = item.get("answerTexts"), item.get("correctAnswer")
    if (not isinstance(options, list) or not 1 < len(options) <= 26 or isinstance(correct, bool)
            or not isinstance(correct, int) or not 0 <= correct < len(options)):
        raise Reject("bad_record")
    question = str(item["question"]).strip()
    if not question:
        raise Reject("empty_question")
    letters = string.ascii_uppercase
    choices = "\n".join(f"{letters[i]}. {str(option).strip()}" for i, option in enumerate(options))
    return image_question(str(item.get("questionId", item["image"])), image_under(src.images, item["image"]),
                          f"{question}\n{choices}", letters[correct], ADVANCED_KNOWLEDGE)
