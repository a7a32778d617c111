"""Conversations as typed messages, parsed from LLaVA-style records.

Records keep the LLaVA convention users have on disk (`<image>` in a human turn; task tokens and
the image-answer block in a gpt turn). Parsing turns them into Messages, so the processor never
has to trust special-token text: a user's literal "<image>" or "[IMG3]" stays plain text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .templates import I2T, IMAGE_ANSWER, IMAGE_TOKEN, T2I

USER, ASSISTANT = "user", "assistant"
_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}


class RecordError(ValueError):
    """A record that cannot be trained on. `reason` is a fixed phrase (what reports count by);
    the message adds which record."""

    def __init__(self, reason: str, record_id=None):
        self.reason = reason
        super().__init__(reason if record_id is None else f"record {record_id!r}: {reason}")


@dataclass(frozen=True)
class Message:
    role: str  # "user" or "assistant"
    text: str
    has_image: bool = False  # user turn: the input image's patches come before the text
    task: str | None = None  # assistant turn: T2I or I2T
    image_answer: bool = False  # assistant turn: ends with [SOI][IMG0..15][EOI]


def user(text: str, has_image: bool = False) -> Message:
    return Message(USER, text, has_image=has_image)


def parse_turn(turn: dict) -> Message:
    if not isinstance(turn, dict):
        raise RecordError("a turn is not an object with 'from' and 'value'")
    role = _ROLES.get(turn.get("from"))
    value = turn.get("value")
    if role is None or not isinstance(value, str):
        raise RecordError("a turn needs 'from' (human|gpt) and a string 'value'")
    if role == USER:
        has_image = IMAGE_TOKEN in value
        if value.count(IMAGE_TOKEN) > 1:
            raise RecordError("a turn holds more than one <image>")
        return Message(USER, value.replace(IMAGE_TOKEN, "").strip(), has_image=has_image)
    task = T2I if value.startswith(T2I) else I2T if value.startswith(I2T) else None
    if task:
        value = value[len(task):]
    image_answer = value.endswith(IMAGE_ANSWER)
    if image_answer:
        value = value[: -len(IMAGE_ANSWER)]
    task = task or (T2I if image_answer else I2T)
    return Message(ASSISTANT, value.strip(), task=task, image_answer=image_answer)


def parse_record(record: dict) -> list[Message]:
    """Messages of a record; checks alternation and that images match their placeholders."""
    rid = record.get("id")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("no conversations", rid)
    try:
        messages = [parse_turn(t) for t in turns]
    except RecordError as err:
        raise RecordError(err.reason, rid) from None
    for i, m in enumerate(messages):
        if m.role != (USER if i % 2 == 0 else ASSISTANT):
            raise RecordError("turns must alternate human/gpt, starting with human", rid)
        if m.role == ASSISTANT and not m.text and not m.image_answer:
            raise RecordError("empty answer", rid)
    if len(messages) % 2:
        raise RecordError("the last human turn has no answer", rid)
    if sum(m.has_image for m in messages) != (1 if record.get("image") is not None else 0):
        raise RecordError("<image> placeholders do not match the image given", rid)
    targets = record.get("target_image") or []
    if sum(m.image_answer for m in messages) != len(targets):
        raise RecordError("image answers do not match the target_image count", rid)
    return messages
