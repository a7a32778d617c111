"""GenLlavaProcessor and the record pipeline: per-turn label masking, image-slot expansion, no
special-token injection from user text, whole-exchange truncation, and malformed records
counted (never trained on, never crashing)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from genllava.data import templates
from genllava.data.conversation import ASSISTANT, Message, RecordError, parse_record, parse_turn, user
from genllava.model.processor import IGNORE, GenLlavaProcessor
from genllava.shapes.tasks import make_eval_records, make_records
from genllava.shapes.world import Scene, Shape, render
from genllava.train.examples import Collator, SkipReport, prepare, to_example

RED = Scene((Shape("red", "circle", "center"),))


def with_max_length(proc: GenLlavaProcessor, max_length: int) -> GenLlavaProcessor:
    return GenLlavaProcessor(proc.tokenizer, proc.image_processor, proc.image_seq_length, max_length)


def special_ids(proc: GenLlavaProcessor) -> set[int]:
    """Every id that must never come out of user text."""
    ids = {proc.image_token_id, *proc.img_token_ids, *proc.task_ids.values(), proc.soi_id, proc.eoi_id,
           proc.bos_id, proc.eos_id, proc.pad_id}
    ids |= set(proc.tokenizer.convert_tokens_to_ids(proc.tokenizer.all_special_tokens))
    return ids


def labelled_spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE]):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            spans.append((start, i))
            start = None
    return spans


def two_exchange_record() -> dict:
    return {"id": "two", "image": render(RED),
            "conversations": [{"from": "human", "value": "<image>\nWhat color is the circle?"},
                              {"from": "gpt", "value": templates.text_answer("red")},
                              {"from": "human", "value": "Generate an image of a blue square at the top left."},
                              {"from": "gpt", "value": templates.image_answer()}],
            "target_image": [render(Scene((Shape("blue", "square", "top left"),)))]}


# ---- layout and label masking ---------------------------------------------------------------------

def test_tokens_exist_and_are_single_ids(tiny_processor):
    proc, tok = tiny_processor, tiny_processor.tokenizer
    for token in templates.ADDED_TOKENS:
        ids = tok.convert_tokens_to_ids(token)
        assert isinstance(ids, int) and ids != tok.unk_token_id
    assert len(set(proc.img_token_ids)) == templates.NUM_IMG_TOKENS
    assert proc.pad_id is not None and proc.pad_id not in (proc.eos_id, *proc.img_token_ids)


def test_labels_only_on_assistant_answers(tiny_processor):
    proc = tiny_processor
    encoded = proc.encode(parse_record(two_exchange_record()))
    ids, labels = encoded.input_ids, encoded.labels
    assert len(ids) == len(labels)
    assert encoded.image_answers == 1
    assert ids[0] == proc.bos_id and labels[0] == IGNORE

    spans = labelled_spans(labels)
    # The image answer's [IMG0..15][EOI] are placed by the code at inference, never predicted.
    assert len(spans) == 3
    first, second, third = ([ids[i] for i in range(a, b)] for a, b in spans)
    assert first == [proc.task_ids[templates.I2T], *proc._content("red"), proc.eos_id]
    assert second == [proc.task_ids[templates.T2I], proc.soi_id]
    assert third == [proc.eos_id]
    placed = spans[1][1]
    assert ids[placed:spans[2][0]] == [*proc.img_token_ids, proc.eoi_id]
    for a, b in spans:  # where there is a label it is the input id itself (the LM shifts)
        assert labels[a:b] == ids[a:b]
    for a, _ in spans[:2]:  # every answer is preceded by the (unlabelled) assistant prefix
        assert ids[a - len(proc._assistant):a] == proc._assistant
    decoded = [proc.tokenizer.decode([ids[i] for i in range(a, b)]) for a, b in spans]
    assert decoded[0].replace(" ", "") == "[I2T]red</s>"
    assert decoded[1].replace(" ", "") == "[T2I][SOI]"
    assert proc.decode([ids[i] for i in range(*spans[0])]) == "red"
    # nothing else is labelled: system prompt, user turns, prefixes, newlines
    assert sum(label != IGNORE for label in labels) == len(first) + len(second) + len(third)
    user_text = proc._content("What color is the circle?")
    at = next(i for i in range(len(ids)) if ids[i:i + len(user_text)] == user_text)
    assert all(label == IGNORE for label in labels[:at + len(user_text)])


# The shapes tokenizer's ids for a multi-turn chat with an input image and image answers, as the
# shipped shapes model was trained and measured with: a change to the processor must not move one.
PINNED_CHAT = [user("What color is the circle?\nAnswer in one word.", has_image=True),
               Message(ASSISTANT, "red", task=templates.I2T),
               user("Generate an image of a blue square at the top left."),
               Message(ASSISTANT, "Here is a blue square.", task=templates.T2I, image_answer=True),
               user("Now make it  green."),
               Message(ASSISTANT, "", task=templates.T2I, image_answer=True)]
PINNED_IDS = [
    1, 36, 532, 556, 260, 555, 538, 333, 270, 553, 558, 511, 17, 545, 511, 557, 15, 559, 333, 542, 535, 15, 333, 554,
    552, 17, 202, 202, 298, 29, *[560] * 16, 202, 328, 359, 268, 265, 321, 34, 202, 398, 262, 81, 466, 400, 17, 202,
    301, 29, 578, 337, 2, 202, 298, 29, 224, 451, 270, 277, 279, 260, 335, 317, 267, 265, 305, 311, 17, 202, 301, 29,
    577, 413, 72, 266, 268, 260, 335, 317, 17, 579, *range(561, 577), 580, 2, 202, 298, 29, 491, 428, 464, 352, 224,
    347, 17, 202, 301, 29, 577, 579, *range(561, 577), 580, 2, 202]


def test_shapes_tokenizer_ids_are_pinned(tiny_processor):
    proc = tiny_processor
    assert not proc._prepends  # byte-level BPE: every piece tokenized on its own
    encoded = proc.encode(PINNED_CHAT)
    assert encoded.input_ids == PINNED_IDS and encoded.image_answers == 2
    assert proc.encode_prompt(PINNED_CHAT[:5]) == PINNED_IDS[:-21]  # all but [T2I][SOI][IMG0..15][EOI]</s>\n
    labelled = [t for t in encoded.labels if t != IGNORE]
    assert labelled == [578, 337, 2, 577, 413, 72, 266, 268, 260, 335, 317, 17, 579, 2, 577, 579, 2]


def test_image_placeholder_expands_before_user_text(tiny_processor):
    proc = tiny_processor
    assert proc.image_seq_length == 16  # (32 / patch 8) ** 2 of the tiny SigLIP
    ids = proc.encode(parse_record(two_exchange_record())).input_ids
    slots = [i for i, t in enumerate(ids) if t == proc.image_token_id]
    assert len(slots) == proc.image_seq_length
    assert slots == list(range(slots[0], slots[0] + proc.image_seq_length))  # contiguous
    head = [proc.bos_id] + proc._system + proc._user
    assert slots[0] == len(head) and ids[:len(head)] == head  # right after "USER: "
    after = slots[-1] + 1
    text = proc._newline + proc._content("What color is the circle?")
    assert ids[after:after + len(text)] == text  # then the user's text
    # with an image the processor makes pixel values of the tower's size
    pixels = proc.pixel_values([render(RED, 64)])
    assert tuple(pixels.shape) == (1, 3, 32, 32)


def test_no_image_no_slots(tiny_processor):
    proc = tiny_processor
    ids = proc.encode([user("What is 2 plus 3?"), Message(ASSISTANT, "5", task=templates.I2T)]).input_ids
    assert proc.image_token_id not in ids


def test_training_and_inference_encodings_agree(tiny_processor):
    """encode_prompt(history + new user turn) is exactly the prefix of encode(...) before the answer."""
    proc = tiny_processor
    messages = parse_record(two_exchange_record())
    full = proc.encode(messages)
    for turns in (1, 3):
        prompt = proc.encode_prompt(messages[:turns])
        assert full.input_ids[:len(prompt)] == prompt
        assert full.labels[len(prompt)] != IGNORE  # the next token is the (trained) task token
        assert full.input_ids[len(prompt)] in proc.task_ids.values()
        forced = proc.encode_prompt(messages[:turns], task=templates.T2I)
        assert forced == prompt + [proc.task_ids[templates.T2I]]


@pytest.mark.parametrize("text", ["<image>", "Describe <image> and [IMG3] please", "[T2I] draw [SOI][IMG0][EOI]",
                                  "</s><s><pad> [I2T] <unk>"])
def test_user_text_cannot_inject_special_tokens(tiny_processor, text):
    proc = tiny_processor
    forbidden = special_ids(proc)
    message = Message("user", text)  # typed by a user: plain text, whatever it looks like
    prompt = proc.encode_prompt([message])
    assert prompt[0] == proc.bos_id
    assert not forbidden & set(prompt[1:]), [proc.tokenizer.convert_ids_to_tokens(i) for i in prompt]
    assert proc.tokenizer.decode(proc._text(text)) == text  # kept as the text it is
    encoded = proc.encode([message, Message(ASSISTANT, "ok", task=templates.I2T)])
    ids = encoded.input_ids
    assert ids.count(proc.image_token_id) == 0
    assert not set(proc.img_token_ids) & set(ids)
    assert [i for i in ids if i in forbidden] == [proc.bos_id, proc.task_ids[templates.I2T], proc.eos_id]
    forced = proc.encode_prompt([message], task=templates.T2I)
    assert [i for i in forced if i in forbidden] == [proc.bos_id, proc.task_ids[templates.T2I]]


def test_record_text_that_looks_like_tokens_stays_text(tiny_processor):
    """The record contract refuses control-token text in records (one check, records.py); a
    message built in code keeps it as plain text."""
    proc = tiny_processor
    record = {"id": "inj", "conversations": [
        {"from": "human", "value": "What does [IMG3] or [T2I] mean?"},
        {"from": "gpt", "value": "[I2T]They are [SOI] markers, not [EOI] tokens."}]}
    with pytest.raises(RecordError, match="special tokens"):
        parse_record(record)
    messages = [parse_turn(turn) for turn in record["conversations"]]
    encoded = proc.encode(messages)
    ids = encoded.input_ids
    assert [i for i in ids if i in special_ids(proc)] == [proc.bos_id, proc.task_ids[templates.I2T], proc.eos_id]
    assert encoded.image_answers == 0


def test_parse_turn_reads_the_llava_convention():
    assert parse_turn({"from": "human", "value": "<image>\nWhat is it?"}) == Message("user", "What is it?", has_image=True)
    assert parse_turn({"from": "gpt", "value": "[I2T]red"}) == Message(ASSISTANT, "red", task=templates.I2T)
    assert parse_turn({"from": "gpt", "value": "plain"}) == Message(ASSISTANT, "plain", task=templates.I2T)
    image = parse_turn({"from": "gpt", "value": templates.image_answer("Here it is.")})
    assert image == Message(ASSISTANT, "Here it is.", task=templates.T2I, image_answer=True)


# ---- truncation ----------------------------------------------------------------------------------

def test_overlong_conversations_drop_whole_trailing_exchanges(tiny_processor):
    record = make_eval_records("multiturn", 1, seed=0)[0]  # three exchanges, two image answers
    messages = parse_record(record)
    full = tiny_processor.encode(messages)
    assert full.image_answers == 2
    eos = tiny_processor.eos_id

    def answers(labels):  # labelled spans that end an answer (an image answer's [IMG*][EOI] are unlabelled)
        return [(a, b) for a, b in labelled_spans(labels) if labels[b - 1] == eos]

    spans = answers(full.labels)
    assert len(spans) == 3
    # each exchange ends with its answer's </s> and a newline
    ends = [b + len(tiny_processor._newline) for _, b in spans]
    assert ends[-1] == len(full.input_ids)
    for kept, end in ((2, ends[1]), (1, ends[0])):
        for max_length in (end, end + 1, ends[kept] - 1):  # fits exactly .. one short of the next
            proc = with_max_length(tiny_processor, max_length)
            encoded = proc.encode(messages)
            assert encoded.input_ids == full.input_ids[:end], (kept, max_length)
            assert encoded.labels == full.labels[:end]
            assert encoded.image_answers == kept
            assert len(answers(encoded.labels)) == kept
        example = to_example(record, with_max_length(tiny_processor, end))
        assert len(example.targets) == kept and len(example.captions) == kept
        assert example.targets == record["target_image"][:kept]
        assert example.captions == record["target_caption"][:kept]


def test_first_exchange_too_long_is_skipped_and_reported(tiny_processor):
    records = make_records(6, seed=1, mix={"understanding": 1.0})
    ok = len(tiny_processor.encode(parse_record(records[0])).input_ids)
    proc = with_max_length(tiny_processor, ok - 1)
    long = dict(records[0], id="too-long")
    report = SkipReport()
    kept = list(prepare([long], proc, report))
    assert kept == []
    assert report.total == 1
    (reason, count), = report.counts.items()
    assert count == 1 and "all labels masked" in reason and "max_length" in reason
    assert report.examples[reason] == "too-long"
    # the same record fits the normal processor
    assert len(list(prepare([long], tiny_processor, SkipReport()))) == 1


def test_image_dropped_with_its_truncated_exchange(tiny_processor):
    record = {"id": "late-image", "image": render(RED),
              "conversations": [{"from": "human", "value": "What is 1 plus 1?"},
                                {"from": "gpt", "value": "[I2T]2"},
                                {"from": "human", "value": "<image>\nWhat color is the circle?"},
                                {"from": "gpt", "value": "[I2T]red"}]}
    full = to_example(record, tiny_processor)
    assert full.image is record["image"]
    first_end = labelled_spans(full.encoded.labels)[0][1] + len(tiny_processor._newline)
    cut = to_example(record, with_max_length(tiny_processor, first_end))
    assert cut.image is None  # its slots were truncated away: no pixels for them in the batch
    assert tiny_processor.image_token_id not in cut.encoded.input_ids


def test_encode_prompt_over_max_length_raises(tiny_processor):
    proc = with_max_length(tiny_processor, 64)
    proc.encode_prompt([user("short")])
    with pytest.raises(ValueError, match=r"over the model's limit of 64"):
        proc.encode_prompt([user("word " * 200)])


# ---- malformed records ---------------------------------------------------------------------------

def _target():
    return render(RED)


MALFORMED = {
    "not alternating": {"conversations": [{"from": "human", "value": "hi"}, {"from": "human", "value": "again"}]},
    "starts with gpt": {"conversations": [{"from": "gpt", "value": "[I2T]hi"}, {"from": "human", "value": "x"}]},
    "empty answer": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]},
    "answer only a task token": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "[I2T]  "}]},
    "<image> without image": {"conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                {"from": "gpt", "value": "[I2T]red"}]},
    "image without <image>": {"image": "IMAGE", "conversations": [{"from": "human", "value": "What?"},
                                                                  {"from": "gpt", "value": "[I2T]red"}]},
    "two <image> in a turn": {"image": "IMAGE", "conversations": [{"from": "human", "value": "<image><image>\nWhat?"},
                                                                  {"from": "gpt", "value": "[I2T]red"}]},
    "image answer without target": {"conversations": [{"from": "human", "value": "Draw a red circle."},
                                                      {"from": "gpt", "value": templates.image_answer()}]},
    "target without image answer": {"target_image": ["TARGET"],
                                    "conversations": [{"from": "human", "value": "Draw a red circle."},
                                                      {"from": "gpt", "value": "[T2I]sure"}]},
    "unknown role": {"conversations": [{"from": "system", "value": "x"}, {"from": "gpt", "value": "[I2T]y"}]},
    "value not a string": {"conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "[I2T]y"}]},
    "no conversations": {},
    "empty conversations": {"conversations": []},
    "conversations not a list": {"conversations": "hello"},
}


def _materialise(name: str, spec: dict) -> dict:
    record = {"id": name, **spec}
    if record.get("image") == "IMAGE":
        record["image"] = render(RED)
    if record.get("target_image") == ["TARGET"]:
        record["target_image"] = [_target()]
    return record


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_record_raises_record_error(name, tiny_processor):
    record = _materialise(name, MALFORMED[name])
    with pytest.raises(RecordError):
        to_example(record, tiny_processor)


def test_prepare_counts_malformed_records_and_keeps_good_ones(tiny_processor):
    good = make_records(8, seed=2)
    bad = [_materialise(name, spec) for name, spec in MALFORMED.items()]
    mixed = [x for pair in zip(good, bad) for x in pair] + bad[len(good):]
    report = SkipReport()
    examples = list(prepare(mixed, tiny_processor, report))
    assert len(examples) == len(good)
    assert [e.encoded.input_ids for e in examples] == [tiny_processor.encode(parse_record(r)).input_ids for r in good]
    assert report.total == len(bad)
    assert set(report.examples.values()) <= set(MALFORMED)
    reasons = " | ".join(report.counts)
    for phrase in ("alternate", "empty answer", "placeholders", "target_image", "more than one <image>"):
        assert phrase in reasons


def test_skip_report_groups_equal_problems_under_one_reason(tiny_processor):
    records = [{"id": "a", "conversations": []}, {"id": "b"},
               {"id": "c", "conversations": [{"from": "system", "value": "x"}, {"from": "gpt", "value": "y"}]},
               {"id": "d", "conversations": [{"from": "robot", "value": "z"}, {"from": "gpt", "value": "y"}]}]
    report = SkipReport()
    assert list(prepare(records, tiny_processor, report)) == []
    assert report.total == 4
    assert len(report.counts) == 2, dict(report.counts)  # "no conversations" x2, "bad turn" x2


def test_prepare_survives_turns_that_are_not_objects(tiny_processor):
    report = SkipReport()
    records = [{"id": "strings", "conversations": ["hello", "hi"]}, make_records(1, seed=0)[0]]
    assert len(list(prepare(records, tiny_processor, report))) == 1
    assert report.total == 1


# ---- batching --------------------------------------------------------------------------------------

def test_pad_left_and_right(tiny_processor):
    proc = tiny_processor
    ids, mask = proc.pad([[5, 6, 7], [8]], left=True)
    assert ids.tolist() == [[5, 6, 7], [proc.pad_id, proc.pad_id, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = proc.pad([[5, 6, 7], [8]], left=False, value=IGNORE)
    assert ids.tolist() == [[5, 6, 7], [8, IGNORE, IGNORE]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_collator_batches_images_targets_and_labels(tiny_processor):
    records = [make_eval_records(task, 1, seed=3)[0] for task in ("understanding", "text", "generation", "multiturn",
                                                                    "editing")]
    examples = list(prepare(records, tiny_processor, SkipReport()))
    assert len(examples) == 5
    seen = []
    collate = Collator(tiny_processor, lambda images: seen.append(list(images)) or torch.zeros(len(images), 3, 32, 32))
    batch = collate(examples)
    lengths = [len(e.encoded.input_ids) for e in examples]
    assert batch["input_ids"].shape == (5, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, e in enumerate(examples):
        n = lengths[row]
        assert batch["input_ids"][row, :n].tolist() == e.encoded.input_ids  # right padded
        assert batch["labels"][row, :n].tolist() == e.encoded.labels
        assert (batch["labels"][row, n:] == IGNORE).all()
        assert (batch["input_ids"][row, n:] == tiny_processor.pad_id).all()
    assert batch["pixel_values"].shape[0] == 2  # understanding + editing carry an input image
    # targets in batch order: generation (1), multiturn (2), editing (1)
    assert seen == [records[2]["target_image"] + records[3]["target_image"] + records[4]["target_image"]]
    assert batch["target_pixels"].shape[0] == 4
    assert batch["target_captions"] == (records[2]["target_caption"] + records[3]["target_caption"]
                                        + records[4]["target_caption"])
    # the image-answer blocks in input_ids are exactly as many as the targets, in the same order
    img0 = tiny_processor.img_token_ids[0]
    assert int((batch["input_ids"] == img0).sum()) == 4


def test_processor_round_trip(tiny_processor, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    loaded = GenLlavaProcessor.from_pretrained(tmp_path)
    assert loaded.image_seq_length == tiny_processor.image_seq_length
    assert loaded.max_length == tiny_processor.max_length
    messages = parse_record(two_exchange_record())
    assert loaded.encode(messages) == tiny_processor.encode(messages)
    assert loaded.encode_prompt(messages[:3], task=templates.T2I) == tiny_processor.encode_prompt(messages[:3], task=templates.T2I)
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert torch.equal(loaded.pixel_values([image]), tiny_processor.pixel_values([image]))


def test_processor_refuses_a_tokenizer_without_genllava_tokens(tiny_components):
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_components / "language")
    with pytest.raises(ValueError, match="add_genllava_tokens"):
        GenLlavaProcessor(tokenizer, AutoImageProcessor.from_pretrained(tiny_components / "vision"), 16)


# ---- the saved chat template ------------------------------------------------------------------------

def test_saved_chat_template_gives_the_processors_ids(tiny_processor, tmp_path):
    """`apply_chat_template` on the saved tokenizer yields exactly the ids the processor trains and
    prompts with: multi-turn chats, an input image, image answers with and without words."""
    from transformers import AutoTokenizer

    from genllava.data.conversation import chat_messages

    tiny_processor.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    multiturn = {"id": "multi", "image": None, "target_image": [render(RED), render(RED)],
                 "conversations": [{"from": "human", "value": "Generate an image of a red circle at the center."},
                                   {"from": "gpt", "value": templates.image_answer("Here is a red circle at the center.")},
                                   {"from": "human", "value": "Now make it blue."},
                                   {"from": "gpt", "value": templates.image_answer()},
                                   {"from": "human", "value": "Write the word red backwards."},
                                   {"from": "gpt", "value": templates.text_answer("der")}]}
    records = [two_exchange_record(), multiturn, *make_records(6, seed=3)]
    for record in records:
        messages = parse_record(record)
        chat = chat_messages(messages)
        assert tokenizer.apply_chat_template(chat, tokenize=True, return_dict=False) == tiny_processor.encode(messages).input_ids
        prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True, return_dict=False)
        assert prompt == tiny_processor.encode_prompt(messages[:-1])
