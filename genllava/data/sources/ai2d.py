"""AI2D (Kembhavi et al. 2016): multiple-choice questions about science diagrams.

Native layout: the `ai2d/` folder with `questions/{image}.json` = `{"imageName", "questions": {text:
{"answerTexts": [...], "correctAnswer": i, "abcLabel", "questionId"}}}`, `images/{image}` and
`annotations/{image}.json` (`{"text": {"T1": {"rectangle": [[x0, y0], [x1, y1]], "value": "leaf",
"replacementText": "A"}, ...}}`). Config: `path` = the `ai2d/` folder (`images` defaults to its
`images/`). Only the training split is read: the diagrams listed in `ai2d_test_ids.csv` (option
`test_ids`, relative to `path`; it must exist) are the test split and are filtered (`test_split`).

`abcLabel` questions ask about letters ("Which label shows the leaf? A, B, C, D") that the raw
diagram does not show: its labels are words. Such a question gets the diagram with its letter
annotations drawn in, as big_vision's AI2D preparation does: each text box that has a
`replacementText` is painted white and the letter written in it. A diagram without an annotation
file (or with `draw_letters: false`) cannot show the letters, so its abcLabel questions are filtered
and counted (`abc_label`). Each question becomes Figure A1's advanced-knowledge form: options as
"A. ...", the answer the letter.
"""

from __future__ import annotations

import io
import json
import random
import string
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import DataError
from ..records import Reject
from ..templates import ADVANCED_KNOWLEDGE
from ..text import read_text
from .base import Bad, Candidates, Draft, image_question, image_under

TASK = "understanding"
NEEDS_IMAGES = True
DEFAULT_IMAGES = "images"
OPTIONS = {"test_ids": "ai2d_test_ids.csv", "draw_letters": True}
ANNOTATIONS = "annotations"


def _test_ids_path(src) -> Path:
    return src.paths[0] / str(src.options.get("test_ids") or OPTIONS["test_ids"])


def files(src):
    root = src.paths[0]
    test = _test_ids_path(src)
    return sorted((root / "questions").glob("*.json")) + ([test] if test.exists() else [])


def _test_images(src) -> set[str]:
    path = _test_ids_path(src)
    if not path.is_file():
        raise DataError(f"{path} not found: AI2D's test split cannot be left out without it; download "
                        "ai2d_test_ids.csv (allenai.org/data/diagrams) into the ai2d/ folder, or name it with `test_ids`",
                        file=path)
    return {line.strip().split(",")[0] for line in read_text(path).splitlines() if line.strip()}


def candidates(src) -> list:
    root = src.paths[0]
    test = _test_images(src)
    items = Candidates()
    for path in sorted((root / "questions").glob("*.json")):
        items.add_file(path)
        try:
            data = json.loads(read_text(path))
            image, questions = data["imageName"], data["questions"]
            assert isinstance(image, str) and isinstance(questions, dict)
        except (OSError, json.JSONDecodeError):
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


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # an old Pillow: the fixed bitmap font
        return ImageFont.load_default()


def draw_letters(image_path: Path, annotation_path: Path) -> bytes:
    """The diagram with each labelled text box painted white and its `replacementText` letter drawn in
    it (PNG bytes); raises Reject when the diagram cannot be read."""
    try:
        boxes = json.loads(read_text(annotation_path)).get("text", {})
        assert isinstance(boxes, dict)
    except (OSError, json.JSONDecodeError, AttributeError, AssertionError):
        raise Reject("abc_label") from None
    try:
        with Image.open(image_path) as opened:
            opened.load()
            from ..images import to_rgb

            image = to_rgb(opened)
    except FileNotFoundError:
        raise Reject("missing_image") from None
    except Exception:  # noqa: BLE001 - undecodable: the builder's image check names it the same way
        raise Reject("corrupt_image") from None
    draw = ImageDraw.Draw(image)
    for box in boxes.values():
        try:
            letter = str(box.get("replacementText") or "").strip()
            (x0, y0), (x1, y1) = box["rectangle"]
            x0, x1 = sorted((float(x0), float(x1)))
            y0, y1 = sorted((float(y0), float(y1)))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
        if not letter:
            continue
        draw.rectangle((x0, y0, x1, y1), fill="white", outline="black")
        font = _font(max(8, int(min(y1 - y0, (x1 - x0) / max(1, len(letter)) * 1.6) * 0.8)))
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), letter, fill="black", font=font, anchor="mm")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def draft(item, src, rng: random.Random) -> Draft:
    options, correct = item.get("answerTexts"), item.get("correctAnswer")
    if (not isinstance(options, list) or not 1 < len(options) <= 26 or isinstance(correct, bool)
            or not isinstance(correct, int) or not 0 <= correct < len(options)):
        raise Reject("bad_record")
    question = str(item["question"]).strip()
    if not question:
        raise Reject("empty_question")
    image = image_under(src.images, item["image"])
    if item.get("abcLabel") is True:
        annotation = src.paths[0] / ANNOTATIONS / f"{item['image']}.json"
        if not src.options.get("draw_letters", True) or not annotation.is_file():
            raise Reject("abc_label")
        image = draw_letters(image, annotation)
    letters = string.ascii_uppercase
    choices = "\n".join(f"{letters[i]}. {str(option).strip()}" for i, option in enumerate(options))
    return image_question(str(item.get("questionId", item["image"])), image,
                          f"{question}\n{choices}", letters[correct], ADVANCED_KNOWLEDGE)
