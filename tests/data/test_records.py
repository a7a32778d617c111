"""The record contract: conversation checks, image checks and validate_record."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from genllava.data.records import MISSING, Reject, check_image, conversation_problem, validate_record
from genllava.data.templates import IMAGE_TOKEN, image_answer, text_answer
from native_fixtures import Maker


def turns(*values):
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


@pytest.mark.parametrize("conversations, has_image, targets, problem", [
    (turns(f"{IMAGE_TOKEN}\nWhat is it?", text_answer("A cat.")), True, 0, None),
    (turns("Draw a cat.", image_answer()), False, 1, None),
    (turns("Draw a cat.", image_answer("Here it is: ")), False, 1, None),
    (turns(f"{IMAGE_TOKEN}\nMake it blue.", image_answer()), True, 1, None),
    (turns("Hi there.", text_answer("Hello."), "And then?", text_answer("Nothing.")), False, 0, None),
    ([], False, 0, "bad_record"),
    (turns("Hi there.", text_answer("Hello."), "And then?"), False, 0, "not_alternating"),
    ([{"from": "gpt", "value": text_answer("Hello.")}, {"from": "human", "value": "Hi"}], False, 0,
     "not_alternating"),
    (turns("What is it?", text_answer("A cat.")), True, 0, "image_token_mismatch"),
    (turns(f"{IMAGE_TOKEN}{IMAGE_TOKEN} What is it?", text_answer("A cat.")), True, 0, "image_token_mismatch"),
    (turns(f"{IMAGE_TOKEN} What is it?", text_answer("A cat.")), False, 0, "image_token_mismatch"),
    (turns("What is it?", text_answer(f"A {IMAGE_TOKEN}.")), False, 0, "image_token_mismatch"),
    (turns("What is it?", text_answer("  ")), False, 0, "empty_answer"),
    (turns(f"{IMAGE_TOKEN}\n ", text_answer("A cat.")), True, 0, "empty_question"),
    (turns("What is it?", "A cat."), False, 0, "bad_record"),  # no task token
    (turns("Draw a cat.", image_answer()), False, 0, "bad_record"),  # image answer without target
    (turns("What is [T2I] it?", text_answer("A cat.")), False, 0, "special_token_in_text"),
    (turns("What is it?", text_answer("A [SOI] cat.")), False, 0, "special_token_in_text"),
])
def test_conversation_problem(conversations, has_image, targets, problem):
    assert conversation_problem(conversations, has_image, targets) == problem


def test_check_image_keeps_original_bytes(tmp_path):
    maker = Maker(tmp_path, 0)
    path = maker.image(tmp_path / "a.png", "PNG")
    sha, ext, data = check_image(path, 10_000)
    assert (sha, ext, data) == (hashlib.sha256(path.read_bytes()).hexdigest(), "png", path.read_bytes())
    assert check_image(path.read_bytes(), 10_000)[0] == sha  # bytes (Parquet cells) work the same


@pytest.mark.parametrize("make, reason", [
    (lambda m, p: p / "absent.jpg", "missing_image"),
    (lambda m, p: p, "missing_image"),  # a folder, not a file
    (lambda m, p: MISSING, "missing_image"),
    (lambda m, p: m.corrupt(p / "c.jpg"), "corrupt_image"),
    (lambda m, p: m.truncated(p / "t.jpg"), "truncated_image"),
    (lambda m, p: m.bomb(p / "b.png"), "image_too_large"),
    (lambda m, p: m.image(p / "big.jpg"), "image_too_large"),  # 144 pixels over a limit of 100
])
def test_check_image_rejects(tmp_path, make, reason):
    with pytest.raises(Reject) as info:
        check_image(make(Maker(tmp_path, 0), tmp_path), 10_000 if reason == "truncated_image" else 100)
    assert info.value.reason == reason


def test_check_image_accepts_odd_modes(tmp_path):
    for mode in ("L", "P", "RGBA", "I;16", "CMYK"):
        buffer = io.BytesIO()
        Image.new(mode, (4, 4)).save(buffer, "TIFF")
        assert check_image(buffer.getvalue(), 100)[1] == "tif"


def good_record(**changes):
    record = {"id": "x/1", "image": Image.new("RGB", (4, 4)),
              "conversations": turns(f"{IMAGE_TOKEN}\nMake it red.", image_answer()),
              "target_image": [Image.new("RGB", (4, 4))], "meta": {"task": "editing", "source": "x"}}
    record.update(changes)
    return record


def test_validate_record():
    validate_record(good_record())
    validate_record(good_record(image=None, conversations=turns("Draw.", image_answer())))
    for changes, message in [
        ({"id": ""}, "no string id"),
        ({"image": Image.new("L", (4, 4))}, "not RGB"),
        ({"target_image": []}, "bad_record"),
        ({"target_image": ["a.jpg"]}, "not a PIL image"),
        ({"meta": {"task": "painting", "source": "x"}}, "meta"),
        ({"image": None}, "image_token_mismatch"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_record(good_record(**changes))
