"""A mixture built from thousands of fixture records: proportions, and training consuming the shards."""

from __future__ import annotations

import itertools
from collections import Counter

from torch.utils.data import DataLoader

from genllava.data.build import validate_mixture
from genllava.data.conversation import parse_record
from genllava.data.dataset import MixtureDataset
from genllava.data.records import validate_record
from genllava.data.shards import iter_raw_shard, shard_paths
from native_fixtures import PAPER_TASKS, SCALED_PROPORTIONS, SCALED_TOTAL


def test_mixture_hits_the_configured_proportions(scaled):
    out, manifest = scaled
    sources, tasks = Counter(), Counter()
    for path in shard_paths(out):  # counted from the shards themselves, not taken from the manifest
        for record, _ in iter_raw_shard(path):
            sources[record["meta"]["source"]] += 1
            tasks[record["meta"]["task"]] += 1
    total = sum(sources.values())
    assert abs(total - SCALED_TOTAL) <= len(SCALED_PROPORTIONS)  # per-source rounding only
    for task, share in PAPER_TASKS.items():
        assert abs(tasks[task] / total - share) <= 0.005, task
        assert manifest["tasks"][task] == {"count": tasks[task], "proportion": round(tasks[task] / total, 6)}
    for source, share in SCALED_PROPORTIONS.items():
        assert abs(sources[source] / total - share) <= 0.005, source
        assert manifest["sources"][source]["count"] == sources[source] == round(share * SCALED_TOTAL)
    # broken candidates were drawn, skipped and replaced by the next ones of the seeded order
    finetune = manifest["sources"]["llava_finetune"]
    assert finetune["examined"] > finetune["count"] and sum(finetune["skipped"].values()) > 0
    assert validate_mixture(out)["ok"]


def test_training_consumes_the_shards(scaled):
    out, manifest = scaled
    dataset = MixtureDataset(out, seed=0)
    loader = DataLoader(dataset, batch_size=64, num_workers=2, collate_fn=list)
    ids, tasks = [], Counter()
    for batch in loader:
        for record in batch:
            validate_record(record)
            parse_record(record)  # what the training collate parses every record with
            ids.append(record["id"])
            tasks[record["meta"]["task"]] += 1
    assert len(ids) == len(set(ids)) == manifest["records"]  # each record once per epoch, across workers
    assert tasks == Counter({t: v["count"] for t, v in manifest["tasks"].items()})
    # records are mixed: no long run of one task, as the shuffled groups and the buffer interleave them
    longest = max(len(list(run)) for _, run in itertools.groupby(ids, key=lambda i: i.split("/")[0]))
    assert longest < 30


def test_ranks_and_epochs(scaled):
    out, manifest = scaled
    ranks = [[r["id"] for r in MixtureDataset(out, seed=0, rank=rank, world_size=2)] for rank in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1])
    assert len(ranks[0]) + len(ranks[1]) == manifest["records"] and min(map(len, ranks)) > 0
    dataset = MixtureDataset(out, seed=0)
    first = [r["id"] for r in itertools.islice(dataset, 50)]
    assert first == [r["id"] for r in itertools.islice(dataset, 50)]  # same seed and epoch: same order
    dataset.set_epoch(1)
    assert first != [r["id"] for r in itertools.islice(dataset, 50)]
