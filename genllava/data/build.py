"""Build a training mixture from local copies of the public datasets, and re-check a built one.

`build_mixture(config, out)` runs in two resumable phases inside `out/work/`:

1. Stage, source by source: read every candidate (annotations only), order them by a seeded
   permutation and take the first `target` of them; draft them (templates, task tokens), check the
   conversation and fully decode every image; what fails is counted by reason, and the next
   candidates of the permutation replace it until the target is met. Work is done in chunks of
   `chunk_size` candidates (sorted into storage order, so Parquet row groups are read once); each
   finished chunk is committed as files (`.bin` image bytes, `.jsonl` records, `.json` stats, the
   last written last), so a killed build redoes at most one chunk.
2. Shard: group records that share an image, shuffle the groups with the seed, cut them into shards
   of about `shard_size` records and write each shard (images first, then records) atomically.
   Shards already on disk are kept.
Finally `manifest.json` is written and `work/` removed. Nothing depends on time or on how often the
build was interrupted, so a resumed build is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
import tarfile
from array import array
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np

from .errors import BuildError, DataError
from .mixture import MixtureConfig, SourceConfig, load_config, shortfall, target_count
from .records import FILTER_REASONS, Reject, conversation_problem, try_check_image, validate_record
from .shards import MANIFEST, SHARD_DIR, add_member, decode_record, iter_raw_shard, open_tar_writer, read_manifest
from .sources import get_reader
from .sources.base import Bad, Candidates
from .text import clean, dumps_line

log = logging.getLogger("genllava.data")
WORK = "work"
FORMAT = "genllava-mixture/1"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _dump(data) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------- checks

def _check_sources_exist(config: MixtureConfig) -> None:
    missing = []
    for src in config.sources:
        reader = get_reader(src.reader)
        missing += [f"{src.name}: {path} not found" for path in src.paths if not path.exists()]
        if getattr(reader, "NEEDS_IMAGES", False):
            if src.images is None:
                missing.append(f"{src.name}: no `images` folder configured")
            elif not src.images.is_dir():
                missing.append(f"{src.name}: images folder {src.images} not found")
    if missing:
        raise DataError("missing source data (see docs/data.md for where each dataset lives): " + "; ".join(missing))


def _source_checksums(config: MixtureConfig, work: Path, fingerprint: str) -> dict:
    """sha256 over each source's annotation files (names relative to their common folder + content).

    Kept in work/state.json: a resumed build refuses sources that changed under it, and files whose
    size and mtime did not change are not hashed again.
    """
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is not None and state["config_sha256"] != fingerprint:
        raise DataError(f"{work.parent} holds an unfinished build of another config; delete it or use another --out")
    known = (state or {}).get("files", {})
    files, checksums = {}, {}
    for src in config.sources:
        try:
            paths = sorted(get_reader(src.reader).files(src))
        except DataError as error:
            raise error.naming(src.name) from None
        base = Path(os.path.commonpath(paths)) if paths else Path()
        base = base.parent if base.is_file() else base
        digest = hashlib.sha256()
        for path in paths:
            stat = path.stat()
            entry = known.get(str(path))
            if not entry or entry[:2] != [stat.st_size, stat.st_mtime_ns]:
                entry = [stat.st_size, stat.st_mtime_ns, file_sha256(path)]
            files[str(path)] = entry
            digest.update(f"{path.relative_to(base).as_posix()}\0{entry[2]}\n".encode())
        checksums[src.name] = {"sha256": digest.hexdigest(), "files": len(paths),
                               "bytes": sum(files[str(p)][0] for p in paths)}
    if state is not None:
        for name, checksum in checksums.items():
            if state["checksums"].get(name, {}).get("sha256") != checksum["sha256"]:
                raise DataError(f"source {name} changed since this build started; delete {work.parent} to start over")
    work.mkdir(parents=True, exist_ok=True)
    _write_atomic(state_path, _dump({"config_sha256": fingerprint, "checksums": checksums, "files": files}))
    return checksums


# ----------------------------------------------------------------------------------- phase 1: stage

class _Stager:
    def __init__(self, config: MixtureConfig, work: Path):
        self.config, self.work = config, work
        self.images: dict[str, tuple[str, int, int]] = {}  # "sha.ext" -> (blob file, offset, size)
        self.chunks: list[Path] = []  # staged record files, in build order
        self.stats: dict[str, dict] = {}
        self.pool = None
        self.doing = ""  # what is being processed, for the message of an unexpected failure

    def __enter__(self):
        if self.config.workers:
            self.pool = multiprocessing.get_context("spawn").Pool(self.config.workers)
        return self

    def __exit__(self, *exc):
        if self.pool:
            self.pool.terminate()

    def _check_images(self, jobs):
        if self.pool:
            return self.pool.imap(try_check_image, jobs, chunksize=16)
        return map(try_check_image, jobs)

    def _candidates(self, src: SourceConfig, reader) -> list:
        items = reader.candidates(src)
        against, within = src.options.get("dedup_against"), src.options.get("dedup_within")
        if not (against or within):
            return items
        known = set()
        if against:
            other = next(s for s in self.config.sources if s.name == against)
            other_reader = get_reader(other.reader)
            if not hasattr(reader, "dedup_key") or not hasattr(other_reader, "dedup_key"):
                raise DataError(f"source {src.name}: readers {src.reader} and {other.reader} cannot be deduplicated")
            known = {other_reader.dedup_key(item) for item in other_reader.candidates(other)
                     if not isinstance(item, Bad)}
        seen = set()
        for index, item in enumerate(items):  # marked in place: a large source is never held twice
            key = None if isinstance(item, Bad) else reader.dedup_key(item)
            if key is not None and (key in known or (within and key in seen)):
                list.__setitem__(items, index, Bad("duplicate"))
            if within:
                seen.add(key)
        return items

    def stage(self, src: SourceConfig) -> None:
        reader = get_reader(src.reader)
        self.doing = f"source {src.name}: reading its candidates"
        self._items = None
        try:
            items = self._items = self._candidates(src, reader)
            target = target_count(src, self.config.total, len(items))
        except DataError as error:
            raise error.naming(src.name) from None
        stats = {"candidates": len(items), "target": target, "examined": 0, "accepted": 0, "resampled": 0,
                 "skipped": Counter(), "filtered": Counter(), "text_replaced": 0, "records_with_replaced_text": 0,
                 "unwritable": []}
        self.stats[src.name] = stats
        log.info("%s: %d candidates, target %d", src.name, len(items), target)
        order = list(range(len(items)))
        random.Random(f"{self.config.seed}:{src.name}:order").shuffle(order)
        taken, number = 0, 0
        # Take candidates in permutation order until the target is met: skipped ones are replaced
        # by the next candidates, so the count is exact and the choice depends only on the seed.
        while stats["accepted"] < target and taken < len(order):
            batch = sorted(order[taken:taken + target - stats["accepted"]])
            taken += len(batch)
            for start in range(0, len(batch), self.config.chunk_size):
                chunk = self._chunk(src, reader, items, batch[start:start + self.config.chunk_size], number)
                number += 1
                self._add(stats, chunk)
                self._check_skip_rate(src, stats, final=False)
        self._check_skip_rate(src, stats, final=True)
        unique = stats["accepted"]
        if unique < target and src.fill == "resample" and unique:
            self._add(stats, self._resample(src, target - unique, number))
        takes_all = src.count is None and src.proportion is None
        short = shortfall(target, stats["accepted"])
        if short > 0 and not takes_all:
            if short > src.shortfall_tolerance:
                raise DataError(f"source {src.name}: only {stats['accepted']} usable records for a target of {target} "
                                f"({stats['examined']} examined, {sum(stats['skipped'].values())} skipped, "
                                f"{sum(stats['filtered'].values())} filtered; {short:.2%} short, over its "
                                f"shortfall_tolerance {src.shortfall_tolerance:.2%}); lower its count or proportion, "
                                "raise shortfall_tolerance, or set `fill: resample`", source=src.name)
            log.warning("source %s: %d records for a target of %d (%.2f%% short, within shortfall_tolerance %.2f%%)",
                        src.name, stats["accepted"], target, 100 * short, 100 * src.shortfall_tolerance)
        self._items = None  # the next source's candidates replace these, not join them

    @staticmethod
    def _add(stats: dict, chunk: dict) -> None:
        for key in ("examined", "accepted", "resampled", "text_replaced", "records_with_replaced_text"):
            stats[key] += chunk.get(key, 0)
        stats["skipped"].update(chunk["skipped"])
        stats["filtered"].update(chunk["filtered"])
        stats["unwritable"] += chunk.get("unwritable", [])

    def _resample(self, src: SourceConfig, extra: int, number: int) -> dict:
        """Make up a source's share by sampling its records with replacement: whole passes over them
        in seeded orders (so no record repeats k+1 times before all have repeated k times). A copy keeps
        the record (images are stored once anyway) under the id `{id}#{pass}`."""
        stem = self.work / src.name / f"chunk-{number:05d}"
        done = stem.with_suffix(".json")
        if done.exists():
            self.chunks.append(stem.with_suffix(".jsonl"))
            return json.loads(done.read_text())
        self.doing = f"source {src.name}: resampling {extra} records"
        prefix = str((self.work / src.name).relative_to(self.work))
        lines = [line for path in self.chunks if str(path.relative_to(self.work)).startswith(prefix + os.sep)
                 for line in path.read_bytes().splitlines()]
        rng = random.Random(f"{self.config.seed}:{src.name}:resample")
        out, repeat = [], 0
        while len(out) < extra:
            repeat += 1
            order = list(range(len(lines)))
            rng.shuffle(order)
            for i in order[:extra - len(out)]:
                record = json.loads(lines[i])
                record["id"] = f"{record['id']}#{repeat}"
                out.append(dumps_line(record) + b"\n")
        _write_atomic(stem.with_suffix(".jsonl"), b"".join(out))
        stats = {"examined": 0, "accepted": len(out), "resampled": len(out), "skipped": {}, "filtered": {},
                 "images": {}}
        _write_atomic(done, _dump(stats))
        self.chunks.append(stem.with_suffix(".jsonl"))
        log.info("%s: %d records resampled (%d passes)", src.name, len(out), repeat)
        return stats

    def _check_skip_rate(self, src: SourceConfig, stats: dict, final: bool) -> None:
        examined, skipped = stats["examined"], sum(stats["skipped"].values())
        if not examined or (not final and examined < self.config.skip_check_after):
            return
        if skipped / examined > src.max_skip_rate:
            reasons = ", ".join(f"{reason} {n}" for reason, n in stats["skipped"].most_common(3))
            raise DataError(f"source {src.name}: {skipped} of {examined} examined records skipped "
                             f"({skipped / examined:.1%}: {reasons}), above max_skip_rate {src.max_skip_rate:.1%}")

    def _draft(self, src: SourceConfig, reader, item, index: int):
        """(draft, None, characters replaced) or (None, reason, 0).

        Text is made safe twice: the candidate before the reader sees it, and the draft after (text
        the reader read itself: Parquet cells, per-sample JSON files); see `text.clean`."""
        rng = random.Random(f"{self.config.seed}:{src.name}:{index}")  # per candidate: order-independent
        try:
            if isinstance(item, Bad):
                raise Reject(item.reason)
            item, replaced = clean(item)
            draft = reader.draft(item, src, rng)
            draft.conversations, more = clean(draft.conversations)
            draft.origin, origin_replaced = clean(str(draft.origin))
            problem = conversation_problem(draft.conversations, draft.image is not None, len(draft.targets))
            if problem:
                raise Reject(problem)
            return draft, None, replaced + more + origin_replaced
        except Reject as reject:
            return None, reject.reason, 0
        except (KeyError, IndexError, TypeError, AttributeError):  # malformed native record
            return None, "bad_record", 0
        except DataError as error:
            raise error.naming(src.name, self._where(src, reader, item, index)) from None
        except Exception as error:  # a bug or an I/O failure: not the user's, so keep the cause
            raise BuildError(f"source {src.name}: record {src.name}/{index} of {self._where(src, reader, item, index)}: "
                             f"{type(error).__name__}: {error}") from error

    def _where(self, src: SourceConfig, reader, item, index: int, items=None) -> str:
        """The native file a candidate came from (for messages and the manifest)."""
        items = self._items if items is None else items
        if isinstance(items, Candidates) and items.starts:
            return items.file_of(index)
        where = getattr(reader, "where", None)
        if where is not None and not isinstance(item, Bad):
            try:
                return str(where(item))
            except Exception:  # noqa: BLE001 - only a message is at stake
                pass
        return str(src.paths[0])

    def _chunk(self, src: SourceConfig, reader, items: list, indices: list[int], number: int) -> dict:
        folder = self.work / src.name
        stem = folder / f"chunk-{number:05d}"
        done = stem.with_suffix(".json")
        if done.exists():  # committed by an earlier run
            stats = json.loads(done.read_text())
            blobs = {}  # one string per blob file, shared by its entries (memory at 1M+ images)
            self.images.update({name: (blobs.setdefault(place[0], place[0]), place[1], place[2])
                                for name, place in stats["images"].items()})
            self.chunks.append(stem.with_suffix(".jsonl"))
            return stats
        folder.mkdir(parents=True, exist_ok=True)
        self.doing = f"source {src.name}: chunk {number}"
        skipped, filtered, lines, placed = Counter(), Counter(), [], {}
        replaced_chars = replaced_records = 0
        unwritable = []
        blob = stem.with_suffix(".bin")
        blob_name = str(blob.relative_to(self.work))  # one string shared by this chunk's image entries
        blob_tmp = blob.with_name(blob.name + ".tmp")
        # Small batches bound memory (Parquet drafts carry image bytes) and keep the workers busy.
        step = max(256, 64 * self.config.workers)
        with open(blob_tmp, "wb") as f:
            for start in range(0, len(indices), step):
                drafts = [(index, *self._draft(src, reader, items[index], index)) for index in indices[start:start + step]]
                jobs = [(source, self.config.max_image_pixels) for _, draft, _, _ in drafts if draft
                        for source in ([draft.image] if draft.image is not None else []) + draft.targets]
                results = iter(self._check_images(jobs))
                for index, draft, reason, replaced in drafts:
                    checked = []
                    if draft:
                        checked = [next(results) for _ in range(int(draft.image is not None) + len(draft.targets))]
                        reason = next((result[1] for result in checked if result[0] == "reject"), None)
                    if reason:
                        (filtered if reason in FILTER_REASONS else skipped)[reason] += 1
                        continue
                    names = [f"{sha}.{ext}" for _, sha, ext, _ in checked]
                    has_image = draft.image is not None
                    record = {"id": f"{src.name}/{index}", "image": names[0] if has_image else None,
                              "target_image": names[1:] if has_image else names,
                              "conversations": draft.conversations,
                              "meta": {"task": src.task, "source": src.name, "origin": draft.origin}}
                    try:
                        line = dumps_line(record)
                    except (UnicodeError, TypeError, ValueError) as error:  # text `clean` could not make safe
                        skipped["unwritable"] += 1
                        where = self._where(src, reader, items[index], index, items)
                        unwritable.append({"record": record["id"], "file": where,
                                           "error": f"{type(error).__name__}: {str(error)[:200]}"})
                        continue
                    for name, (_, _, _, data) in zip(names, checked):
                        if name not in self.images and name not in placed:  # each image stored once
                            placed[name] = (blob_name, f.tell(), len(data))
                            f.write(data)
                    lines.append(line + b"\n")
                    replaced_chars += replaced
                    replaced_records += bool(replaced)
        # Commit: image bytes, then records, then the stats file that marks the chunk done.
        os.replace(blob_tmp, blob)
        _write_atomic(stem.with_suffix(".jsonl"), b"".join(lines))
        stats = {"examined": len(indices), "accepted": len(lines), "skipped": dict(skipped),
                 "filtered": dict(filtered), "images": placed, "text_replaced": replaced_chars,
                 "records_with_replaced_text": replaced_records, "unwritable": unwritable}
        _write_atomic(done, _dump(stats))
        self.images.update(placed)
        self.chunks.append(stem.with_suffix(".jsonl"))
        log.info("%s: chunk %d: %d of %d accepted", src.name, number, len(lines), len(indices))
        return stats


# ----------------------------------------------------------------------------------- phase 2: shard

class _Locations:
    """Where each staged record is: (chunk number, offset, size) per record, in three compact arrays
    (24 bytes a record rather than a tuple's ~120: the plan of 2M records stays small)."""

    def __init__(self):
        self.chunk, self.offset, self.size = array("l"), array("q"), array("l")

    def append(self, chunk: int, offset: int, size: int) -> None:
        self.chunk.append(chunk)
        self.offset.append(offset)
        self.size.append(size)

    def __len__(self) -> int:
        return len(self.chunk)

    def __getitem__(self, r) -> tuple[int, int, int]:
        r = int(r)
        return self.chunk[r], self.offset[r], self.size[r]


def _plan_shards(chunks: list[Path], seed: int, shard_size: int):
    """(record locations, shards as (groups of record numbers, number of distinct images)).

    Records that share an image are joined (union-find over compact arrays; images are known by the
    first 64 bits of their sha256), groups are ordered by their first record, shuffled with the seed
    and cut into shards. Memory: a few tens of bytes per record and per image."""
    locations, owner, parent = _Locations(), {}, array("q")

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for number, path in enumerate(chunks):
        offset = 0
        with open(path, "rb") as f:
            for line in f:
                record = json.loads(line)
                r = len(locations)
                locations.append(number, offset, len(line))
                parent.append(r)
                offset += len(line)
                for name in ([record["image"]] if record["image"] else []) + record["target_image"]:
                    key = int(name[:16], 16)
                    if key in owner:
                        a, b = find(r), find(owner[key])
                        if a != b:
                            parent[a] = b
                    else:
                        owner[key] = r
    count = len(locations)
    roots = np.fromiter((find(r) for r in range(count)), dtype=np.int64, count=count)
    images = Counter(find(r) for r in owner.values())
    del owner
    _, first, inverse = np.unique(roots, return_index=True, return_inverse=True)
    members = np.argsort(inverse, kind="stable")  # records grouped, each group in record order
    ends = np.cumsum(np.bincount(inverse, minlength=len(first)))
    order = [int(g) for g in np.argsort(first, kind="stable")]  # groups by their first record: deterministic
    random.Random(f"{seed}:shuffle").shuffle(order)
    shards, current, size, stored = [], [], 0, 0
    for g in order:
        group = members[(ends[g - 1] if g else 0):ends[g]]
        current.append(group)
        size += len(group)
        stored += images.get(int(roots[group[0]]), 0)
        if size >= shard_size:
            shards.append((current, stored))
            current, size, stored = [], 0, 0
    if current:
        shards.append((current, stored))
    return locations, shards


def _write_shards(config: MixtureConfig, out: Path, stager: _Stager) -> list[dict]:
    locations, plan = _plan_shards(stager.chunks, config.seed, config.shard_size)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    files: OrderedDict[str, object] = OrderedDict()

    def read(relative: str, offset: int, size: int) -> bytes:  # from the staged files under work/
        if relative not in files:
            if len(files) >= 64:  # stay far below the open-file limit, however many chunks
                files.popitem(last=False)[1].close()
            files[relative] = open(stager.work / relative, "rb")
        files.move_to_end(relative)
        f = files[relative]
        f.seek(offset)
        return f.read(size)

    chunk_names = [str(path.relative_to(stager.work)) for path in stager.chunks]
    entries, key = [], 0
    try:
        for number, (groups, stored) in enumerate(plan):
            path = out / SHARD_DIR / f"shard-{number:06d}.tar"
            count = sum(len(group) for group in groups)
            if not path.exists():  # else written by an earlier run
                _write_shard(path, groups, key, locations, chunk_names, stager.images, read)
            entries.append({"path": f"{SHARD_DIR}/{path.name}", "records": count, "images": stored,
                            "bytes": path.stat().st_size, "sha256": file_sha256(path)})
            key += count
    finally:
        for f in files.values():
            f.close()
    return entries


def _write_shard(path: Path, groups, key: int, locations, chunk_names, images, read) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        with open_tar_writer(f) as tar:
            for group in groups:
                # The staged lines are already the stored form (`text.dumps_line`): written as they are.
                lines = [read(chunk_names[c], offset, size).rstrip(b"\n") for c, offset, size in
                         (locations[r] for r in group)]
                written = set()
                for line in lines:  # the group's images first, each once
                    record = json.loads(line)
                    for name in ([record["image"]] if record["image"] else []) + record["target_image"]:
                        if name not in written:
                            written.add(name)
                            add_member(tar, name, read(*images[name]))
                for line in lines:
                    add_member(tar, f"{key:09d}.json", line)
                    key += 1
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------- manifest

def _share(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0


def _manifest(config: MixtureConfig, fingerprint: str, checksums: dict, stats: dict, shards: list[dict]) -> dict:
    total = sum(s["accepted"] for s in stats.values())
    tasks = Counter()
    sources = {}
    for src in config.sources:
        s = stats[src.name]
        tasks[src.task] += s["accepted"]
        skipped = sum(s["skipped"].values())
        sources[src.name] = {
            "reader": src.reader, "task": src.task, "paths": [str(p) for p in src.paths],
            "checksum": checksums[src.name], "candidates": s["candidates"], "target": s["target"],
            "count": s["accepted"], "proportion": _share(s["accepted"], total),
            "target_proportion": src.proportion, "examined": s["examined"],
            "skipped": dict(sorted(s["skipped"].items())), "filtered": dict(sorted(s["filtered"].items())),
            "skip_rate": round(skipped / s["examined"], 6) if s["examined"] else 0.0,
            # how the share is made up: distinct records, repeats (fill: resample), what is missing
            "fill": src.fill, "unique": s["accepted"] - s["resampled"], "resampled": s["resampled"],
            "shortfall": max(0, s["target"] - s["accepted"]), "shortfall_tolerance": src.shortfall_tolerance,
            # U+FFFD put in for invalid code points / lone surrogates (text.clean), and unwritable records
            "text_replaced": s["text_replaced"], "records_with_replaced_text": s["records_with_replaced_text"],
            "unwritable": s["unwritable"][:100]}
    skipped, filtered = Counter(), Counter()
    for s in stats.values():
        skipped.update(s["skipped"])
        filtered.update(s["filtered"])
    return {
        "format": FORMAT, "config_sha256": fingerprint, "config": config.to_dict(),
        "records": total, "images": sum(s["images"] for s in shards), "bytes": sum(s["bytes"] for s in shards),
        "tasks": {task: {"count": n, "proportion": _share(n, total)} for task, n in sorted(tasks.items())},
        "sources": sources,
        "skipped": dict(sorted(skipped.items())), "filtered": dict(sorted(filtered.items())),
        "text_replaced": sum(s["text_replaced"] for s in stats.values()),
        "shards": shards,
    }


def build_mixture(config_path, out_dir) -> dict:
    """Build (or resume building) the mixture a config describes into `out_dir`; return its manifest.

    User errors (a missing source or file, a bad config, a source over its skip rate or short of its
    target beyond its tolerance) raise `DataError`, a ValueError with a one-line message naming the
    source and the file. Anything else (a bug, an I/O failure) raises `BuildError` from the original
    exception, naming what was being processed; its traceback is kept.
    """
    config = load_config(config_path)
    out = Path(out_dir)
    progress: list = []
    try:
        return _build(config, out, progress)
    except (DataError, BuildError):
        raise
    except Exception as error:
        doing = (progress[0].doing if progress else "") or "preparing the build"
        raise BuildError(f"building {out} failed while {doing}: {type(error).__name__}: {error}") from error


def _build(config: MixtureConfig, out: Path, progress: list) -> dict:
    fingerprint = config.fingerprint()
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest.get("config_sha256") != fingerprint:
            raise DataError(f"{out} already holds a mixture built from another config; use another --out")
        shutil.rmtree(out / WORK, ignore_errors=True)
        return manifest
    if out.exists() and any(p.name not in {WORK, SHARD_DIR} for p in out.iterdir()):
        raise DataError(f"{out} exists and is not a mixture folder; give an empty or new --out")
    _check_sources_exist(config)
    work = out / WORK
    checksums = _source_checksums(config, work, fingerprint)
    with _Stager(config, work) as stager:
        progress.append(stager)
        for src in config.sources:
            stager.stage(src)
    stager.doing = "writing the shards"
    shards = _write_shards(config, out, stager)
    manifest = _manifest(config, fingerprint, checksums, stager.stats, shards)
    _write_atomic(out / MANIFEST, _dump(manifest))
    shutil.rmtree(work)
    log.info("built %d records in %d shards into %s", manifest["records"], len(shards), out)
    return manifest


# -------------------------------------------------------------------------------------- validation

def validate_mixture(root, decode_images: bool = False, raise_on_error: bool = True) -> dict:
    """Re-check a built mixture against its manifest; return a report.

    Checks every shard's checksum and record count, every record's conversation (task tokens,
    `<image>` count, turn order) and that its images are stored before it, ids are unique, and the
    per-source and per-task counts match the manifest. decode_images=True also decodes every image
    and runs validate_record on the full record. Raises ValueError (one line) if anything is wrong,
    unless raise_on_error=False.
    """
    root = Path(root)
    manifest = read_manifest(root)
    errors: list[str] = []
    tasks, sources, ids = Counter(), Counter(), set()
    images = 0
    declared = manifest.get("sources", {})
    for shard in manifest.get("shards", []):
        path = root / shard["path"]
        if not path.exists():
            errors.append(f"{shard['path']}: missing")
            continue
        if file_sha256(path) != shard["sha256"]:
            errors.append(f"{shard['path']}: checksum differs from the manifest")
            continue
        count, names = 0, set()
        try:
            for record, stored in iter_raw_shard(path):
                count += 1
                names.update(stored)
                rid = record.get("id")
                source, task = record.get("meta", {}).get("source"), record.get("meta", {}).get("task")
                if rid in ids:
                    errors.append(f"{shard['path']}: duplicate id {rid}")
                ids.add(rid)
                if source not in declared or declared[source]["task"] != task:
                    errors.append(f"{shard['path']}: {rid}: source {source!r} / task {task!r} not in the manifest")
                problem = conversation_problem(record.get("conversations"), bool(record.get("image")),
                                               len(record.get("target_image", [])))
                if problem:
                    errors.append(f"{shard['path']}: {rid}: {problem}")
                sources[source] += 1
                tasks[task] += 1
                if decode_images:
                    for name, data in stored.items():
                        if hashlib.sha256(data).hexdigest() != name.split(".")[0]:
                            errors.append(f"{shard['path']}: {rid}: image {name} does not match its hash")
                    try:
                        validate_record(decode_record(record, stored))
                    except Exception as error:  # a broken image or record: report it, go on
                        errors.append(f"{shard['path']}: {rid}: {error}")
            images += len(names)
        except KeyError as error:
            errors.append(f"{shard['path']}: a record names image {error} that is not stored before it")
        except (tarfile.TarError, json.JSONDecodeError, OSError) as error:
            errors.append(f"{shard['path']}: unreadable ({error})")
        if count != shard["records"]:
            errors.append(f"{shard['path']}: {count} records, manifest says {shard['records']}")
    for name, entry in declared.items():
        if sources[name] != entry["count"]:
            errors.append(f"source {name}: {sources[name]} records, manifest says {entry['count']}")
    for name, entry in manifest.get("tasks", {}).items():
        if tasks[name] != entry["count"]:
            errors.append(f"task {name}: {tasks[name]} records, manifest says {entry['count']}")
    total = sum(sources.values())
    report = {"ok": not errors, "records": total, "shards": len(manifest.get("shards", [])), "images": images,
              "sources": dict(sorted(sources.items())),
              "tasks": {t: {"count": n, "proportion": _share(n, total)} for t, n in sorted(tasks.items())},
              "errors": errors[:100], "error_count": len(errors)}
    if errors and raise_on_error:
        raise DataError(f"{root} failed validation: {len(errors)} problem(s); first: {errors[0]}")
    return report
