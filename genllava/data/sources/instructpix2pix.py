"""InstructPix2Pix CLIP-filtered data (Brooks et al. 2023), in either form it is distributed in.

- Folder form (`clip-filtered-dataset/`, possibly split into `shard-XX/`): one folder per prompt with
  `prompt.json` (`{"input", "edit", "output"}`; redistributions such as apple/ml-mgie's keep only
  `edit`) and image pairs `{seed}_0.jpg` (input) / `{seed}_1.jpg` (edited). Each seed is one sample.
- Parquet form (the Hugging Face dataset `timbrooks/instructpix2pix-clip-filtered` and its subsets):
  columns `original_image` (or `input_image`), `edit_prompt` and `edited_image`, images stored as
  `{"bytes", "path"}`.
Config: `path` = the folder (or a Parquet file); the form is detected from what is in it. The data has
only a training split; Parquet files named for another split (`validation-*`, `test-*`) are ignored.
Shards still in their `shard-XX.zip` form are a user error that says to unzip them.
Each sample becomes `<image>` + an editing request in a Figure A1 phrasing -> `[T2I]` image answer.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from ..errors import DataError
from ..records import Reject
from ..text import read_text
from ..templates import IMAGE_TOKEN, editing_prompt, image_answer
from .base import (Draft, gpt, human, one_line, parquet_candidates, parquet_files, parquet_image,
                   parquet_row, text_field)

TASK = "editing"
NEEDS_IMAGES = False  # the images live next to the prompts (folder form) or inside the Parquet rows
OPTIONS = {}
INPUT_COLUMNS = ("original_image", "input_image")
_PAIR = re.compile(r"(\d+)_([01])\.(jpe?g|png|webp)$", re.IGNORECASE)


def _is_parquet(src) -> bool:
    root = src.paths[0]
    return root.suffix == ".parquet" or (root.is_dir() and next(root.rglob("*.parquet"), None) is not None)


def where(item) -> str:
    return item[1][0] if item[0] == "parquet" else str(Path(item[1], "prompt.json"))


def _check_unzipped(root: Path) -> None:
    """`download_data.py` fetches `shard-XX.zip` files: read only once they are unzipped in place."""
    if not root.is_dir():
        return
    zips = sorted(path for path in root.rglob("*.zip") if not path.with_suffix("").is_dir())
    if zips:
        names = ", ".join(path.name for path in zips[:3]) + (f" and {len(zips) - 3} more" if len(zips) > 3 else "")
        raise DataError(f"{root} holds {len(zips)} unextracted zip file(s) ({names}); unzip each in place "
                        f"(e.g. `cd {root} && for z in *.zip; do unzip -q \"$z\"; done`) and build again", file=zips[0])


def files(src):
    if _is_parquet(src):
        return parquet_files(src.paths[0], "train")
    _check_unzipped(src.paths[0])
    return sorted(Path(folder) / "prompt.json" for folder, _ in _folders(src.paths[0]))


def _folders(root: Path):
    """(folder, file names) of every prompt folder, in a stable order."""
    for folder, subfolders, names in os.walk(root):
        subfolders.sort()
        if "prompt.json" in names:
            yield folder, names


def candidates(src) -> list:
    if _is_parquet(src):
        items = parquet_candidates(parquet_files(src.paths[0], "train"))
        if items:
            columns = set(parquet_row(items[0]))
            needed = [INPUT_COLUMNS, ("edit_prompt",), ("edited_image",)]
            if not all(columns & set(names) for names in needed):
                raise DataError(f"{src.paths[0]}: Parquet columns {sorted(columns)} lack an input image, "
                                 "`edit_prompt` or `edited_image`")
        return [("parquet", item) for item in items]
    _check_unzipped(src.paths[0])
    items = []
    for folder, names in _folders(src.paths[0]):
        pairs = {}
        for name in names:
            match = _PAIR.match(name)
            if match:
                pairs.setdefault(match.group(1), {})[match.group(2)] = name
        for seed in sorted(pairs):
            items.append(("folder", folder, seed, pairs[seed].get("0", f"{seed}_0.jpg"),
                          pairs[seed].get("1", f"{seed}_1.jpg")))
    return items


def _sample(instruction: str, image, target, origin: str, rng: random.Random) -> Draft:
    prompt = editing_prompt(one_line(instruction), rng)
    return Draft(origin=origin, conversations=[human(f"{IMAGE_TOKEN}\n{prompt}"), gpt(image_answer())],
                 image=image, targets=[target])


def draft(item, src, rng: random.Random) -> Draft:
    if item[0] == "parquet":
        row = parquet_row(item[1])
        source = next(row[name] for name in INPUT_COLUMNS if name in row)
        instruction = text_field(row, "edit_prompt", "empty_question")
        return _sample(instruction, parquet_image(source), parquet_image(row.get("edited_image")),
                       f"{Path(item[1][0]).name}:{item[1][1]}:{item[1][2]}", rng)
    _, folder, seed, before, after = item
    try:
        prompt = json.loads(read_text(Path(folder, "prompt.json")))
    except (OSError, json.JSONDecodeError):
        raise Reject("bad_json") from None
    instruction = text_field(prompt, "edit", "empty_question")
    return _sample(instruction, Path(folder, before), Path(folder, after), f"{Path(folder).name}/{seed}", rng)
