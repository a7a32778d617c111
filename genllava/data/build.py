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
from collections import Counter, OrderedDict, defaultdict
from pathlib import Path

from .mixture import MixtureConfig, SourceConfig, load_config, target_count
from .records import FILTER_REASONS, Reject, conversation_problem, try_check_image, validate_record
from .shards import MANIFEST, SHARD_DIR, add_member, decode_record, iter_raw_shard, open_tar_writer, read_manifest
from .sources import get_reader
from .sources.base import Bad

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
        raise ValueError("missing source data (see docs/data.md for where each dataset lives): " + "; ".join(missing))


def _source_checksums(config: MixtureConfig, work: Path, fingerprint: str) -> dict:
    """sha256 over each source's annotation files (names relative to their common folder + content).

    Kept in work/state.json: a resumed build refuses sources that changed under it, and files whose
    size and mtime did not change are not hashed again.
    """
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is not None and state["config_sha256"] != fingerprint:
        raise ValueError(f"{work.parent} holds an unfinished build of another config; delete it or use another --out")
    known = (state or {}).get("files", {})
    files, checksums = {}, {}
    for src in config.sources:
        paths = sorted(get_reader(src.reader).files(src))
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
                raise ValueError(f"source {name} changed since this build started; delete {work.parent} to start over")
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
                raise ValueError(f"source {src.name}: readers {src.reader} and {other.reader} cannot be deduplicated")
            known = {other_reader.dedup_key(item) for item in other_reader.candidates(other)
                     if not isinstance(item, Bad)}
        seen, out = set(), []
        for item in items:
            key = None if isinstance(item, Bad) else reader.dedup_key(item)
            if key is not None and (key in known or (within and key in seen)):
                item = Bad("duplicate")
            seen.add(key)
            out.append(item)
        return out

    def stage(self, src: SourceConfig) -> None:
        reader = get_reader(src.reader)
        items = self._candidates(src, reader)
        target = target_count(src, self.config.total, len(items))
        stats = {"candidates": len(items), "target": target, "examined": 0, "accepted": 0,
                 "skipped": Counter(), "filtered": Counter()}
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
                for key in ("examined", "accepted"):
                    stats[key] += chunk[key]
                stats["skipped"].update(chunk["skipped"])
                stats["filtered"].update(chunk["filtered"])
                self._check_skip_rate(src, stats, final=False)
        self._check_skip_rate(src, stats, final=True)
        takes_all = src.count is None and src.proportion is None
        if stats["accepted"] < target and not takes_all:
            raise ValueError(f"source {src.name}: only {stats['accepted']} usable records for a target of {target} "
                             f"({stats['examined']} examined, {sum(stats['skipped'].values())} skipped, "
                             f"{sum(stats['filtered'].values())} filtered); lower its count or proportion")

    def _check_skip_rate(self, src: SourceConfig, stats: dict, final: bool) -> None:
        examined, skipped = stats["examined"], sum(stats["skipped"].values())
        if not examined or (not final and examined < self.config.skip_check_after):
            return
        if skipped / examined > src.max_skip_rate:
            reasons = ", ".join(f"{reason} {n}" for reason, n in stats["skipped"].most_common(3))
            raise ValueError(f"source {src.name}: {skipped} of {examined} examined records skipped "
                             f"({skipped / examined:.1%}: {reasons}), above max_skip_rate {src.max_skip_rate:.1%}")

    def _draft(self, src: SourceConfig, reader, item, index: int):
        """(draft, None) or (None, reason)."""
        rng = random.Random(f"{self.config.seed}:{src.name}:{index}")  # per candidate: order-independent
        try:
            if isinstance(item, Bad):
                raise Reject(item.reason)
            draft = reader.draft(item, src, rng)
            problem = conversation_problem(draft.conversations, draft.image is not None, len(draft.targets))
            if problem:
                raise Reject(problem)
            return draft, None
        except Reject as reject:
            return None, reject.reason
        except (KeyError, IndexError, TypeError, AttributeError):  # malformed native record
            return None, "bad_record"

    def _chunk(self, src: SourceConfig, reader, items: list, indices: list[int], number: int) -> dict:
        folder = self.work / src.name
        stem = folder / f"chunk-{number:05d}"
        done = stem.with_suffix(".json")
        if done.exists():  # committed by an earlier run
            stats = json.loads(done.read_text())
            self.images.update({name: tuple(place) for name, place in stats["images"].items()})
            self.chunks.append(stem.with_suffix(".jsonl"))
            return stats
        folder.mkdir(parents=True, exist_ok=True)
        skipped, filtered, records, placed = Counter(), Counter(), [], {}
        blob = stem.with_suffix(".bin")
        blob_tmp = blob.with_name(blob.name + ".tmp")
        # Small batches bound memory (Parquet drafts carry image bytes) and keep the workers busy.
        step = max(256, 64 * self.config.workers)
        with open(blob_tmp, "wb") as f:
            for start in range(0, len(indices), step):
                drafts = [(index, *self._draft(src, reader, items[index], index)) for index in indices[start:start + step]]
                jobs = [(source, self.config.max_image_pixels) for _, draft, _ in drafts if draft
                        for source in ([draft.image] if draft.image is not None else []) + draft.targets]
                results = iter(self._check_images(jobs))
                for index, draft, reason in drafts:
                    checked = []
                    if draft:
                        checked = [next(results) for _ in range(int(draft.image is not None) + len(draft.targets))]
                        reason = next((result[1] for result in checked if result[0] == "reject"), None)
                    if reason:
                        (filtered if reason in FILTER_REASONS else skipped)[reason] += 1
                        continue
                    names = [f"{sha}.{ext}" for _, sha, ext, _ in checked]
                    for name, (_, _, _, data) in zip(names, checked):
                        if name not in self.images and name not in placed:  # each image stored once
                            placed[name] = (str(blob.relative_to(self.work)), f.tell(), len(data))
                            f.write(data)
                    has_image = draft.image is not None
                    records.append({"id": f"{src.name}/{index}", "image": names[0] if has_image else None,
                                    "target_image": names[1:] if has_image else names,
                                    "conversations": draft.conversations,
                                    "meta": {"task": src.task, "source": src.name, "origin": draft.origin}})
        # Commit: image bytes, then records, then the stats file that marks the chunk done.
        os.replace(blob_tmp, blob)
        lines = b"".join(json.dumps(r, ensure_ascii=False, sort_keys=True).encode() + b"\n" for r in records)
        _write_atomic(stem.with_suffix(".jsonl"), lines)
        stats = {"examined": len(indices), "accepted": len(records), "skipped": dict(skipped),
                 "filtered": dict(filtered), "images": placed}
        _write_atomic(done, _dump(stats))
        self.images.update(placed)
        self.chunks.append(stem.with_suffix(".jsonl"))
        log.info("%s: chunk %d: %d of %d accepted", src.name, number, len(records), len(indices))
        return stats


# ----------------------------------------------------------------------------------- phase 2: shard

def _plan_shards(chunks: list[Path], seed: int, shard_size: int):
    """(record locations, shards as (groups of record numbers, number of distinct images))."""
    locations, owner, parent = [], {}, []

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
                locations.append((number, offset, len(line)))
                parent.append(r)
                offset += len(line)
                for name in ([record["image"]] if record["image"] else []) + record["target_image"]:
                    if name in owner:
                        parent[find(r)] = find(owner[name])
                    else:
                        owner[name] = r
    groups, images = defaultdict(list), Counter(find(r) for r in owner.values())
    for r in range(len(locations)):
        groups[find(r)].append(r)
    order = list(groups.items())  # ordered by each group's first record: deterministic
    random.Random(f"{seed}:shuffle").shuffle(order)
    shards, current, size, stored = [], [], 0, 0
    for root, group in order:
        current.append(group)
        size += len(group)
        stored += images[root]
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
                records = [json.loads(read(chunk_names[c], offset, size)) for c, offset, size in
                           (locations[r] for r in group)]
                written = set()
                for record in records:  # the group's images first, each once
                    for name in ([record["image"]] if record["image"] else []) + record["target_image"]:
                        if name not in written:
                            written.add(name)
                            add_member(tar, name, read(*images[name]))
                for record in records:
                    add_member(tar, f"{key:09d}.json",
                               json.dumps(record, ensure_ascii=False, sort_keys=True).encode())
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
            "skip_rate": round(skipped / s["examined"], 6) if s["examined"] else 0.0}
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
        "shards": shards,
    }


def build_mixture(config_path, out_dir) -> dict:
    """Build (or resume building) the mixture a config describes into `out_dir`; return its manifest.

    Raises ValueError with a one-line message for user errors: a missing source, a bad config, a
    source whose skip rate is over its threshold, or too few usable records for a target.
    """
    config = load_config(config_path)
    out = Path(out_dir)
    fingerprint = config.fingerprint()
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        if manifest.get("config_sha256") != fingerprint:
            raise ValueError(f"{out} already holds a mixture built from another config; use another --out")
        shutil.rmtree(out / WORK, ignore_errors=True)
        return manifest
    if out.exists() and any(p.name not in {WORK, SHARD_DIR} for p in out.iterdir()):
        raise ValueError(f"{out} exists and is not a mixture folder; give an empty or new --out")
    _check_sources_exist(config)
    work = out / WORK
    checksums = _source_checksums(config, work, fingerprint)
    with _Stager(config, work) as stager:
        for src in config.sources:
            stager.stage(src)
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
        raise ValueError(f"{root} failed validation: {len(errors)} problem(s); first: {errors[0]}")
    return report
