"""Safe text: what every reader, the builder and the shard writer use to read and write strings.

Native files are UTF-8 (or should be). Two defects are common in the public downloads: bytes that are
not UTF-8 (a truncated multi-byte character in a scraped dump) and lone UTF-16 surrogates written as
JSON escapes (`"\\ud83d"` without its pair, frequent in ShareGPT dumps). Python reads both without
complaint (`surrogateescape` maps a bad byte to U+DC80..U+DCFF; `json.loads` keeps a lone `\\ud83d`),
but such a string cannot be encoded as UTF-8, so it would crash whatever writes it. Here every such
character becomes U+FFFD and is counted, so the manifest can say how many each source needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def decode(data: bytes) -> str:
    """UTF-8 (a leading BOM dropped) with every undecodable byte kept as a surrogate escape, so that
    `clean` replaces and counts it like any other invalid code point."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def read_text(path: Path) -> str:
    """A file's text as `decode` gives it (raises OSError like `Path.read_text`)."""
    return decode(Path(path).read_bytes())


def clean_str(text: str) -> tuple[str, int]:
    """(text with lone surrogates / escaped bad bytes replaced by U+FFFD, how many were replaced)."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        return _SURROGATE.subn(REPLACEMENT, text)


def clean(value) -> tuple[object, int]:
    """`clean_str` applied to every string inside lists, tuples and dicts (keys too); other values as
    they are. Returns (the cleaned value, characters replaced); unchanged containers are returned as is."""
    if isinstance(value, str):
        return clean_str(value)
    if isinstance(value, dict):
        total, out = 0, None
        for key, item in value.items():
            new_key, n_key = clean(key) if isinstance(key, str) else (key, 0)
            new_item, n_item = clean(item)
            if n_key or n_item or new_item is not item:
                if out is None:
                    out = dict(value)
                if n_key:
                    del out[key]
                out[new_key] = new_item
            total += n_key + n_item
        return (value if out is None else out), total
    if isinstance(value, (list, tuple)):
        total, out = 0, None
        for i, item in enumerate(value):
            new_item, n = clean(item)
            if n:
                if out is None:
                    out = list(value)
                out[i] = new_item
                total += n
        if out is None:
            return value, 0
        return (tuple(out) if isinstance(value, tuple) else out), total
    return value, 0


def loads(text: str):
    """`json.loads` (text from `decode`: bad bytes inside strings survive as escapes for `clean`)."""
    return json.loads(text)


def dumps_line(record) -> bytes:
    """One record as compact, sorted UTF-8 JSON: the form chunks and shards store. Raises
    UnicodeEncodeError / TypeError / ValueError for what cannot be written (the builder skips and
    counts such a record)."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")
