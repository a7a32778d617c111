"""The on-disk form of a built mixture, and the loader that streams records out of it.

A mixture folder holds `manifest.json` and `shards/shard-NNNNNN.tar`: plain (WebDataset-style) tar
files that a reader consumes front to back. Inside a shard, records that share an image form a group
(a COCO image asked about by LLaVA-Finetune and LVIS-Instruct4V, an edit's input and its result);
each group is written as its images, `{sha256}.{ext}` (original encoded bytes, stored once in the
whole mixture), followed by its records, `{key}.json`:

    {"id", "image": "<sha256>.jpg" | null, "target_image": ["<sha256>.jpg", ...],
     "conversations": [...], "meta": {"task", "source", "origin"}}

So a shard needs no other file to be read, a reader holds only the current group's images, and
shards can be spread over nodes and workers without any random access.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import DataError

from .records import decode_image

MANIFEST = "manifest.json"
SHARD_DIR = "shards"


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append a file with fixed metadata, so the same content always gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def open_tar_writer(fileobj) -> tarfile.TarFile:
    return tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)


def read_manifest(root) -> dict:
    path = Path(root) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{root} is not a built mixture: {MANIFEST} is missing") from None
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is unreadable: {error}") from None


def shard_paths(root) -> list[Path]:
    """The mixture's shards, in manifest order."""
    return [Path(root) / shard["path"] for shard in read_manifest(root)["shards"]]


def iter_raw_shard(path: Path) -> Iterator[tuple[dict, dict[str, bytes]]]:
    """(record JSON, {image name: bytes} for its images) in stored order, reading the tar once."""
    images: dict[str, bytes] = {}
    after_record = False
    with tarfile.open(path, "r|") as tar:  # "r|": a pure stream, no seeking
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name.endswith(".json"):
                record = json.loads(data)
                names = ([record["image"]] if record.get("image") else []) + list(record.get("target_image", []))
                yield record, {name: images[name] for name in names}
                after_record = True
            else:
                if after_record:  # an image after a record starts the next group
                    images, after_record = {}, False
                images[member.name] = data


def decode_record(record: dict, images: dict[str, bytes]) -> dict:
    """A stored record in the record contract: PIL images (RGB) instead of member names."""
    out = {"id": record["id"], "image": decode_image(images[record["image"]]) if record.get("image") else None,
           "conversations": record["conversations"], "meta": record["meta"]}
    if record.get("target_image"):
        out["target_image"] = [decode_image(images[name]) for name in record["target_image"]]
    return out


def _shuffled(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer: memory for `size` items, order decorrelated well beyond one group."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


def iter_records(root, seed: int = 0, shuffle: bool = True, shards: list | None = None,
                 buffer_size: int = 1000) -> Iterator[dict]:
    """Stream a built mixture's records in the record contract (PIL RGB images, task tokens applied).

    shuffle=True visits shards in a seeded order and passes records through a seeded shuffle buffer
    of `buffer_size` records (their images are decoded only when yielded); the same seed gives the
    same order. `shards` restricts the stream to some shard paths (MixtureDataset uses it to split
    shards over workers and ranks).
    """
    paths = list(shards) if shards is not None else shard_paths(root)
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(paths)
    raw = (item for path in paths for item in iter_raw_shard(Path(path)))
    if shuffle:
        raw = _shuffled(raw, buffer_size, rng)
    for record, images in raw:
        yield decode_record(record, images)
