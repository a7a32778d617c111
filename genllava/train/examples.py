"""Training examples: records -> encoded examples -> batches (parse, encode with per-turn label
masking, and batch with the model's processor).

Records that cannot be trained on (broken, or whose answers were all truncated away) are
skipped and counted by reason, never trained on silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..data.conversation import RecordError, parse_record
from ..model.processor import IGNORE, Encoded, GenLlavaProcessor


@dataclass
class Example:
    encoded: Encoded
    image: Image.Image | None
    targets: list[Image.Image]
    captions: list[str]


@dataclass
class SkipReport:
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one record id, to look at

    def add(self, reason: str, record_id) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, str(record_id))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def to_example(record: dict, processor: GenLlavaProcessor) -> Example:
    """Raises RecordError with the reason when the record cannot be trained on."""
    messages = parse_record(record)
    encoded = processor.encode(messages)
    if all(label == IGNORE for label in encoded.labels):
        raise RecordError("all labels masked (first exchange longer than max_length)", record.get("id"))
    targets = list(record.get("target_image") or [])[: encoded.image_answers]
    captions = list(record.get("target_caption") or [])[: encoded.image_answers]
    if encoded.image_answers == 0 or len(captions) != len(targets):
        captions = []
    kept_image = record.get("image") if any(t == processor.image_token_id for t in encoded.input_ids) else None
    return Example(encoded, kept_image, targets, captions)


def prepare(records, processor: GenLlavaProcessor, report: SkipReport):
    """Yields Examples; skipped records go to `report` with their reason."""
    for record in records:
        try:
            if not isinstance(record, dict):
                raise RecordError("a record is not an object")
            yield to_example(record, processor)
        except RecordError as err:
            report.add(err.reason, record.get("id") if isinstance(record, dict) else None)


class Collator:
    def __init__(self, processor: GenLlavaProcessor, preprocess_targets):
        self.processor, self.preprocess_targets = processor, preprocess_targets

    def __call__(self, examples: list[Example]) -> dict:
        proc = self.processor
        input_ids, attention_mask = proc.pad([e.encoded.input_ids for e in examples], left=False)
        labels, _ = proc.pad([e.encoded.labels for e in examples], left=False, value=IGNORE)
        images = [e.image for e in examples if e.image is not None]
        targets = [t for e in examples for t in e.targets]
        captions = [c for e in examples for c in e.captions]
        return {
            "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "pixel_values": proc.pixel_values(images) if images else None,
            "target_pixels": self.preprocess_targets(targets) if targets else None,
            "target_captions": captions if len(captions) == len(targets) else None,
        }
