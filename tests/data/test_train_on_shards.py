"""`genllava train --data DIR` consumes a built mixture: the path `cli._train` takes, end to end on CPU.

A mixture built from the mini fixture is streamed with `iter_records`, turned into Examples by
`prepare` with a real (tiny) GenLlavaProcessor, read by offset (`MixtureExamples`) as the trainer
reads them, and batched by the trainer's `Collator`.
"""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from genllava.data.build import build_mixture
from genllava.data.conversation import RecordError
from genllava.data.shards import iter_records
from genllava.data.templates import EOI, IMG_TOKENS, SOI, T2I, TASK_TOKENS
from genllava.model.processor import IGNORE, GenLlavaProcessor
from genllava.shapes.pretrain_vision import image_processor
from genllava.shapes.tokenizer import build_tokenizer
from genllava.train.examples import Collator, Example, SkipReport, prepare
from genllava.train.batches import MixtureExamples
from native_fixtures import write_config

IMAGE_SEQ = 16
SIZE = 32


@pytest.fixture(scope="module")
def mixture(mini, tmp_path_factory):
    """(folder, manifest) of the whole mini fixture, built."""
    folder = tmp_path_factory.mktemp("train-mixture")
    config = write_config(folder / "mix.yaml", mini[0], shard_size=8, chunk_size=6)
    return folder / "out", build_mixture(config, folder / "out")


@pytest.fixture(scope="module")
def processor():
    tokenizer = build_tokenizer(documents=500)
    GenLlavaProcessor.add_genllava_tokens(tokenizer)
    return GenLlavaProcessor(tokenizer, image_processor(SIZE), image_seq_length=IMAGE_SEQ, max_length=512)


def epoch(out, processor, seed: int, report: SkipReport | None = None) -> list[Example]:
    return list(prepare(iter_records(out, seed=seed), processor, SkipReport() if report is None else report))


def key(example: Example):
    """Everything an Example trains on, comparable."""
    image = example.image.tobytes() if example.image is not None else None
    return (tuple(example.encoded.input_ids), tuple(example.encoded.labels), image,
            tuple(t.tobytes() for t in example.targets))


def preprocess(images: list[Image.Image]) -> torch.Tensor:
    """The decoder's role in the Collator: PIL images -> (N, 3, SIZE, SIZE) floats in [-1, 1]."""
    arrays = [np.asarray(im.convert("RGB").resize((SIZE, SIZE)), dtype=np.float32) / 127.5 - 1 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_every_record_becomes_an_example_or_a_counted_skip(mixture, processor):
    out, manifest = mixture
    report = SkipReport()
    examples = epoch(out, processor, seed=0, report=report)
    assert len(examples) + report.total == manifest["records"]
    assert len(examples) > 0.9 * manifest["records"]
    assert set(report.examples) == set(report.counts)  # every skip reason names a record to look at

    ids = processor.tokenizer.convert_tokens_to_ids
    task_ids, image_id = set(ids(list(TASK_TOKENS))), processor.image_token_id
    image_answer = [ids(SOI), *ids(IMG_TOKENS), ids(EOI)]
    for example in examples:
        input_ids, labels = example.encoded.input_ids, example.encoded.labels
        supervised = [i for i, label in enumerate(labels) if label != IGNORE]
        assert len(labels) == len(input_ids) <= processor.max_length
        assert 0 < len(supervised) < len(labels)  # answers are learned, prompts are not
        assert all(labels[i] == input_ids[i] for i in supervised)
        assert labels[supervised[0]] in task_ids and image_id not in [labels[i] for i in supervised]
        assert input_ids.count(image_id) == (IMAGE_SEQ if example.image is not None else 0)
        # each target image is answered with [T2I] ... [SOI][IMG0..15][EOI], and only those; the
        # model predicts up to [SOI], the code places the rest
        answer = [labels[i] for i in supervised]
        assert example.encoded.image_answers == len(example.targets) == answer.count(ids(T2I)) == answer.count(ids(SOI))
        assert sum(input_ids[i:i + len(image_answer)] == image_answer for i in range(len(input_ids))) == len(example.targets)
        assert not set(image_answer[1:]) & set(answer)
        assert all(isinstance(t, Image.Image) and t.mode == "RGB" for t in example.targets)

    generation = [e for e in examples if e.targets and e.image is None]
    editing = [e for e in examples if e.targets and e.image is not None]
    understanding = [e for e in examples if e.image is not None and not e.targets]
    assert generation and editing and understanding
    tasks = manifest["tasks"]
    assert len(generation) + len(editing) <= tasks["generation"]["count"] + tasks["editing"]["count"]


def test_random_access_reads_every_record_as_the_stream_does(mixture, processor):
    """MixtureExamples (what `genllava train --data` trains on) reads records by offset from the
    shards: the same examples, and the same skips, as streaming the whole mixture."""
    out, manifest = mixture
    source = MixtureExamples(out, processor)
    assert len(source) == manifest["records"]
    read, skipped = [], Counter()
    for index in range(len(source)):
        try:
            example = source[index]
        except RecordError as err:
            skipped[err.reason] += 1
            continue
        read.append(example)
        assert (source.length(index) > 0) == (example.image is not None)  # LLaVA's modality sign
    report = SkipReport()
    streamed = epoch(out, processor, seed=0, report=report)
    assert sorted(map(key, read)) == sorted(map(key, streamed))
    assert skipped == report.counts
    first, second = epoch(out, processor, seed=0), epoch(out, processor, seed=1)
    assert list(map(key, first)) != list(map(key, second))  # the stream's own order follows its seed
    clone = pickle.loads(pickle.dumps(source))  # what a loader worker started by spawn receives
    assert key(clone[len(source) - 1]) == key(source[len(source) - 1])


def test_collated_batch_is_consistent(mixture, processor):
    out, _ = mixture
    examples = epoch(out, processor, seed=0)
    pick = [next(e for e in examples if bool(e.image) == has_image and bool(e.targets) == has_target)
            for has_image, has_target in ((False, True), (True, True), (True, False), (False, False))]
    batch = Collator(processor, preprocess)(pick)

    lengths = [len(e.encoded.input_ids) for e in pick]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert ((batch["labels"] != IGNORE).sum(1) > 0).all()

    with_image = sum(e.image is not None for e in pick)
    assert batch["pixel_values"].shape == (with_image, 3, SIZE, SIZE)
    assert (batch["input_ids"] == processor.image_token_id).sum() == IMAGE_SEQ * with_image

    targets = sum(len(e.targets) for e in pick)
    assert batch["target_pixels"].shape == (targets, 3, SIZE, SIZE) and batch["target_pixels"].dtype == torch.float32
    assert (batch["labels"] == processor.soi_id).sum() == targets
    assert batch["target_captions"] is None or len(batch["target_captions"]) == targets
