"""GenLlavaProcessor: turns messages and images into the token sequence the model reads.

Layout of one conversation (each piece tokenized on its own, so training and inference always
produce the same ids, and user text can never turn into a special token):

    <s> SYSTEM \n\n  USER: <image>*P \n ␣text \n  ASSISTANT: [I2T] ␣answer </s> \n  USER: ...

The fixed pieces (system prompt, USER:, ASSISTANT:) are tokenized as texts of their own; text after
them, after a task token or an image, and every newline, as inside running text. A byte-level BPE
does that piece by piece; a SentencePiece-style tokenizer (Mistral's) prepends "▁" to every piece it
is given, so there a piece is tokenized after an anchor whose ids are then dropped.

Only assistant answers (task token, text, [SOI][IMG0..15][EOI], </s>) carry labels. An image's
P patch tokens sit at the start of its user turn, before the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from ..data import templates
from ..data.conversation import ASSISTANT, Message, RecordError
from ..data.images import to_rgb

PROCESSOR_CONFIG = "genllava_processor.json"
IGNORE = -100
# Encoded before a piece that continues a text, its ids then dropped (transformers' non-legacy Llama
# tokenizer does the same with "<unk>"): a SentencePiece vocabulary has no piece that joins "a" to
# a following "▁" or "\n" (pieces start at a "▁"; "\n" is a byte piece), and _after_anchor checks.
ANCHOR = "a"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_answers: int  # image answers kept after truncation (the first ones of the conversation)


class GenLlavaProcessor:
    def __init__(self, tokenizer, image_processor, image_seq_length: int, max_length: int = 2048):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_seq_length, self.max_length = image_seq_length, max_length
        missing = [t for t in templates.ADDED_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"tokenizer lacks genllava tokens {missing[:3]}...; call add_genllava_tokens first")
        ids = tokenizer.convert_tokens_to_ids
        self.image_token_id = ids(templates.IMAGE_TOKEN)
        self.img_token_ids = ids(templates.IMG_TOKENS)
        self.task_ids = {t: ids(t) for t in templates.TASK_TOKENS}
        self.soi_id, self.eoi_id = ids(templates.SOI), ids(templates.EOI)
        if tokenizer.pad_token_id is None:  # Mistral ships no pad token
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        self.pad_id, self.bos_id, self.eos_id = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
        self._system = self._text(templates.SYSTEM_PROMPT + "\n\n")
        self._user, self._assistant = self._text(templates.USER_PREFIX), self._text(templates.ASSISTANT_PREFIX)
        self.assistant_prefix_ids = tuple(self._assistant)
        # Does the tokenizer prepend "▁" to every text (SentencePiece's dummy prefix)? Then pieces
        # that continue a text go through _continued, else "\n" would come out as "▁ <0x0A>".
        self._anchor, sep = self._text(ANCHOR), templates.TURN_SEPARATOR
        anchored = self._text(ANCHOR + sep)
        self._prepends = (anchored[:len(self._anchor)] == self._anchor
                          and anchored[len(self._anchor):] != self._text(sep))
        self._newline = self._continued(sep)

    # ---- persistence ---------------------------------------------------------------------------
    @staticmethod
    def add_genllava_tokens(tokenizer) -> int:
        """Adds <image>, [IMG0..15] and the task tokens as special tokens; returns how many were new."""
        return tokenizer.add_special_tokens({"additional_special_tokens": templates.ADDED_TOKENS},
                                            replace_extra_special_tokens=False)

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.chat_template = templates.chat_template(self.image_seq_length)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)
        Path(folder, PROCESSOR_CONFIG).write_text(json.dumps(
            {"image_seq_length": self.image_seq_length, "max_length": self.max_length}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "GenLlavaProcessor":
        settings = json.loads(Path(folder, PROCESSOR_CONFIG).read_text())
        return cls(AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder), **settings)

    # ---- text ------------------------------------------------------------------------------------
    def _content(self, text: str) -> list[int]:
        return self._continued(templates.CONTENT_LEAD + text) if text else []

    def _text(self, text: str) -> list[int]:
        # split_special_tokens: "<image>" or "[IMG3]" typed by a user is text, never a control token.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids if text else []

    def _continued(self, text: str) -> list[int]:
        """`text` as tokenized inside running text, after what precedes it in the layout."""
        return self._after_anchor(text) if self._prepends else self._text(text)

    def _after_anchor(self, text: str) -> list[int]:
        ids = self._text(ANCHOR + text)
        if ids[:len(self._anchor)] != self._anchor:  # a merge across the anchor: its ids cannot be dropped
            raise ValueError(f"tokenizer merges {ANCHOR!r} with {text[:20]!r}; cannot tokenize it in context")
        return ids[len(self._anchor):]

    def _head(self) -> list[int]:
        """<s> and the system prompt: how every conversation starts, in training and inference."""
        return ([self.bos_id] if self.bos_id is not None else []) + self._system

    def _user_turn(self, message: Message) -> list[int]:
        ids = list(self._user)
        if message.has_image:
            ids += [self.image_token_id] * self.image_seq_length + self._newline
        return ids + self._content(message.text) + self._newline

    def _answer(self, message: Message) -> list[int]:
        ids = [self.task_ids[message.task or templates.I2T]] + self._content(message.text)
        if message.image_answer:
            ids += [self.soi_id, *self.img_token_ids, self.eoi_id]
        return ids + [self.eos_id]

    def encode(self, messages: list[Message]) -> Encoded:
        """Training encoding: whole (user, assistant) exchanges; trailing ones that overflow
        max_length are dropped, never cut in half."""
        head = self._head()
        input_ids, labels, image_answers = list(head), [IGNORE] * len(head), 0
        for start in range(0, len(messages) - 1, 2):
            question, answer = messages[start], messages[start + 1]
            if answer.role != ASSISTANT:
                raise RecordError("turns must alternate human/gpt, starting with human")
            prompt = self._user_turn(question) + self._assistant
            reply = self._answer(answer) + self._newline
            if len(input_ids) + len(prompt) + len(reply) > self.max_length:
                break
            input_ids += prompt + reply
            labels += [IGNORE] * len(prompt) + self._answer_labels(reply)
            image_answers += answer.image_answer
        return Encoded(input_ids, labels, image_answers)

    def _answer_labels(self, reply: list[int]) -> list[int]:
        """The reply's labels. [IMG0..15] and [EOI] are not predicted: inference places them after
        a generated [SOI] (GenLlava.generate), and their last hidden states feed the generation
        head, which they serve better free of a next-token target that is the same for every image."""
        placed = set(self.img_token_ids) | {self.eoi_id}
        labels = [IGNORE if t in placed else t for t in reply]
        return labels[:-len(self._newline) or None] + [IGNORE] * len(self._newline)

    def encode_prompt(self, messages: list[Message], task: str | None = None) -> list[int]:
        """Inference encoding: the history, the new user turn, and the assistant prefix (plus a
        task token when the caller forces one)."""
        ids = self._head()
        for message in messages:
            if message.role == ASSISTANT:
                ids += self._assistant + self._answer(message) + self._newline
            else:
                ids += self._user_turn(message)
        ids += self._assistant + ([self.task_ids[task]] if task else [])
        if len(ids) > self.max_length:
            raise ValueError(f"conversation is {len(ids)} tokens, over the model's limit of {self.max_length}; "
                             "start a new conversation")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- images ----------------------------------------------------------------------------------
    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        return self.image_processor([to_rgb(im) for im in images], return_tensors="pt").pixel_values

    # ---- batching --------------------------------------------------------------------------------
    def pad(self, sequences: list[list[int]], left: bool, value: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention_mask); left padding for generation, right padding for training."""
        value = self.pad_id if value is None else value
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), value, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return ids, mask
