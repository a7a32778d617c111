"""What the source readers share: the reader interface, the draft they return and native-format helpers.

A reader is a module with:
- `TASK`: the mixture category of its records ("understanding", "text", "generation", "editing");
- `OPTIONS`: reader-specific config keys and their defaults;
- `NEEDS_IMAGES`: whether the config must give an `images` folder;
- `files(src) -> list[Path]`: the annotation files, hashed into the manifest's source checksum;
- `candidates(src) -> list`: every candidate record, cheaply (no image is opened), in storage order;
  an unreadable line becomes `Bad("bad_json")` so it is counted, not fatal (a reader whose `path`
  names its JSON / JSON-lines files directly takes both from `json_files` and `json_candidates`);
- `draft(item, src, rng) -> Draft`: one candidate in the project's conversation format (task tokens
  and Figure A1 templates applied), or `raise Reject(reason)`;
- optionally `dedup_key(item)`, which enables the `dedup_against` and `dedup_within` options.
The builder does the rest (image checks, conversation checks, sampling, shards) the same way for all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..records import MISSING, Reject
from ..templates import IMAGE_TOKEN, text_answer


@dataclass(frozen=True)
class Bad:
    """A candidate already known to be unusable (e.g. a JSON line that does not parse)."""

    reason: str
    where: str = ""


@dataclass
class Draft:
    """A record before its images are checked: image sources are paths, bytes or MISSING."""

    origin: str  # the native id, kept in meta for tracing a record back to its source
    conversations: list[dict]
    image: object = None
    targets: list = field(default_factory=list)


def human(value: str) -> dict:
    return {"from": "human", "value": value}


def gpt(value: str) -> dict:
    return {"from": "gpt", "value": value}


def text_field(item, key: str, reason: str = "bad_record") -> str:
    """A stripped string field; numbers are accepted (answers such as 3 are stored as numbers)."""
    if not isinstance(item, dict):
        raise Reject("bad_record")
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Reject("bad_record")
    value = str(value).strip()
    if not value:
        raise Reject(reason)
    return value


def conversations_of(item) -> list:
    """The `conversations` list of a LLaVA-format row (`{"id", "image"?, "conversations"}`)."""
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        raise Reject("bad_record")
    return item["conversations"]


def image_question(origin: str, image, question: str, answer: str, template: str) -> Draft:
    """One question about one image answered in text: the Figure A1 `template` ("{question}" in a
    short-answer, long-answer or multiple-choice form) after `<image>`, the answer behind `[I2T]`."""
    return Draft(origin=origin,
                 conversations=[human(f"{IMAGE_TOKEN}\n" + template.format(question=question)),
                                gpt(text_answer(answer))],
                 image=image)


def question_row(item, src, origin_key: str, answer_of, template: str) -> Draft:
    """`image_question` from a row `{"question", "image": path under src.images, origin_key, ...}`
    whose answer `answer_of(item)` reads (or rejects); checked question, answer, then image."""
    question = text_field(item, "question", "empty_question")
    answer = answer_of(item)
    return image_question(str(item.get(origin_key, "")), image_under(src.images, item.get("image")), question, answer,
                          template)


def image_under(root: Path, relative) -> Path:
    """`root/relative`, refusing names that would leave the image folder."""
    if not isinstance(relative, str) or not relative.strip():
        raise Reject("bad_record")
    path = Path(relative.strip())
    if path.is_absolute() or ".." in path.parts:
        raise Reject("bad_record")
    return root / path


def load_json_records(path: Path, list_keys: tuple[str, ...] = ("data", "annotations")) -> list:
    """Items of a JSON list, a JSON object holding the list under one of `list_keys`, or JSON lines.

    A whole file that does not parse cannot be read at all, so that is a clear error; in JSON lines
    each bad line is one Bad("bad_json") item, counted and skipped.
    """
    if path.suffix == ".jsonl":
        items = []
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError:
                    items.append(Bad("bad_json", f"{path}:{number}"))
        return items
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not readable JSON ({error}); re-download it") from None
    if isinstance(data, dict):
        data = next((data[key] for key in list_keys if isinstance(data.get(key), list)), None)
    if not isinstance(data, list):
        raise ValueError(f"{path} holds no list of records (expected a JSON list or {list_keys})")
    return data


def json_files(src) -> list[Path]:
    """`files` of a reader whose `path` names its JSON / JSON-lines annotation file(s) directly."""
    return list(src.paths)


def json_candidates(src) -> list:
    """`candidates` of such a reader: the rows of every file, in order (see `load_json_records`)."""
    return [item for path in json_files(src) for item in load_json_records(path)]


def import_pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading Parquet sources needs pyarrow: pip install pyarrow") from None
    return pq


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet")) if root.is_dir() else [root]


def parquet_candidates(files: list[Path]) -> list[tuple[str, int, int]]:
    """One (file, row group, row) per row: enumerating reads only the Parquet footers."""
    pq = import_pyarrow()
    items = []
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            items.extend((str(path), group, row) for row in range(metadata.row_group(group).num_rows))
    return items


@lru_cache(maxsize=2)
def _row_group(path: str, group: int) -> list[dict]:
    # Candidates are processed in storage order, so each row group is read once per chunk.
    return import_pyarrow().ParquetFile(path).read_row_group(group).to_pylist()


def parquet_row(item: tuple[str, int, int]) -> dict:
    path, group, row = item
    return _row_group(path, group)[row]


def parquet_image(cell):
    """The encoded bytes of a Hugging Face `Image` cell ({"bytes", "path"}) or MISSING."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    return cell if isinstance(cell, (bytes, bytearray)) and cell else MISSING


_SPACES = re.compile(r"\s+")


def one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()
