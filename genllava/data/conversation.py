"""Conversations as typed messages, parsed from LLaVA-style records.

Records keep the LLaVA convention users have on disk (`<image>` in a human turn; task tokens and
the image-answer block in a gpt turn). Parsing turns them into Messages, so the processor never
has to trust special-token text: a user's literal "<image>" or "[IMG3]" stays plain text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import conversation_problem
from .templates import I2T, IMAGE_ANSWER, IMAGE_TOKEN, T2I

USER, ASSISTANT = "user", "assistant"
_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}


class RecordError(ValueError):
    """A record that cannot be trained on. `reason` is a fixed phrase (what reports count by);
    the message adds which record."""

    def __init__(self, reason: str, record_id=None):
        self.reason, self.record_id = reason, record_id
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


def chat_messages(messages: list[Message]) -> list[dict]:
    """Messages in transformers' chat format, for `templates.chat_template`: content parts with
    `{"type": "image"}` for an input image (user) or an image answer (assistant)."""
    chat = []
    for m in messages:
        image = m.has_image if m.role == USER else m.image_answer
        content = ([{"type": "image"}] if image and m.role == USER else []) + [{"type": "text", "text": m.text}]
        chat.append({"role": m.role, "content": content + ([{"type": "image"}] if image and m.role == ASSISTANT else [])})
    return chat


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


# records.conversation_problem's skip reasons, as the phrases training reports count by.
_PROBLEMS = {
    "bad_record": "a turn lacks its task token, or image answers do not match the target_image count",
    "not_alternating": "turns must alternate human/gpt, starting with human and ending with gpt",
    "image_token_mismatch": "<image> placeholders do not match the image given",
    "special_token_in_text": "text holds one of genllava's special tokens",
    "empty_question": "empty question",
    "empty_answer": "empty answer",
}


def parse_record(record: dict) -> list[Message]:
    """Messages of a record that meets the record contract (`records.conversation_problem`, the
    one check the builder, the loader and training share); raises RecordError otherwise."""
    rid = record.get("id")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError("no conversations", rid)
    try:
        messages = [parse_turn(t) for t in turns]
    except RecordError as err:
        raise RecordError(err.reason, rid) from None
    problem = conversation_problem(turns, record.get("image") is not None, len(record.get("target_image") or []))
    if problem:
        raise RecordError(_PROBLEMS[problem], rid)
    return messages
