"""The shapes world: exact, seeded rendering; task records that are right about their own images;
the compositional hold-out kept out of every training target."""

from __future__ import annotations

import io
import random
import re

import numpy as np
import pytest

from genllava.data import templates
from genllava.data.conversation import parse_record
from genllava.shapes.detector import detect
from genllava.shapes.tasks import GENERATORS, QUESTION_KINDS, make_eval_records, make_records
from genllava.shapes.world import (BACKGROUND, COLORS, HELDOUT_COMBOS, NUMBER_WORDS, POSITIONS, SHAPES, Scene, Shape,
                                   is_heldout, random_scene, random_shape, render)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixel(image, fx: float, fy: float):
    return image.getpixel((int(fx * image.width), int(fy * image.height)))


# ---- scenes and rendering ---------------------------------------------------------------------

def test_render_is_exact_and_reproducible():
    scene = Scene((Shape("red", "square", "top left"), Shape("blue", "circle", "bottom right")))
    for size in (32, 64):
        image = render(scene, size)
        assert image.mode == "RGB" and image.size == (size, size)
        assert png_bytes(image) == png_bytes(render(scene, size))
        # no anti-aliasing: only the background and the scene's colours occur
        colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3)}
        assert colours == {BACKGROUND, COLORS["red"], COLORS["blue"]}
        assert pixel(image, 0.25, 0.25) == COLORS["red"]
        assert pixel(image, 0.75, 0.75) == COLORS["blue"]
        assert pixel(image, 0.75, 0.25) == BACKGROUND  # top right is empty
        assert pixel(image, 0.5, 0.5) == BACKGROUND
        assert pixel(image, 0.0, 0.0) == BACKGROUND


def test_render_shapes_differ_in_area():
    # square fills its box, the circle ~pi/4 of it, the triangle ~1/2: the detector relies on this
    areas = {}
    for kind in SHAPES:
        image = np.asarray(render(Scene((Shape("green", kind, "center"),)), 64))
        areas[kind] = int((image != np.array(BACKGROUND)).any(-1).sum())
    assert areas["square"] > areas["circle"] > areas["triangle"] > 0
    assert 0.7 < areas["circle"] / areas["square"] < 0.85
    assert 0.4 < areas["triangle"] / areas["square"] < 0.6


def test_triangle_points_up():
    image = np.asarray(render(Scene((Shape("red", "triangle", "center"),)), 64))
    filled = (image != np.array(BACKGROUND)).any(-1)
    rows = np.nonzero(filled.any(1))[0]
    top, bottom = rows.min(), rows.max()
    assert filled[top].sum() < filled[bottom].sum() / 4


def test_random_scenes_respect_their_invariants():
    rng = random.Random(0)
    order = list(POSITIONS)
    counts = set()
    for _ in range(300):
        scene = random_scene(rng)
        shapes = scene.shapes
        counts.add(len(shapes))
        assert 1 <= len(shapes) <= 2
        for attr in ("color", "shape", "position"):
            assert len({getattr(s, attr) for s in shapes}) == len(shapes), f"repeated {attr} in {scene}"
        assert [order.index(s.position) for s in shapes] == sorted(order.index(s.position) for s in shapes)
    assert counts == {1, 2}


def test_random_scene_without_heldout():
    rng = random.Random(1)
    scenes = [random_scene(rng, allow_heldout=False) for _ in range(300)]
    assert not any(is_heldout(s) for scene in scenes for s in scene.shapes)
    rng = random.Random(1)
    assert any(is_heldout(random_shape(rng)) for _ in range(300))  # by default they do occur
    rng = random.Random(1)
    assert not any(is_heldout(random_shape(rng, allow_heldout=False)) for _ in range(300))


def test_caption_and_with_shape():
    scene = Scene((Shape("red", "circle", "top left"), Shape("blue", "square", "center")))
    assert scene.caption() == "a red circle at the top left and a blue square at the center"
    edited = scene.with_shape(1, color="yellow")
    assert edited.shapes[1] == Shape("yellow", "square", "center")
    assert scene.shapes[1].color == "blue"  # frozen, not mutated


# ---- task records --------------------------------------------------------------------------------

def _fingerprint(record: dict):
    images = [record.get("image")] + list(record.get("target_image", []))
    return (record["id"], record["conversations"], record["meta"]["answers"], record["meta"]["target_scenes"],
            [png_bytes(im) for im in images if im is not None])


def test_make_records_is_deterministic():
    a, b = make_records(60, seed=7), make_records(60, seed=7)
    assert [_fingerprint(r) for r in a] == [_fingerprint(r) for r in b]
    c = make_records(60, seed=8)
    assert [r["conversations"] for r in a] != [r["conversations"] for r in c]


def test_make_records_mix_and_ids():
    records = make_records(400, seed=3)
    tasks = [r["meta"]["task"] for r in records]
    assert set(tasks) == set(GENERATORS)
    share = tasks.count("understanding") / len(tasks)
    assert 0.3 < share < 0.5  # default mix: 40 %
    assert len({r["id"] for r in records}) == len(records)
    only = make_records(100, seed=3, mix={"text": 1.0})
    assert {r["meta"]["task"] for r in only} == {"text"}


def test_every_generated_record_parses():
    for record in make_records(200, seed=5):
        messages = parse_record(record)
        answers = [m for m in messages if m.role == "assistant"]
        assert sum(m.image_answer for m in answers) == len(record.get("target_image", []))
        assert ("image" in record) == any(m.has_image for m in messages)
        for m in answers:
            assert m.task == (templates.T2I if m.image_answer else templates.I2T)


@pytest.mark.parametrize("seed", [0, 1])
def test_heldout_pairs_never_are_training_targets(seed):
    records = make_records(800, seed=seed)
    heldout_words = [f"{c} {s}" for c, s in HELDOUT_COMBOS]
    with_targets = [r for r in records if r.get("target_image")]
    assert {r["meta"]["task"] for r in with_targets} == {"generation", "editing", "multiturn"}
    for record in with_targets:
        for scene in record["meta"]["target_scenes"]:
            assert not any(is_heldout(s) for s in scene.shapes), record["id"]
        for image in record["target_image"]:  # the pixels agree, not only the metadata
            assert not any(is_heldout(s) for s in detect(image).shapes), record["id"]
        for turn in record["conversations"]:
            if turn["from"] == "human" and "<image>" not in turn["value"]:
                # a generation prompt or an edit instruction never asks for a held-out pair
                assert not any(w in turn["value"] for w in heldout_words), turn["value"]


def test_heldout_pairs_appear_in_heldout_generation_eval():
    heldout = make_eval_records("generation", 40, seed=11, heldout=True)
    pairs = {(s.color, s.shape) for r in heldout for s in r["meta"]["target_scenes"][0].shapes}
    assert pairs == set(HELDOUT_COMBOS)
    for r in heldout:
        assert [(s.color, s.shape) in HELDOUT_COMBOS for s in detect(r["target_image"][0]).shapes] == [True]
    seen = make_eval_records("generation", 40, seed=11, heldout=False)
    assert not any(is_heldout(s) for r in seen for s in r["meta"]["target_scenes"][0].shapes)


def test_eval_records_are_deterministic_and_short_answers():
    a = make_eval_records("understanding", 30, seed=2)
    assert [_fingerprint(r) for r in a] == [_fingerprint(r) for r in make_eval_records("understanding", 30, seed=2)]
    for r in a:  # eval asks short questions only: exact match is the judge
        assert r["conversations"][0]["value"].endswith("Answer the question using a single word or phrase.")


def _answer_from_image(question: str, image) -> str | None:
    shapes = detect(image).shapes
    if question == "How many shapes are there?":
        return NUMBER_WORDS[len(shapes)]
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        return next(s.color for s in shapes if s.shape == m[1])
    if m := re.fullmatch(r"What shape is at the ([\w ]+)\?", question):
        return next(s.shape for s in shapes if s.position == m[1])
    if m := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
        return next(s.position for s in shapes if (s.color, s.shape) == (m[1], m[2]))
    if m := re.fullmatch(r"What color is the shape at the ([\w ]+)\?", question):
        return next(s.color for s in shapes if s.position == m[1])
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return "yes" if any((s.color, s.shape) == (m[1], m[2]) for s in shapes) else "no"
    return None


def test_understanding_answers_are_true_of_the_image():
    checked = 0
    for record in make_eval_records("understanding", 120, seed=4):
        question = record["conversations"][0]["value"].split("\n")[1]
        expected = _answer_from_image(question, record["image"])
        assert expected is not None, question
        assert record["meta"]["answers"] == [expected], question
        assert record["conversations"][1]["value"] == templates.I2T + expected
        checked += 1
    assert checked == 120


def test_training_understanding_asks_several_questions_about_one_image():
    records = make_records(200, seed=6, mix={"understanding": 1.0})
    turns = [len(r["conversations"]) // 2 for r in records]
    assert max(turns) == 3 and min(turns) == 1
    for record in records:
        humans, gpts = record["conversations"][0::2], record["conversations"][1::2]
        assert humans[0]["value"].startswith(templates.IMAGE_TOKEN)
        assert all(templates.IMAGE_TOKEN not in h["value"] for h in humans[1:])  # one image per conversation
        if humans[0]["value"].endswith("Describe the image."):
            continue
        for i, (human, gpt, answer) in enumerate(zip(humans, gpts, record["meta"]["answers"])):
            question = human["value"].split("\n")[1] if i == 0 else human["value"]
            assert _answer_from_image(question, record["image"]) == answer, question
            assert gpt["value"] == templates.I2T + answer


def test_caption_answers_describe_the_image():
    rng = random.Random(9)
    for i in range(40):
        record = GENERATORS["understanding"](rng, f"u{i}")
        if record["meta"]["answers"][0].endswith("."):
            assert record["meta"]["answers"][0] == detect(record["image"]).caption() + "."


def test_text_tasks_are_correct():
    for record in make_eval_records("text", 60, seed=6):
        question, answer = record["conversations"][0]["value"], record["meta"]["answers"][0]
        if m := re.fullmatch(r"What is (\d) plus (\d)\?", question):
            assert answer == str(int(m[1]) + int(m[2]))
        elif m := re.fullmatch(r"What letter comes after (\w)\?", question):
            assert answer == chr(ord(m[1]) + 1)
        elif m := re.fullmatch(r"Which is larger, (\d) or (\d)\?", question):
            assert m[1] != m[2] and answer == max(m[1], m[2])
        else:
            pytest.fail(f"unexpected text task {question!r}")


def test_editing_records_change_exactly_one_attribute():
    for record in make_eval_records("editing", 60, seed=8):
        source = detect(record["image"]).shapes
        target = detect(record["target_image"][0]).shapes
        assert len(source) == len(target) == 1
        assert record["meta"]["target_scenes"][0].shapes == target
        changed = [a for a in ("color", "shape", "position") if getattr(source[0], a) != getattr(target[0], a)]
        assert len(changed) == 1
        instruction = record["conversations"][0]["value"]
        assert getattr(target[0], changed[0]) in instruction


def test_multiturn_records_edit_the_generated_image_then_ask_about_it():
    for record in make_eval_records("multiturn", 40, seed=10):
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * 3
        first, second = record["meta"]["target_scenes"]
        assert detect(record["target_image"][0]) == first and detect(record["target_image"][1]) == second
        assert first.caption() in turns[0]["value"]
        assert turns[1]["value"] == templates.image_answer(f"Here is {first.caption()}.")
        assert turns[3]["value"] == templates.image_answer(f"Here is {second.caption()}.")
        edited = second.shapes[0]
        assert record["meta"]["answers"][0] in (edited.color, edited.shape, edited.position)
        assert turns[5]["value"] == templates.I2T + record["meta"]["answers"][0]


def test_chats_in_words_are_genllavas_chats_with_images_as_captions(tiny_processor):
    """The world LM's corpus: the same records, the same token layout as GenLlavaProcessor's,
    with the input image given as its (true) caption and the task tokens and image blocks left out."""
    from genllava.shapes.corpus import IMAGE_IN_WORDS, chat_corpus, chat_in_words
    from genllava.shapes.pretrain_lm import encode_pieces

    chats = list(chat_corpus(200, seed=3))
    assert chats == list(chat_corpus(200, seed=3)) and chats != list(chat_corpus(200, seed=4))
    proc, removed = tiny_processor, set(tiny_processor.task_ids.values())
    removed |= {tiny_processor.soi_id, tiny_processor.eoi_id, *tiny_processor.img_token_ids}
    for task in GENERATORS:
        for record in make_records(40, seed=5, mix={task: 1.0}):
            pieces = chat_in_words(record)
            words = [proc.bos_id] + encode_pieces(proc.tokenizer, pieces)
            if "image" in record:
                caption = record["meta"]["image_caption"]
                assert detect(record["image"]).caption() == caption  # the caption is the truth
                text = "".join(pieces)
                assert text.count(IMAGE_IN_WORDS.format(caption=caption)) == 1
                slot = encode_pieces(proc.tokenizer, [" " + IMAGE_IN_WORDS.format(caption=caption)])
                start = next(i for i in range(len(words)) if words[i:i + len(slot)] == slot)
                words[start:start + len(slot)] = [proc.image_token_id] * proc.image_seq_length
            ids = [t for t in proc.encode(parse_record(record)).input_ids if t not in removed]
            assert words == ids, task




# How each kind of question is worded (tasks.scene_question); a record's kinds must name its questions.
KIND_WORDING = {"color_of_shape": r"^What color is the (circle|square|triangle)\?$",
                "shape_at_position": r"^What shape is at the ", "position_of_shape": r"^Where is the ",
                "count": r"^How many shapes", "color_at_position": r"^What color is the shape at ",
                "is_there": r"^Is there a ", "description": r"^Describe the image\.$"}


def test_understanding_records_name_the_kind_of_each_question():
    seen = set()
    for record in make_records(300, seed=8, mix={"understanding": 1.0}):
        humans = record["conversations"][0::2]
        kinds = record["meta"]["question_kinds"]
        assert len(kinds) == len(humans) == len(record["meta"]["answers"])
        for i, (human, kind) in enumerate(zip(humans, kinds)):
            question = human["value"].split("\n")[1] if i == 0 else human["value"]
            assert re.search(KIND_WORDING[kind], question), (kind, question)
            seen.add(kind)
    assert seen == set(QUESTION_KINDS) | {"description"}


def test_reading_corpus_is_rich_in_two_shape_questions_and_labels_only_answers():
    """The LM's second stage: seeded chats, most understanding images with two shapes, and with
    `answers_only` the labels are exactly the assistant's answers, each closed by </s>."""
    from transformers import AutoTokenizer

    from genllava import presets
    from genllava.shapes.corpus import READING_MAX_QUESTIONS, chat_in_words, reading_corpus, reading_record
    from genllava.shapes.pretrain_lm import batch_of

    chats = list(reading_corpus(50, seed=3))
    assert chats == list(reading_corpus(50, seed=3)) and chats != list(reading_corpus(50, seed=4))
    rng = random.Random(0)
    records = [reading_record(rng, str(i)) for i in range(600)]
    seen = [r for r in records if r["meta"]["task"] == "understanding"]
    two = sum(r["meta"]["image_shapes"] == 2 for r in seen) / len(seen)
    assert 0.65 < two < 0.85  # half drawn with two shapes, the other half as usual (one or two)
    assert max(len(r["meta"]["answers"]) for r in seen) == READING_MAX_QUESTIONS

    tokenizer = AutoTokenizer.from_pretrained(presets.SHAPES_PRETRAINED / "tokenizer")
    record = next(r for r in seen if len(r["meta"]["answers"]) > 2)
    batch = batch_of(tokenizer, [chat_in_words(record)], answers_only=True)
    labelled = tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100])
    assert labelled == "".join(f" {a}</s>" for a in record["meta"]["answers"])
    everything = batch_of(tokenizer, [chat_in_words(record)])["labels"][0]
    assert (everything != -100).sum() == batch["attention_mask"].sum() - 1  # all but <s>
