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

# The same layout as a Jinja chat template, saved with the tokenizer for apply_chat_template users.
# (GenLlavaProcessor builds ids piece by piece instead, so user text can never become a control
# token; it also expands the single <image> into one token per patch.)
CHAT_TEMPLATE = (
    "{{ bos_token }}" + SYSTEM_PROMPT + "\n\n"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}" + USER_PREFIX +
    "{% if message['content'] is string %}" + CONTENT_LEAD + "{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "\n{% else %}" + CONTENT_LEAD + "{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}" + TURN_SEPARATOR +
    "{% else %}" + ASSISTANT_PREFIX + "{{ message['content'] }}{{ eos_token }}" + TURN_SEPARATOR + "{% endif %}"
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
