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

import bisect
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from ..records import MISSING, Reject
from ..templates import IMAGE_TOKEN, text_answer
from ..text import decode


@dataclass(frozen=True)
class Bad:
    """A candidate already known to be unusable (e.g. a JSON line that does not parse)."""

    reason: str
    where: str = ""


def _pack(item):
    """A JSON row kept as compact ASCII JSON bytes: a third of the memory of the parsed row or less,
    so a source of 665K rows fits in a few hundred MB. Lone surrogates survive (escaped)."""
    if isinstance(item, (dict, list)):
        try:
            return json.dumps(item, separators=(",", ":")).encode("ascii")
        except (TypeError, ValueError):  # not JSON data (e.g. a Parquet timestamp): kept as it is
            return item
    return item


def _unpack(value):
    return json.loads(value) if isinstance(value, bytes) else value


class Candidates(list):
    """A reader's candidate list, kept compact (rows are stored as JSON bytes and parsed again when
    read), that also remembers which file each candidate came from, so that a record the builder
    cannot write is reported with its file. `add_file(path)` marks where a file's candidates start;
    `file_of(index)` answers."""

    def __init__(self, items=()):
        super().__init__()
        self.starts: list[int] = []
        self.files: list[str] = []
        self.extend(items)

    def append(self, item) -> None:
        super().append(_pack(item))

    def extend(self, items) -> None:
        for item in items:
            super().append(_pack(item))

    def __getitem__(self, index):
        value = super().__getitem__(index)
        return [_unpack(v) for v in value] if isinstance(index, slice) else _unpack(value)

    def __iter__(self):
        for value in super().__iter__():
            yield _unpack(value)

    def add_file(self, path) -> None:
        self.starts.append(len(self))
        self.files.append(str(path))

    def spans_from(self, other: "Candidates") -> "Candidates":
        self.starts, self.files = list(other.starts), list(other.files)
        return self

    def file_of(self, index: int) -> str | None:
        i = bisect.bisect_right(self.starts, index) - 1
        return self.files[i] if i >= 0 else None


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

    Text is read with `text.decode` (bytes that are not UTF-8 survive as escapes that the builder
    replaces with U+FFFD and counts). A whole file that does not parse cannot be read at all, so that
    is a clear DataError naming the file; in JSON lines each bad line is one Bad("bad_json") item,
    counted and skipped.
    """
    return list(iter_json_records(path, list_keys))


def iter_json_records(path: Path, list_keys: tuple[str, ...] = ("data", "annotations")):
    """`load_json_records` one item at a time. A top-level JSON list (mix665k is a 1 GB one) is parsed
    element by element from a stream, so the whole file is never in memory as text or as objects."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(decode(line))
                except json.JSONDecodeError:
                    yield Bad("bad_json", f"{path}:{number}")
        return
    try:
        data = yield from _stream_json_list(path)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not readable JSON ({error}); re-download it", file=path) from None
    if data is None:  # it was a list, streamed
        return
    if isinstance(data, dict):
        data = next((data[key] for key in list_keys if isinstance(data.get(key), list)), None)
    if not isinstance(data, list):
        raise DataError(f"{path} holds no list of records (expected a JSON list or {list_keys})", file=path)
    yield from data


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _stream_json_list(path: Path, block: int = 1 << 22):
    """Yield the elements of a file holding one JSON list and return None; for any other JSON value
    yield nothing and return the parsed value. Raises json.JSONDecodeError on malformed JSON."""
    import codecs

    decoder = json.JSONDecoder()
    incremental = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    with open(path, "rb") as f:
        state = {"buf": "", "eof": False}

        def more() -> None:
            data = f.read(block)
            if not data:
                state["eof"] = True
                state["buf"] += incremental.decode(b"", final=True)
            else:
                state["buf"] += incremental.decode(data)

        def skip(pos: int) -> int:  # past whitespace, reading more as needed
            while True:
                pos = _WHITESPACE.match(state["buf"], pos).end()
                if pos < len(state["buf"]) or state["eof"]:
                    return pos
                more()

        more()
        if state["buf"].startswith("\ufeff"):
            state["buf"] = state["buf"][1:]
        pos = skip(0)
        if state["buf"][pos:pos + 1] != "[":
            while not state["eof"]:
                more()
            return json.loads(state["buf"])
        pos = skip(pos + 1)
        if state["buf"][pos:pos + 1] == "]":
            return None
        while True:
            buf = state["buf"]
            try:
                item, end = decoder.raw_decode(buf, pos)
                if end >= len(buf) and not state["eof"]:  # a number cut at the block's end
                    raise json.JSONDecodeError("cut", buf, end)
            except json.JSONDecodeError:
                if state["eof"]:
                    raise
                more()
                continue
            yield item
            pos = skip(end)
            sep = state["buf"][pos:pos + 1]
            if sep == "]":
                return None
            if sep != ",":
                raise json.JSONDecodeError("expected ',' or ']'", state["buf"], pos)
            pos = skip(pos + 1)
            if pos > block:  # drop what has been parsed
                state["buf"], pos = state["buf"][pos:], 0


def json_files(src) -> list[Path]:
    """`files` of a reader whose `path` names its JSON / JSON-lines annotation file(s) directly."""
    return list(src.paths)


def json_candidates(src) -> list:
    """`candidates` of such a reader: the rows of every file, in order (see `load_json_records`)."""
    return candidates_of(json_files(src), iter_json_records)


def candidates_of(paths, read) -> Candidates:
    """The items `read(path)` gives for each path, in order, remembering each one's file (kept
    compact: see `Candidates`)."""
    items = Candidates()
    for path in paths:
        items.add_file(path)
        items.extend(read(path))
    return items


def import_pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet sources needs pyarrow: pip install pyarrow") from None
    return pq


def parquet_files(root: Path, split: str | None = "train") -> list[Path]:
    """The Parquet files of one split under `root` (or `root` itself when it names a file).

    Hugging Face names them `{split}-00000-of-00042.parquet` (or puts them in a `{split}/` folder), and
    keeps every split in the same `data/` folder: files of other splits (`validation-*`, `test-*`)
    are ignored. A folder whose files follow no split naming is read whole."""
    if not root.is_dir():
        return [root]
    found = sorted(root.rglob("*.parquet"))
    if split is None:
        return found
    named = [path for path in found if _split_of(path.relative_to(root)) is not None]
    if not named:
        return found
    return [path for path in named if _split_of(path.relative_to(root)) == split]


SPLITS = ("train", "validation", "valid", "val", "test", "dev", "eval")


def _split_of(relative: Path) -> str | None:
    """The split a Parquet file's name or folders name: train, validation, test ... (or None)."""
    for part in reversed(relative.parts):
        word = re.split(r"[-_.]", part.lower(), maxsplit=1)[0]
        if word in SPLITS:
            return "validation" if word in ("valid", "val", "dev", "eval") else word
    return None


def parquet_candidates(files: list[Path]) -> list[tuple[str, int, int]]:
    """One (file, row group, row) per row: enumerating reads only the Parquet footers."""
    pq = import_pyarrow()
    items = []
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        for group in range(metadata.num_row_groups):
            items.extend((str(path), group, row) for row in range(metadata.row_group(group).num_rows))
    return items


def _binary_type(kind):
    """`kind` with every string type (top level, in structs and lists) turned into binary."""
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pa.binary() if pa.types.is_string(kind) else pa.large_binary()
    if pa.types.is_struct(kind):
        return pa.struct([field.with_type(_binary_type(field.type)) for field in kind])
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = kind.value_field.with_type(_binary_type(kind.value_type))
        return pa.list_(inner) if pa.types.is_list(kind) else pa.large_list(inner)
    return kind


def _strings_back(value, kind):
    """Undo `_binary_type` on a Python value: bytes that were strings become text via `text.decode`."""
    import pyarrow as pa

    if value is None:
        return None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return decode(value)
    if pa.types.is_struct(kind):
        return {field.name: _strings_back(value.get(field.name), field.type) for field in kind}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return [_strings_back(item, kind.value_type) for item in value]
    return value


@lru_cache(maxsize=2)
def _row_group(path: str, group: int) -> list[dict]:
    """One row group as rows. Strings are read as bytes and decoded with `text.decode`: a Parquet
    string that is not valid UTF-8 (writers do not always check) must not crash the build."""
    import pyarrow as pa

    table = import_pyarrow().ParquetFile(path).read_row_group(group)
    schema = table.schema
    safe = pa.schema([field.with_type(_binary_type(field.type)) for field in schema])
    if safe.equals(schema):
        return table.to_pylist()
    rows = table.cast(safe).to_pylist()
    return [{field.name: _strings_back(row[field.name], field.type) for field in schema} for row in rows]


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
