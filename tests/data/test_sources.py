"""Source readers on their native layouts, the real InstructPix2Pix samples first."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from genllava.data.mixture import load_config
from genllava.data.records import check_image, conversation_problem
from genllava.data.sources import READERS, instructpix2pix, sharegpt
from genllava.data.templates import EDITING, IMAGE_ANSWER, IMAGE_TOKEN, T2I
from native_fixtures import REAL_IP2P, write_config

TOKENIZER = Path(__file__).resolve().parents[2] / "genllava" / "shapes" / "pretrained" / "tokenizer"


class Src:
    def __init__(self, path, images=None, **options):
        self.paths, self.images, self.options = (Path(path),), images, options


def test_instructpix2pix_reads_the_real_samples_as_they_are():
    src = Src(REAL_IP2P)
    items = instructpix2pix.candidates(src)
    assert [(Path(i[1]).name, i[2]) for i in items] == [
        ("0000132", "127380018"), ("0000132", "1818564940"), ("0000145", "1696064930"), ("0000145", "2315401110")]
    assert [p.parent.name for p in instructpix2pix.files(src)] == ["0000132", "0000145"]
    edits = {"0000132": "Make it look like a painting", "0000145": "make the painting into a mosaic"}
    for item in items:
        draft = instructpix2pix.draft(item, src, random.Random(0))
        human, answer = (turn["value"] for turn in draft.conversations)
        instruction = edits[Path(item[1]).name]
        assert human.startswith(f"{IMAGE_TOKEN}\n")
        assert human[len(IMAGE_TOKEN) + 1:] in {t.format(instruction=instruction) for t in EDITING}
        assert answer == T2I + IMAGE_ANSWER
        assert (draft.image.name, draft.targets[0].name) == (f"{item[2]}_0.jpg", f"{item[2]}_1.jpg")
        assert conversation_problem(draft.conversations, True, 1) is None
        for source in (draft.image, *draft.targets):
            assert check_image(source, 89_478_485)[1] == "jpg"


def test_instructpix2pix_parquet_form(mini):
    pytest.importorskip("pyarrow")
    sources = mini[0]
    src = Src(sources["ip2p_parquet"]["path"])
    items = instructpix2pix.candidates(src)
    assert len(items) == 7 and all(kind == "parquet" for kind, _ in items)
    draft = instructpix2pix.draft(items[5], src, random.Random(0))  # row 5: second row group
    assert "remove the sky" in draft.conversations[0]["value"]
    assert isinstance(draft.image, bytes)


def test_sharegpt_truncates_whole_exchanges():
    turns = [("human", "q1 " * 10), ("gpt", "a1 " * 100), ("human", "q2 " * 10), ("gpt", "a2 " * 1000)]
    kept = sharegpt.truncate(turns, 200)
    assert kept == turns[:2]  # the second exchange would not fit: dropped whole, never split off
    assert sharegpt.truncate(turns, 10_000) == turns


def test_sharegpt_cuts_an_overlong_first_answer_with_the_tokenizer():
    count, _ = sharegpt._counter(str(TOKENIZER))
    turns = [("human", "Generate an image of a red circle."), ("gpt", "a blue square at the top left. " * 200)]
    kept = sharegpt.truncate(turns, 100, str(TOKENIZER))
    assert kept[0] == turns[0] and turns[1][1].startswith(kept[1][1])
    used = count(kept[0][1]) + count(kept[1][1]) + 2 * sharegpt.TURN_OVERHEAD
    assert 90 <= used <= 100
    with pytest.raises(Exception, match="too_long"):
        sharegpt.truncate([("human", "word " * 400), ("gpt", "ok")], 100, str(TOKENIZER))


def test_every_reader_declares_the_interface():
    for name, reader in READERS.items():
        assert reader.TASK in ("understanding", "text", "generation", "editing"), name
        assert callable(reader.files) and callable(reader.candidates) and callable(reader.draft), name
        assert isinstance(reader.OPTIONS, dict), name


def test_config_errors(mini, tmp_path):
    sources = mini[0]
    cases = [
        ({"sharegpt": {**sources["sharegpt"], "colour": 1}}, "all", "unknown setting"),
        ({"nonsense": {"path": "x"}}, "all", "unknown reader"),
        ({"sharegpt": sources["sharegpt"]}, {"proportion": 0.5}, "`total` is needed"),
        ({"llava_finetune": sources["llava_finetune"]}, "all", "dedup_against"),
        ({"sharegpt": sources["sharegpt"]}, -1, "non-negative"),
        ({"sharegpt": sources["sharegpt"]}, {"proportion": 1.5}, "between 0 and 1"),
    ]
    for i, (spec, count, message) in enumerate(cases):
        path = write_config(tmp_path / f"c{i}.yaml", spec, {name: count for name in spec})
        with pytest.raises(ValueError, match=message):
            load_config(path)


def test_config_resolves_relative_paths(tmp_path):
    (tmp_path / "cfg.yaml").write_text("root: data\nsources:\n  chartqa:\n    path: ChartQA/train\n    count: 5\n")
    config = load_config(tmp_path / "cfg.yaml")
    (source,) = config.sources
    assert source.paths == ((tmp_path / "data" / "ChartQA" / "train").resolve(),)
    assert source.images == source.paths[0] / "png" and source.count == 5 and source.task == "understanding"


def test_shipped_config_has_the_papers_task_shares():
    from collections import Counter

    from native_fixtures import PAPER_TASKS, ROOT

    config = load_config(ROOT / "configs" / "gvit-mix.yaml")
    tasks = Counter()
    for source in config.sources:
        tasks[source.task] += source.count
    total = sum(tasks.values())
    assert abs(total - 2_076_000) <= 1000
    for task, share in PAPER_TASKS.items():
        assert abs(tasks[task] / total - share) <= 0.0005, task
