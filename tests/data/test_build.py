"""Building a mixture from the mini fixture: every outcome counted, failures named, resumable, deterministic."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

import genllava.data.build as build
from genllava.data.build import build_mixture, validate_mixture
from genllava.data.records import validate_record
from genllava.data.shards import iter_raw_shard, iter_records, shard_paths
from native_fixtures import ROOT, tree_digest


@pytest.fixture(scope="module")
def reference(mini, tmp_path_factory):
    """The uninterrupted build of the whole mini fixture: (config, out, manifest)."""
    from native_fixtures import write_config

    folder = tmp_path_factory.mktemp("reference")
    config = write_config(folder / "mix.yaml", mini[0], shard_size=8, chunk_size=6)
    return config, folder / "out", build_mixture(config, folder / "out")


def test_every_outcome_is_counted_by_reason(mini, reference):
    expected, manifest = mini[1], reference[2]
    assert set(manifest["sources"]) == set(expected)
    for name, want in expected.items():
        got = manifest["sources"][name]
        assert (got["count"], got["skipped"], got["filtered"]) == (want["accepted"], want["skipped"],
                                                                  want["filtered"]), name
        assert got["examined"] == got["candidates"] == got["count"] + sum(got["skipped"].values()) + sum(
            got["filtered"].values())
        assert len(got["checksum"]["sha256"]) == 64 and got["checksum"]["files"] >= 1
    # every kind of bad input the builder must survive is in the fixture
    assert set(manifest["skipped"]) >= {"bad_json", "bad_record", "missing_image", "corrupt_image",
                                        "truncated_image", "image_too_large", "not_alternating",
                                        "image_token_mismatch", "empty_answer"}
    assert sum(t["count"] for t in manifest["tasks"].values()) == manifest["records"] == sum(
        s["records"] for s in manifest["shards"])
    report = validate_mixture(reference[1], decode_images=True)
    assert report["ok"] and report["records"] == manifest["records"]


def test_records_come_back_in_the_contract(mini, reference):
    out = reference[1]
    records = list(iter_records(out, shuffle=False))
    assert len(records) == reference[2]["records"]
    for record in records:
        validate_record(record)
    by_origin = {(r["meta"]["source"], r["meta"]["origin"]): r for r in records}
    # a generation sample: the LLaVA-Pretrain caption became the request, its image the target
    pretrain = by_origin[("llava_pretrain", "000000000")]
    source = Path(mini[0]["llava_pretrain"]["images"]) / "00000" / "000000000.jpg"
    assert pretrain["image"] is None and pretrain["conversations"][0]["value"].endswith(" 0.")
    assert list(pretrain["target_image"][0].getdata()) == list(Image.open(source).convert("RGB").getdata())
    # a real InstructPix2Pix pair, pixel for pixel
    edit = by_origin[("instructpix2pix", "0000132/127380018")]
    folder = Path(mini[0]["instructpix2pix"]["path"]) / "shard-09" / "0000132"
    assert edit["image"].size == (512, 512)
    assert edit["image"].tobytes() == Image.open(folder / "127380018_0.jpg").convert("RGB").tobytes()
    assert edit["target_image"][0].tobytes() == Image.open(folder / "127380018_1.jpg").convert("RGB").tobytes()
    assert "Make it look like a painting" in edit["conversations"][0]["value"]
    # text-only rows of LLaVA-Finetune are kept, without an image
    assert any(r["meta"]["source"] == "llava_finetune" and r["image"] is None for r in records)


def test_images_are_stored_once(reference):
    stored, referenced, references = Counter(), set(), 0
    for path in shard_paths(reference[1]):
        import tarfile

        with tarfile.open(path) as tar:
            stored.update(m.name for m in tar.getmembers() if not m.name.endswith(".json"))
        for record, images in iter_raw_shard(path):
            names = ([record["image"]] if record["image"] else []) + record["target_image"]
            referenced.update(names)
            references += len(names)
    assert max(stored.values()) == 1  # no image in two places, across all shards
    assert set(stored) == referenced
    assert references > len(referenced)  # images shared by several records really were shared
    assert sum(s["images"] for s in reference[2]["shards"]) == len(stored) == reference[2]["images"]


def test_same_config_gives_identical_output_and_seed_changes_it(mini_config, tmp_path):
    counts = {"llava_pretrain": 3, "dvqa": 2}
    config = mini_config(counts, only=counts)
    first = build_mixture(config, tmp_path / "a")
    build_mixture(config, tmp_path / "b")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert {s: first["sources"][s]["count"] for s in counts} == counts
    other = build_mixture(mini_config(counts, only=counts, seed=5), tmp_path / "c")
    ids = lambda out: sorted(r["id"] for r in iter_records(out, shuffle=False))  # noqa: E731
    assert other["records"] == first["records"] and ids(tmp_path / "a") != ids(tmp_path / "c")


def test_missing_sources_are_named(mini, tmp_path):
    from native_fixtures import write_config

    sources = json.loads(json.dumps(mini[0]))
    sources["llava_pretrain"]["path"] = str(tmp_path / "nowhere" / "blip_laion_cc_sbu_558k.json")
    sources["docvqa"]["images"] = str(tmp_path / "no-images")
    with pytest.raises(ValueError) as info:
        build_mixture(write_config(tmp_path / "mix.yaml", sources), tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "llava_pretrain" in message and "blip_laion_cc_sbu_558k.json" in message
    assert "docvqa" in message and "no-images" in message and "sharegpt:" not in message
    assert not (tmp_path / "out").exists()


def test_skip_rate_over_threshold_fails_naming_the_source(mini, tmp_path):
    from native_fixtures import write_config

    only = {k: v for k, v in mini[0].items() if k in ("dvqa", "llava_finetune", "lvis_instruct4v")}
    with pytest.raises(ValueError, match=r"source llava_finetune: 13 of 28 examined records skipped .*"
                                         r"above max_skip_rate 30.0%"):
        build_mixture(write_config(tmp_path / "a.yaml", only, max_skip_rate=0.3), tmp_path / "a")
    only["llava_finetune"] = {**only["llava_finetune"], "max_skip_rate": 0.6}  # a per-source threshold
    manifest = build_mixture(write_config(tmp_path / "b.yaml", only, max_skip_rate=0.3), tmp_path / "b")
    assert manifest["sources"]["llava_finetune"]["skip_rate"] == round(13 / 28, 6)


def test_too_few_usable_records_fail(mini_config, tmp_path):
    with pytest.raises(ValueError, match="source llava_pretrain: only 5 usable records for a target of 6"):
        build_mixture(mini_config({"llava_pretrain": 6}, only=["llava_pretrain"]), tmp_path / "a")
    with pytest.raises(ValueError, match="asks for 50 records but the source has only 9 candidates"):
        build_mixture(mini_config({"llava_pretrain": 50}, only=["llava_pretrain"]), tmp_path / "b")


def test_finished_and_foreign_output_folders(mini_config, reference, tmp_path):
    config, out, manifest = reference
    before = tree_digest(out)
    assert build_mixture(config, out) == manifest and tree_digest(out) == before  # nothing redone
    with pytest.raises(ValueError, match="another config"):
        build_mixture(mini_config(seed=3), out)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a mixture folder"):
        build_mixture(config, tmp_path / "notes")


def _interrupt(monkeypatch, target, name, after, leave_partial=None):
    original, calls = getattr(target, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == after:
            if leave_partial:
                leave_partial(*args)
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)


def _killed_then_resumed(monkeypatch, config, out, ref_out, finished: str, left: int):
    """Build until the `_interrupt`ed step kills it, leaving `left` files matching `finished`; then
    build again unpatched: the result must be the uninterrupted build's, byte for byte."""
    with pytest.raises(KeyboardInterrupt):
        build_mixture(config, out)
    assert len(list(out.glob(finished))) == left
    monkeypatch.undo()
    build_mixture(config, out)
    assert tree_digest(out) == tree_digest(ref_out)


def test_resume_after_interrupted_staging_is_identical(reference, monkeypatch, tmp_path):
    config, ref_out, _ = reference
    _interrupt(monkeypatch, build._Stager, "_chunk", after=12)
    _killed_then_resumed(monkeypatch, config, tmp_path / "out", ref_out, "work/*/chunk-*.json", left=11)


def test_resume_after_interrupted_sharding_is_identical(reference, monkeypatch, tmp_path):
    config, ref_out, _ = reference

    def partial(path, *rest):  # the process died halfway through writing this shard
        path.with_name(path.name + ".tmp").write_bytes(b"half a tar")

    _interrupt(monkeypatch, build, "_write_shard", after=3, leave_partial=partial)
    _killed_then_resumed(monkeypatch, config, tmp_path / "out", ref_out, "shards/*.tar", left=2)


def test_resume_after_sigkill_is_identical(reference, tmp_path):
    config, ref_out, _ = reference
    out = tmp_path / "out"
    slow_build = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
                  "import genllava.data.build as b\n"
                  "chunk = b._Stager._chunk\n"
                  "b._Stager._chunk = lambda *a: (time.sleep(0.05), chunk(*a))[1]\n"
                  f"b.build_mixture({str(config)!r}, {str(out)!r})\n")
    process = subprocess.Popen([sys.executable, "-c", slow_build])
    deadline = time.time() + 60
    while len(list(out.glob("work/*/chunk-*.json"))) < 5 and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    build_mixture(config, out)
    assert tree_digest(out) == tree_digest(ref_out)


def test_worker_processes_give_the_same_output(reference, tmp_path):
    config, ref_out, _ = reference
    text = config.read_text() + "workers: 2\n"
    (tmp_path / "mix.yaml").write_text(text)
    build_mixture(tmp_path / "mix.yaml", tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(ref_out)


def test_validate_finds_tampering(reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference[1], out)
    shard = out / reference[2]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum differs"):
        validate_mixture(out)
    shutil.rmtree(out)
    shutil.copytree(reference[1], out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["sources"]["dvqa"]["count"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = validate_mixture(out, raise_on_error=False)
    assert not report["ok"] and report["errors"] == ["source dvqa: 4 records, manifest says 5"]
    with pytest.raises(ValueError, match="is not a built mixture"):
        validate_mixture(tmp_path / "empty")
