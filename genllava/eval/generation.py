"""`genllava eval generation`: an image per caption, then FID, CLIP-I and CLIPScore.

Captions: a JSONL file of {"id", "caption", "reference"?} (reference: an image file name under the
references folder; by default the first of ID.png, ID.jpg, ID.jpeg there), or a text file with one
caption per line (ids 00000, 00001, ...). Images are drawn in batches with one seed per caption
(seed + its index), so each image is the same whatever batch it falls in; each is written to
OUT/images/ID.png as soon as it is made and skipped when present, so a killed run resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .resumable import load_rgb, safe_name, save_atomically

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_captions(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no captions file {str(path)!r}")
    if path.suffix == ".jsonl":
        items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for n, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("caption"), str):
                raise ValueError(f"{path}: line {n + 1} lacks a string 'caption'")
            item["id"] = safe_name(item.get("id", f"{n:05d}"))
    else:
        items = [{"id": f"{n:05d}", "caption": line.strip()}
                 for n, line in enumerate(path.read_text().splitlines()) if line.strip()]
    if not items:
        raise ValueError(f"{path}: no captions")
    if len({i["id"] for i in items}) != len(items):
        raise ValueError(f"{path}: ids are not unique")
    return items


def reference_path(references: Path, item: dict) -> Path:
    if item.get("reference"):
        found = references / item["reference"]
        if found.is_file():
            return found
    else:
        for suffix in IMAGE_SUFFIXES:
            if (references / f"{item['id']}{suffix}").is_file():
                return references / f"{item['id']}{suffix}"
    raise FileNotFoundError(f"no reference image for caption {item['id']!r} in {str(references)!r}")


def draw_images(model, items: list[dict], out: Path, batch_size: int = 8, seed: int = 0,
                prompt: str = "Generate an image of {caption}.", log: Callable[[str], None] = print) -> dict:
    """Draws the missing images; returns {"drawn", "skipped", "seconds"}."""
    from ..data.conversation import user
    from ..data.templates import T2I

    folder = out / "images"
    todo = [(n, item) for n, item in enumerate(items) if not (folder / f"{item['id']}.png").is_file()]
    started, drawn = time.time(), 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        conversations = [[user(prompt.format(caption=item["caption"].rstrip(".")))] for _, item in batch]
        replies = model.generate(conversations, [None] * len(batch), task=T2I, seed=[seed + n for n, _ in batch])
        for (_, item), reply in zip(batch, replies):
            save_atomically(reply.image, folder / f"{item['id']}.png")
            drawn += 1
        log(f"drew {drawn}/{len(todo)} images ({len(items) - len(todo)} already there)")
    return {"drawn": drawn, "skipped": len(items) - len(todo), "seconds": round(time.time() - started, 2)}


def score_generation(items: list[dict], out: Path, references: Path, fid_extractor=None, clip=None) -> dict:
    """FID (generated vs references), CLIP-I (each image vs its reference) and CLIP-T / CLIPScore
    (each image vs its caption), over the images in OUT/images."""
    from .clip_similarity import clip_score
    from .fid import fid

    generated = [load_rgb(out / "images" / f"{item['id']}.png") for item in items]
    refs = [load_rgb(reference_path(references, item)) for item in items]
    metrics: dict = {"images": len(items)}
    if fid_extractor is not None:
        metrics["fid"] = fid(fid_extractor, generated, refs)
    if clip is not None:
        clip_i = clip.clip_i(generated, refs)
        clip_t = clip.clip_t(generated, [item["caption"] for item in items])
        metrics["clip_i"] = sum(clip_i) / len(clip_i)
        metrics["clip_t"] = sum(clip_t) / len(clip_t)
        metrics["clip_score"] = sum(clip_score(clip_t)) / len(clip_t)
    return metrics


def evaluate_generation(model, captions: str | Path, references: str | Path, out: str | Path, *,
                        fid_extractor=None, clip=None, batch_size: int = 8, seed: int = 0, limit: int | None = None,
                        prompt: str = "Generate an image of {caption}.", log: Callable[[str], None] = print) -> dict:
    out, references = Path(out), Path(references)
    items = read_captions(captions)[:limit]
    for item in items:  # every reference is there before hours of drawing
        reference_path(references, item)
    run = draw_images(model, items, out, batch_size, seed, prompt, log)
    metrics = score_generation(items, out, references, fid_extractor, clip)
    payload = {"metrics": metrics, "run": run, "captions": str(captions), "references": str(references),
               "seed": seed, "prompt": prompt}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload
