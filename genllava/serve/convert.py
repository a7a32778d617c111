"""OpenAI chat messages -> genllava's typed Messages and images.

The API is stateless: a client sends the whole history back. A user message's image parts are
input images (the model reads one per user turn); an assistant message carrying `images` (as this
server returns them) or image parts is that turn's image answer, which the model sees as its
[SOI][IMG0..15][EOI] block. The last image of the conversation, sent or drawn, is where an edit
with strength < 1 starts. System messages are accepted and ignored: the model was trained with
its own fixed system prompt."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from PIL import Image

from ..data import templates
from ..data.conversation import ASSISTANT, USER, Message
from .errors import APIError, bad_request
from .limits import Limits
from .media import load_image_url
from .schemas import ChatMessage, ImagePart, TextPart


@dataclass
class Conversation:
    messages: list[Message]
    images: list[Image.Image] = field(default_factory=list)  # the user turns' images, in order
    latest: Image.Image | None = None  # the last image sent or drawn: SDEdit's start


_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which the tokenizer cannot encode: U+FFFD instead."""
    return _SURROGATE.sub("\ufffd", text)


def check_text(text: str, param: str) -> None:
    """Text is text: a literal control token would say something the user cannot mean."""
    found = next((t for t in templates.ADDED_TOKENS if t in text), None)
    if found is not None:
        raise bad_request(f"{param} holds {found!r}, one of genllava's control tokens; they cannot appear in "
                          "text (remove it, or spell it differently)", param, "special_token_in_text")


def _parts(message: ChatMessage) -> tuple[list[str], list[ImagePart]]:
    content = message.content
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    return ([p.text for p in content if isinstance(p, TextPart)], [p for p in content if isinstance(p, ImagePart)])


def count_images(messages: list[ChatMessage]) -> int:
    return sum(len(_parts(m)[1]) + len(m.images or []) for m in messages if m.role in (USER, ASSISTANT))


def to_conversation(messages: list[ChatMessage], limits: Limits) -> Conversation:
    total = count_images(messages)
    if total > limits.max_images:
        raise bad_request(f"the request holds {total} images, over the limit of {limits.max_images}", "messages",
                          "too_many_images")
    turns: list[dict] = []  # {"role", "texts", "images", "index"}
    for index, message in enumerate(messages):
        if message.role in ("system", "developer"):
            continue
        param = f"messages[{index}]"
        texts, parts = _parts(message)
        texts = [clean_text(t) for t in texts]
        if message.role == ASSISTANT:
            parts = parts + list(message.images or [])
        for text in texts:
            check_text(text, f"{param}.content")
        images = [load_image_url(p.image_url.url, limits, f"{param}.content.image_url") for p in parts]
        if turns and turns[-1]["role"] == message.role == USER:  # consecutive user messages: one turn
            turns[-1]["texts"] += texts
            turns[-1]["images"] += images
            continue
        if turns and turns[-1]["role"] == message.role:
            raise bad_request(f"{param}: two assistant messages in a row; messages must alternate user and "
                              "assistant", "messages", "invalid_conversation")
        turns.append({"role": message.role, "texts": texts, "images": images, "param": param})
    if not turns or turns[0]["role"] != USER:
        raise bad_request("the conversation must start with a user message", "messages", "invalid_conversation")
    if turns[-1]["role"] != USER:
        raise bad_request("the last message must be the user's", "messages", "invalid_conversation")
    out, user_images, latest = [], [], None
    for turn in turns:
        text = "\n".join(t.strip() for t in turn["texts"] if t.strip())
        if len(turn["images"]) > 1:
            what = "user turn" if turn["role"] == USER else "assistant answer"
            raise bad_request(f"{turn['param']}: a {what} holds {len(turn['images'])} images; the model reads "
                              "one per turn (send each image in its own turn)", "messages", "too_many_images")
        image = turn["images"][0] if turn["images"] else None
        if turn["role"] == USER:
            out.append(Message(USER, text, has_image=image is not None))
            if image is not None:
                user_images.append(image)
        else:
            answer = image is not None
            out.append(Message(ASSISTANT, text, task=templates.T2I if answer else templates.I2T, image_answer=answer))
        latest = image if image is not None else latest
    if not out[-1].text:
        raise bad_request(f"{turns[-1]['param']}: empty message; ask a question, or ask for an image or an edit",
                          "messages", "empty_message")
    return Conversation(out, user_images, latest)


TASKS = {None: None, "auto": None, "image": templates.T2I, "text": templates.I2T, templates.T2I: templates.T2I,
         templates.I2T: templates.I2T}


def task_of(value: str | None) -> str | None:
    if value not in TASKS:
        raise APIError(400, f"task must be auto, image or text, got {value!r}", "task", "invalid_value")
    return TASKS[value]
