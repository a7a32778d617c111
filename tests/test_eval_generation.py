"""`genllava eval generation` and `eval editing` end to end on a tiny model with tiny extractors:
images written as made, a run killed part-way resumes (keeping what was drawn, drawing the rest,
the same images as a straight run), and the metrics land in metrics.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from genllava.cli import main
from genllava.eval.shapes_sets import write_editing_set, write_generation_set

from test_eval_metrics import save_tiny_clip, save_tiny_dino, save_tiny_fid_extractor


@pytest.fixture(scope="module")
def extractors(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen-extractors")
    return {"fid": save_tiny_fid_extractor(root / "features.pt"), "clip": save_tiny_clip(root / "clip"),
            "dino": save_tiny_dino(root / "dino")}


def cpu(*args) -> list[str]:
    return [*args, "--device", "cpu", "--dtype", "float32"]


def kill_once(command: list[str], folder, count: int, timeout: float = 300) -> None:
    """Runs `genllava ...` in a child process and SIGKILLs it once `count` images exist in folder."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "genllava", *command], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if folder.is_dir() and len(list(folder.glob("*.png"))) >= count:
                break
            if child.poll() is not None:
                pytest.fail(f"the run ended before it was killed: {child.stderr.read()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no images appeared in time")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_eval_generation_resumes_after_a_kill(saved_tiny_model, extractors, tmp_path, capsys):
    captions, references = write_generation_set(tmp_path / "set", samples=8, seed=2)
    options = ["--captions", str(captions), "--references", str(references), "--batch-size", "2", "--seed", "5",
               "--inception", extractors["fid"], "--clip", extractors["clip"]]
    killed = tmp_path / "killed"
    kill_once(cpu("eval", "generation", "--model", str(saved_tiny_model), "--out", str(killed), *options),
              killed / "images", count=2)
    before = {p.name: p.read_bytes() for p in (killed / "images").glob("*.png")}
    assert 2 <= len(before) < 8 and not (killed / "metrics.json").exists()
    assert not list((killed / "images").glob("*.partial"))

    assert main(cpu("eval", "generation", "--model", str(saved_tiny_model), "--out", str(killed), *options)) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["run"]["skipped"] == len(before) and resumed["run"]["drawn"] == 8 - len(before)
    for name, data in before.items():
        assert (killed / "images" / name).read_bytes() == data  # kept, not redrawn

    straight = tmp_path / "straight"
    assert main(cpu("eval", "generation", "--model", str(saved_tiny_model), "--out", str(straight), *options)) == 0
    for path in sorted((straight / "images").glob("*.png")):
        assert (killed / "images" / path.name).read_bytes() == path.read_bytes(), path.name  # seed per caption
    metrics = resumed["metrics"]
    assert metrics["images"] == 8 and metrics["fid"] >= 0
    assert -1 <= metrics["clip_i"] <= 1 and 0 <= metrics["clip_score"] <= 100
    assert json.loads((straight / "metrics.json").read_text())["metrics"] == pytest.approx(metrics)
    assert "fid" in capsys.readouterr().out


def test_eval_editing_scores_turns_and_resumes(saved_tiny_model, extractors, tmp_path):
    data = write_editing_set(tmp_path / "edits", sessions=3, turns=2, seed=4)
    out = tmp_path / "out"
    command = cpu("eval", "editing", "--model", str(saved_tiny_model), "--data", str(data), "--out", str(out),
                  "--dino", extractors["dino"], "--clip", extractors["clip"], "--batch-size", "2")
    kill_once(command, out / "images", count=1)
    kept = {p.name: p.read_bytes() for p in (out / "images").glob("*.png")}
    assert 1 <= len(kept) < 6
    assert main(command) == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["run"]["skipped"] == len(kept)
    for name, value in kept.items():
        assert (out / "images" / name).read_bytes() == value
    assert sorted(p.name for p in (out / "images").glob("*.png")) == sorted(
        f"s{s}_turn{t}.png" for s in range(3) for t in (1, 2))
    metrics = payload["metrics"]
    assert set(metrics["per_turn"]) == {"1", "2"} and metrics["final_turn"]["edits"] == 3
    assert metrics["all_turns"]["edits"] == 6
    for key in ("dino", "clip_i", "clip_t", "l1"):
        assert key in metrics["all_turns"] and key in metrics["final_turn"]
    finals = [row for row in payload["per_edit"] if row["turn"] == 2]
    assert metrics["final_turn"]["dino"] == pytest.approx(sum(r["dino"] for r in finals) / 3)


def test_missing_extractor_weights_end_in_one_line(saved_tiny_model, tmp_path, capsys):
    captions, references = write_generation_set(tmp_path / "set", samples=2)
    code = main(cpu("eval", "generation", "--model", str(saved_tiny_model), "--captions", str(captions),
                    "--references", str(references), "--out", str(tmp_path / "out"),
                    "--clip", str(tmp_path / "no-clip")))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "openai/clip-vit-large-patch14" in err
