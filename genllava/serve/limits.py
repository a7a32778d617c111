"""Every limit the server enforces, with the safe defaults `genllava serve` starts with."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields


@dataclass
class Limits:
    max_body_bytes: int = 20 * 1024 * 1024  # a whole request, JSON or multipart
    max_image_bytes: int = 8 * 1024 * 1024  # one image's encoded bytes (after base64)
    max_image_pixels: int = 16_777_216  # one image's width x height, read from its header before decoding
    max_images: int = 4  # input images (user images and image answers sent back) per request
    max_prompt_tokens: int | None = None  # None: the model's max_length
    max_tokens: int = 512  # the most max_tokens a request may ask for
    default_max_tokens: int = 64  # max_tokens when a request gives none
    max_n: int = 4  # choices (or images) per request
    max_steps: int = 100  # num_inference_steps
    max_queue: int = 64  # requests waiting or running; beyond it: 429 with retry-after
    max_batch: int = 8  # rows (requests x n) in one generate call
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    timeout_s: float = 300.0  # per request, queueing included; beyond it: 504
    retry_after_s: int = 1  # the retry-after header of a 429
    allowed_domains: tuple[str, ...] = field(default_factory=tuple)  # hosts whose http(s) image URLs are fetched

    def check(self) -> "Limits":
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"limit {f.name} must not be negative, got {value}")
        for name in ("max_body_bytes", "max_image_bytes", "max_image_pixels", "max_tokens", "max_n", "max_steps",
                     "max_queue", "max_batch", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"limit {name} must be at least 1, got {getattr(self, name)}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")
        return self


# flag -> (field, type, help)
FLAGS = {
    "--max-body-bytes": ("max_body_bytes", int, "largest request body (413 beyond)"),
    "--max-image-bytes": ("max_image_bytes", int, "largest encoded image (413 beyond)"),
    "--max-image-pixels": ("max_image_pixels", int, "largest image, width x height from its header (413 beyond)"),
    "--max-images": ("max_images", int, "images per request (400 beyond)"),
    "--max-prompt-tokens": ("max_prompt_tokens", int, "longest prompt in tokens (default: the model's max_length)"),
    "--max-tokens": ("max_tokens", int, "the most max_tokens a request may ask for"),
    "--max-n": ("max_n", int, "choices or images per request"),
    "--max-steps": ("max_steps", int, "the most num_inference_steps a request may ask for"),
    "--max-queue": ("max_queue", int, "requests queued or running; beyond it 429 with retry-after"),
    "--max-batch": ("max_batch", int, "rows batched into one generate call"),
    "--batch-wait-ms": ("batch_wait_ms", float, "milliseconds a batch waits for more requests"),
    "--timeout": ("timeout_s", float, "seconds per request, queueing included (504 beyond)"),
}


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Limits()
    group = parser.add_argument_group("limits")
    for flag, (name, kind, text) in FLAGS.items():
        default = getattr(defaults, name)
        group.add_argument(flag, dest=f"limit_{name}", type=kind, default=None, metavar="N" if kind is int else "S",
                           help=f"{text} (default: {default})" if default is not None else text)
    group.add_argument("--allow-domain", dest="limit_allowed_domains", action="append", default=None,
                       metavar="HOST", help="fetch http(s) image URLs from this host (and its subdomains); "
                       "repeatable. Default: remote image URLs are refused")


def limits_from_args(args: argparse.Namespace) -> Limits:
    limits = Limits()
    for name in [f.name for f in fields(Limits)]:
        value = getattr(args, f"limit_{name}", None)
        if value is not None:
            setattr(limits, name, tuple(value) if name == "allowed_domains" else value)
    return limits.check()
