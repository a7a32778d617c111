"""The mixture config: which sources go in, where they are on disk, and how many records each gives.

```yaml
seed: 0                 # one seed for sampling, prompt phrasings and shuffling
root: /data/gvit        # relative source paths start here (default: the config file's folder)
total: 2076000          # needed only by sources that give a proportion
sources:
  llava_pretrain:       # a name from genllava.data.sources.READERS, or any name plus `reader:`
    path: LLaVA-Pretrain/blip_laion_cc_sbu_558k.json
    images: LLaVA-Pretrain/images
    count: all          # every usable record; or a number; or `proportion: 0.2688` of `total`
```
See configs/gvit-mix.yaml for every key and docs/data.md for what each source expects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from .errors import DataError

from .records import TASKS
from .sources import get_reader

SOURCE_KEYS = {"reader", "task", "path", "images", "count", "proportion", "max_skip_rate", "shortfall_tolerance", "fill"}
# How a source whose download holds fewer usable records than its target makes up its share:
# "none" (the shortfall is reported, and fatal beyond `shortfall_tolerance`) or "resample" (its
# records are repeated, sampling with replacement in a seeded order; the manifest counts the repeats).
FILLS = ("none", "resample")


@dataclass(frozen=True)
class SourceConfig:
    name: str
    reader: str
    task: str
    paths: tuple[Path, ...]
    images: Path | None
    count: int | None = None        # None and no proportion: every usable record
    proportion: float | None = None
    max_skip_rate: float = 0.05
    options: dict = field(default_factory=dict)
    shortfall_tolerance: float = 0.01  # a source may fall this fraction short of its target (reported)
    fill: str = "none"


@dataclass(frozen=True)
class MixtureConfig:
    sources: tuple[SourceConfig, ...]
    seed: int = 0
    total: int | None = None
    shard_size: int = 1000          # records per output shard (records that share an image stay together)
    chunk_size: int = 10000         # candidates per unit of resumable work
    max_skip_rate: float = 0.05     # default for sources that do not set their own
    shortfall_tolerance: float = 0.01  # default: how far short of its target a source may fall, reported not fatal
    skip_check_after: int = 1000    # examined records before the skip rate is judged mid-source
    max_image_pixels: int = 89_478_485  # PIL's own decompression-bomb limit
    workers: int = 0                # image-checking processes; 0 checks in the building process

    def to_dict(self) -> dict:
        """The settings as plain data, for the manifest. `workers` is left out: it never changes the output."""
        data = json.loads(json.dumps(asdict(self), default=str))
        data.pop("workers")
        return data

    def fingerprint(self) -> str:
        """What decides the output: a resumed build must match it. Thresholds and workers do not."""
        data = self.to_dict()
        for key in ("max_skip_rate", "skip_check_after", "shortfall_tolerance"):
            data.pop(key)
        for source in data["sources"]:
            source.pop("max_skip_rate")
            source.pop("shortfall_tolerance")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _positive_int(value, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise DataError(f"{what} must be a {'non-negative' if allow_zero else 'positive'} integer, not {value!r}")
    return value


def _rate(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DataError(f"{what} must be a number between 0 and 1, not {value!r}")
    return float(value)


def _source(name: str, spec, root: Path, default_skip: float, default_tolerance: float) -> SourceConfig:
    if not isinstance(spec, dict):
        raise DataError(f"source {name}: expected a mapping of settings")
    reader_name = spec.get("reader", name)
    reader = get_reader(reader_name)
    unknown = set(spec) - SOURCE_KEYS - set(reader.OPTIONS)
    if unknown:
        raise DataError(f"source {name}: unknown setting(s) {', '.join(sorted(unknown))}")
    raw_paths = spec.get("path")
    raw_paths = [raw_paths] if isinstance(raw_paths, str) else raw_paths
    if not raw_paths or not all(isinstance(p, str) and p for p in raw_paths):
        raise DataError(f"source {name}: `path` must be a path or a list of paths")
    paths = tuple((root / Path(p).expanduser()).resolve() for p in raw_paths)
    images = spec.get("images")
    if images is not None:
        images = (root / Path(str(images)).expanduser()).resolve()
    elif getattr(reader, "DEFAULT_IMAGES", None):
        images = paths[0] / reader.DEFAULT_IMAGES
    task = spec.get("task", reader.TASK)
    if task not in TASKS:
        raise DataError(f"source {name}: task must be one of {TASKS}, not {task!r}")
    count, proportion = spec.get("count"), spec.get("proportion")
    if count is not None and proportion is not None:
        raise DataError(f"source {name}: give `count` or `proportion`, not both")
    if count == "all":
        count = None
    elif count is not None:
        count = _positive_int(count, f"source {name}: count", allow_zero=True)
    if proportion is not None:
        proportion = _rate(proportion, f"source {name}: proportion")
    fill = spec.get("fill", "none")
    if fill not in FILLS:
        raise DataError(f"source {name}: fill must be one of {', '.join(FILLS)}, not {fill!r}")
    options = {**reader.OPTIONS, **{k: v for k, v in spec.items() if k in reader.OPTIONS}}
    if options.get("tokenizer"):
        options["tokenizer"] = str((root / Path(str(options["tokenizer"])).expanduser()).resolve())
    return SourceConfig(name=name, reader=reader_name, task=task, paths=paths, images=images, count=count,
                        proportion=proportion,
                        max_skip_rate=_rate(spec.get("max_skip_rate", default_skip), f"source {name}: max_skip_rate"),
                        options=options, fill=fill,
                        shortfall_tolerance=_rate(spec.get("shortfall_tolerance", default_tolerance),
                                                  f"source {name}: shortfall_tolerance"))


def load_config(path) -> MixtureConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise DataError(f"cannot read mixture config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise DataError(f"mixture config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict) or not data["sources"]:
        raise DataError(f"mixture config {path} needs a `sources:` mapping")
    known = {f for f in MixtureConfig.__dataclass_fields__} | {"root"}
    unknown = set(data) - known
    if unknown:
        raise DataError(f"mixture config {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    root = (path.parent / Path(str(data.get("root", "."))).expanduser()).resolve()
    default_skip = _rate(data.get("max_skip_rate", 0.05), "max_skip_rate")
    default_tolerance = _rate(data.get("shortfall_tolerance", 0.01), "shortfall_tolerance")
    sources = tuple(_source(str(name), spec, root, default_skip, default_tolerance)
                    for name, spec in data["sources"].items())
    total = data.get("total")
    if total is not None:
        total = _positive_int(total, "total")
    if any(s.proportion is not None for s in sources):
        if total is None:
            raise DataError(f"mixture config {path}: sources give proportions, so `total` is needed")
        if sum(s.proportion or 0 for s in sources) > 1 + 1e-9:
            raise DataError(f"mixture config {path}: proportions add up to more than 1")
    for source in sources:
        for option in ("dedup_against",):
            other = source.options.get(option)
            if other is not None and other not in {s.name for s in sources}:
                raise DataError(f"source {source.name}: dedup_against names {other!r}, which is not a source here")
    return MixtureConfig(
        sources=sources, seed=_positive_int(data.get("seed", 0), "seed", allow_zero=True), total=total,
        shard_size=_positive_int(data.get("shard_size", 1000), "shard_size"),
        chunk_size=_positive_int(data.get("chunk_size", 10000), "chunk_size"),
        max_skip_rate=default_skip, shortfall_tolerance=default_tolerance,
        skip_check_after=_positive_int(data.get("skip_check_after", 1000), "skip_check_after"),
        max_image_pixels=_positive_int(data.get("max_image_pixels", 89_478_485), "max_image_pixels"),
        workers=_positive_int(data.get("workers", 0), "workers", allow_zero=True))


def target_count(source: SourceConfig, total: int | None, available: int) -> int:
    """How many records the source must give: its count, its share of `total`, or all it has.

    A target above the candidates the source holds is a user error unless the source fills its
    share by resampling, or the shortfall is within its `shortfall_tolerance` (then it is reported)."""
    if source.count is not None:
        target = source.count
    elif source.proportion is not None:
        target = round(source.proportion * total)
    else:
        return available
    if target > available and source.fill == "none" and shortfall(target, available) > source.shortfall_tolerance:
        raise DataError(f"source {source.name}: the config asks for {target} records but the source has only "
                        f"{available} candidates, {shortfall(target, available):.2%} short (shortfall_tolerance "
                        f"{source.shortfall_tolerance:.2%}); lower its count or proportion, or set `fill: resample`")
    return target


def shortfall(target: int, achieved: int) -> float:
    """The fraction of `target` that `achieved` falls short by (0 when it is met)."""
    return max(0, target - achieved) / target if target else 0.0
