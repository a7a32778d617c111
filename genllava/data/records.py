"""The record contract and the checks every record passes: in the builder, in the loader, in validation.

A record is `{"id", "image": PIL.Image | None, "conversations": [{"from": "human"|"gpt", "value"}],
"target_image"?: [PIL.Image, ...], "meta": {"task", "source", ...}}`. Human turns carry `<image>` where
the input image goes (at most once per record); every gpt turn starts with a task token: `[I2T]` and
words, or `[T2I]` and (optionally words and) the image answer `[SOI][IMG0..15][EOI]`, one per target.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .images import to_rgb
from .templates import ADDED_TOKENS, I2T, IMAGE_ANSWER, IMAGE_TOKEN, T2I

TASKS = ("understanding", "text", "generation", "editing")
ROLES = ("human", "gpt")

# Why a candidate did not become a record. Skips are bad input and count towards max_skip_rate;
# filters are deliberate choices (duplicates, Vicuna's quality rules, test splits) and do not.
SKIP_REASONS = (
    "bad_json",              # an unreadable JSON line or file
    "bad_record",            # fields missing or of the wrong type
    "missing_image",
    "corrupt_image",         # not an image PIL can decode
    "truncated_image",
    "image_too_large",       # more pixels than max_image_pixels (decompression bombs)
    "multiple_images",       # more than one input image: this mixture has at most one
    "not_alternating",       # turns not human, gpt, human, gpt, ...
    "image_token_mismatch",  # <image> count differs from the number of input images
    "special_token_in_text", # native text that contains one of our added tokens
    "empty_question",
    "empty_answer",
    "too_long",              # even the first exchange exceeds the token budget
    "unwritable",            # text that could not be stored even after `text.clean` (listed in the manifest)
)
# other_split: rows a training file marks as validation/test; test_split: AI2D's test images;
# abc_label: AI2D letter questions whose diagram has no annotation file to draw the letters from.
FILTER_REASONS = ("duplicate", "blocked_words", "too_short", "test_split", "other_split", "abc_label")

_SPECIAL = [t for t in ADDED_TOKENS if t != IMAGE_TOKEN]


class Reject(Exception):
    """A candidate that does not become a record, with the reason counted in the manifest."""

    def __init__(self, reason: str):
        assert reason in SKIP_REASONS or reason in FILTER_REASONS, reason
        super().__init__(reason)
        self.reason = reason

    @property
    def filtered(self) -> bool:
        return self.reason in FILTER_REASONS


def _has_special(text: str) -> bool:
    return any(token in text for token in _SPECIAL)


def conversation_problem(conversations, has_image: bool, num_targets: int) -> str | None:
    """The skip reason that makes a conversation untrainable, or None when it is fine."""
    if not isinstance(conversations, list) or not conversations:
        return "bad_record"
    image_tokens = image_answers = 0
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return "bad_record"
        if turn.get("from") != ROLES[i % 2]:
            return "not_alternating"
        value = turn["value"]
        if turn["from"] == "human":
            image_tokens += value.count(IMAGE_TOKEN)
            text = value.replace(IMAGE_TOKEN, "")
            if _has_special(text):
                return "special_token_in_text"
            if not text.strip():
                return "empty_question"
            continue
        if IMAGE_TOKEN in value:
            return "image_token_mismatch"
        if value.startswith(I2T):
            words = value[len(I2T):]
        elif value.startswith(T2I) and value.endswith(IMAGE_ANSWER):
            words = value[len(T2I):-len(IMAGE_ANSWER)]
            image_answers += 1
        else:
            return "bad_record"  # no task token: a reader bug, never user data
        if _has_special(words):
            return "special_token_in_text"
        if value.startswith(I2T) and not words.strip():
            return "empty_answer"
    if len(conversations) % 2:
        return "not_alternating"  # a conversation must end with the assistant
    if image_tokens != int(has_image):
        return "image_token_mismatch"
    if image_answers != num_targets:
        return "bad_record"
    return None


def _check_pil(image, what: str) -> None:
    if not isinstance(image, Image.Image):
        raise ValueError(f"{what} is {type(image).__name__}, not a PIL image")
    if image.mode != "RGB":
        raise ValueError(f"{what} has mode {image.mode}, not RGB")


def validate_record(record) -> None:
    """Raise ValueError naming the first way `record` breaks the record contract."""
    if not isinstance(record, dict):
        raise ValueError(f"record is {type(record).__name__}, not a dict")
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise ValueError("record has no string id")
    image = record.get("image")
    if image is not None:
        _check_pil(image, f"{rid}: image")
    targets = record.get("target_image", [])
    if not isinstance(targets, list):
        raise ValueError(f"{rid}: target_image is not a list")
    for i, target in enumerate(targets):
        _check_pil(target, f"{rid}: target_image[{i}]")
    meta = record.get("meta")
    if not isinstance(meta, dict) or meta.get("task") not in TASKS or not isinstance(meta.get("source"), str):
        raise ValueError(f"{rid}: meta must name a task in {TASKS} and a source")
    problem = conversation_problem(record.get("conversations"), image is not None, len(targets))
    if problem:
        raise ValueError(f"{rid}: {problem}")


class Missing:
    """An image the native data names but does not have (an empty Parquet cell, an undownloaded link)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing()
FORMAT_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def check_image(source, max_pixels: int) -> tuple[str, str, bytes]:
    """Read and fully decode one image: (sha256, extension, original bytes), or raise Reject.

    `source` is a file path, the encoded bytes, or MISSING. The bytes are kept as they are (no
    re-encoding); decoding here is what catches truncated files before they reach training.
    """
    if isinstance(source, Missing):
        raise Reject("missing_image")
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError:  # absent, a folder, unreadable: the image is not there for us
            raise Reject("missing_image") from None
    else:
        data = bytes(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                # The header alone tells the size: refuse bombs before decoding a single pixel.
                if image.width * image.height > max_pixels:
                    raise Reject("image_too_large")
                image.load()
                to_rgb(image)  # the very conversion the loader will do
                ext = FORMAT_EXTENSIONS.get(image.format, (image.format or "img").lower())
    except Reject:
        raise
    except Image.DecompressionBombError:
        raise Reject("image_too_large") from None
    except UnidentifiedImageError:
        raise Reject("corrupt_image") from None
    except Exception as error:  # PIL raises many types on hostile bytes; none may stop the build
        raise Reject("truncated_image" if "truncated" in str(error).lower() else "corrupt_image") from None
    return hashlib.sha256(data).hexdigest(), ext, data


def try_check_image(job: tuple) -> tuple:
    """`check_image` for a worker pool: returns ("ok", sha, ext, data) or ("reject", reason)."""
    source, max_pixels = job
    try:
        return ("ok", *check_image(source, max_pixels))
    except Reject as reject:
        return ("reject", reject.reason)


def decode_image(data: bytes) -> Image.Image:
    """Stored bytes as the RGB image training sees: `images.to_rgb` (transparency on white, EXIF
    orientation, palette, 16-bit and CMYK handled), the project's one conversion."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image)
