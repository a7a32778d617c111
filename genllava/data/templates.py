"""Special tokens, the system prompt and the instruction templates (the paper's Figure A1).

One module, used by training, inference and evaluation alike, so a prompt can never drift
between them.
"""

from __future__ import annotations

import random

IMAGE_TOKEN = "<image>"  # placeholder in a human turn; expanded to one token per image patch
NUM_IMG_TOKENS = 16
IMG_TOKENS = [f"[IMG{i}]" for i in range(NUM_IMG_TOKENS)]
T2I, I2T, SOI, EOI = "[T2I]", "[I2T]", "[SOI]", "[EOI]"
TASK_TOKENS = (T2I, I2T)
ADDED_TOKENS = [IMAGE_TOKEN, *IMG_TOKENS, T2I, I2T, SOI, EOI]
IMAGE_ANSWER = SOI + "".join(IMG_TOKENS) + EOI

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant understands, generates and edits images, and answers helpfully."
)
USER_PREFIX = "USER:"
ASSISTANT_PREFIX = "ASSISTANT:"
TURN_SEPARATOR = "\n"
# Text after a prefix or a task token starts with this space, as in running text: the pieces then
# tokenize as the language model saw them in pretraining ("ASSISTANT: 7" -> "ASSISTANT", ":", " 7").
CONTENT_LEAD = " "


def chat_template(image_seq_length: int) -> str:
    """GenLlavaProcessor's layout as a Jinja chat template, saved with the tokenizer for
    `apply_chat_template` users; on the same messages it yields the processor's exact ids.

    Messages use transformers' content parts (see `conversation.chat_messages`): a user's
    `{"type": "image"}` part becomes `image_seq_length` `<image>` slots; an assistant whose content
    holds an image part answers `[T2I]` with the image block, else `[I2T]`. Unlike the processor,
    the template cannot keep typed control-token text such as "[IMG3]" from becoming a token, and
    it matches the processor only where the tokenizer does not merge across the pieces the
    processor tokenizes apart (true of byte-level BPE, as tests/test_processor.py checks).

    It cannot match for a SentencePiece-style tokenizer with Mistral-7B-Instruct's "legacy"
    normalizer (Prepend "▁"; the tiny-mistral preset's): a template only emits text, and that
    tokenizer prepends "▁" to each text that follows an added token, so the "\n" the layout puts
    after `<image>` and `</s>` becomes "▁ <0x0A>", where the processor has "<0x0A>" as in running
    text. No rendering avoids that, so with such a tokenizer take ids from the processor's encode
    and encode_prompt (tests/test_tiny_preset.py pins the cause).
    """
    # Whitespace goes in as expressions: transformers renders templates with trim_blocks, which
    # would drop a literal newline that follows a block tag.
    lead = "{% if part['text'] %}{{ " + repr(CONTENT_LEAD) + " + part['text'] }}{% endif %}"
    sep = "{{ " + repr(TURN_SEPARATOR) + " }}"
    parts = "{% set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string else message['content'] %}"
    return (
        "{{ bos_token }}{{ " + repr(SYSTEM_PROMPT + "\n\n") + " }}"
        "{% for message in messages %}" + parts +
        "{% if message['role'] == 'user' %}" + USER_PREFIX +
        "{% for part in parts %}{% if part['type'] == 'image' %}" + IMAGE_TOKEN * image_seq_length + sep +
        "{% else %}" + lead + "{% endif %}{% endfor %}" + sep +
        "{% else %}" + ASSISTANT_PREFIX +
        "{% if parts | selectattr('type', 'equalto', 'image') | list %}" + T2I + "{% else %}" + I2T + "{% endif %}"
        "{% for part in parts %}{% if part['type'] == 'text' %}" + lead + "{% endif %}{% endfor %}"
        "{% if parts | selectattr('type', 'equalto', 'image') | list %}" + IMAGE_ANSWER + "{% endif %}"
        "{{ eos_token }}" + sep + "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}" + ASSISTANT_PREFIX + "{% endif %}"
    )


# Figure A1 of the paper: how each kind of instruction is phrased.
SHORT_VQA = "{question}\nAnswer the question using a single word or phrase."
LONG_VQA = "{question}"
ADVANCED_KNOWLEDGE = "{question}\nAnswer with the option's letter from the given choices directly."
GENERATION = (
    "Generate an image of {caption}.",
    "Please generate an image of {caption}.",
    "Create a picture of {caption}.",
    "Draw {caption}.",
    "Can you make an image of {caption}?",
)
EDITING = (
    "{instruction}",
    "Please edit the image: {instruction}",
    "Edit this image. {instruction}",
)


def generation_prompt(caption: str, rng: random.Random | None = None) -> str:
    template = GENERATION[0] if rng is None else rng.choice(GENERATION)
    return template.format(caption=caption)


def editing_prompt(instruction: str, rng: random.Random | None = None) -> str:
    template = EDITING[0] if rng is None else rng.choice(EDITING)
    return template.format(instruction=instruction)


def text_answer(text: str) -> str:
    """An assistant turn that answers in words."""
    return I2T + text


def image_answer(text: str = "") -> str:
    """An assistant turn that answers with an image (optionally preceded by words)."""
    return T2I + text + IMAGE_ANSWER
