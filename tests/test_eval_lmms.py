"""The lmms-eval plug-in, offline: lmms-eval finds `genllava` through its entry point and runs local
shapes-world tasks (a YAML and a local JSON dataset, --include_path) on a tiny trained model.

- shapes_qa (generate_until): every answer equals `genllava eval shapes`' answer to the same
  question, and the score equals its understanding accuracy;
- shapes_mc (multiple_choice through loglikelihood): the accuracy equals the one computed from the
  model's own training loss (GenLlava.forward) over every choice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (make dev installs it: "
                    "pip install -e .[eval] && pip install --no-deps lmms-eval==0.7.3)")

from genllava.data.conversation import ASSISTANT, Message, parse_turn, user  # noqa: E402
from genllava.data.templates import I2T  # noqa: E402
from genllava.eval.lmms_shapes_tasks import shapes_docs, write_shapes_tasks  # noqa: E402
from genllava.eval.shapes_eval import run_single_turn, score_answers  # noqa: E402
from genllava.model.modeling import GenLlava  # noqa: E402

SEED, SAMPLES = 3, 6


@pytest.fixture(scope="module")
def answering_model(tiny_config, tmp_path_factory):
    """A tiny model trained a few steps on understanding only, so that it answers in words ([I2T])
    as eval shapes lets it choose; saved as a model folder."""
    from genllava.shapes.tasks import make_records
    from genllava.train.config import TrainConfig
    from genllava.train.examples import SkipReport, prepare
    from genllava.train.trainer import train

    torch.manual_seed(0)
    model = GenLlava.build(deepcopy(tiny_config))
    examples = list(prepare(make_records(320, 5, {"understanding": 1.0}), model.processor, SkipReport()))
    out = tmp_path_factory.mktemp("lmms-train")
    config = TrainConfig(learning_rate=1e-2, weight_decay=0.0, warmup_ratio=0.0, global_batch_size=4,
                         micro_batch_size=4, max_steps=80, seed=0)
    train(model, examples, config, out, log=lambda _: None)
    folder = out / "answering-model"
    model.eval().save_pretrained(folder)
    return folder


def run_lmms(model: Path, tasks: str, include: Path, out: Path, batch_size: int = 4) -> tuple[dict, list[dict]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf"),
           "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lmms_eval", "--model", "genllava",
               "--model_args", f"pretrained={model},device=cpu,dtype=float32", "--tasks", tasks,
               "--include_path", str(include), "--batch_size", str(batch_size), "--output_path", str(out / "results"),
               "--log_samples"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    found = sorted((out / "results").rglob("*_results.json"))
    assert found, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads(found[-1].read_text())
    samples = {}
    for path in (out / "results").rglob("*_samples_*.jsonl"):
        samples[path.name.split("_samples_")[1].removesuffix(".jsonl")] = [
            json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return results, samples


def test_lmms_eval_resolves_genllava_through_the_entry_point():
    import lmms_eval.models as models

    from genllava.eval.lmms_plugin import GenLlavaLmms

    assert "genllava" in models.list_available_models()
    assert models.get_model("genllava") is GenLlavaLmms


def test_local_tasks_match_eval_shapes_and_the_training_loss(answering_model, tmp_path):
    include = tmp_path / "tasks"
    records = write_shapes_tasks(include, seed=SEED, samples=SAMPLES)
    results, samples = run_lmms(answering_model, "shapes_qa,shapes_mc", include, tmp_path)

    # generate_until: the same answers as eval shapes (which lets the model choose its task token).
    model = GenLlava.from_pretrained(answering_model)
    replies = run_single_turn(model, records, batch_size=SAMPLES, seed=SEED)
    print("eval shapes answers:", [r.text for r in replies])
    assert all(r.task == I2T for r in replies)  # the comparison is only fair if it answered in words
    by_doc = {s["doc_id"]: s for s in samples["shapes_qa"]}
    ours = [by_doc[i]["filtered_resps"] for i in range(SAMPLES)]
    ours = [o[0] if isinstance(o, list) else o for o in ours]
    assert ours == [r.text for r in replies]
    assert sum(bool(text) for text in ours) >= SAMPLES // 2, ours  # words to compare, not empty answers
    print("shapes_qa answers:", ours)
    qa = results["results"]["shapes_qa"]
    assert qa["exact_match,none"] == pytest.approx(score_answers(records, replies))

    # loglikelihood: accuracy from the model's own loss over each choice.
    _, docs = shapes_docs(SEED, SAMPLES)
    right = 0
    for record, doc in zip(records, docs):
        question = parse_turn(record["conversations"][0])
        scores = []
        for choice in doc["choices"]:
            encoded = model.processor.encode([user(question.text, has_image=True), Message(ASSISTANT, choice, task=I2T)])
            labels = torch.tensor([encoded.labels])
            # Only the answer's words: not [I2T] (forced) nor </s>.
            marked = (labels != -100).nonzero()[:, 1]
            labels[0, marked[0]] = -100
            labels[0, marked[-1]] = -100
            ids = torch.tensor([encoded.input_ids])
            pixels = model.processor.pixel_values([record["image"]])
            with torch.no_grad():
                loss = model(ids, torch.ones_like(ids), labels, pixel_values=pixels)["lm_loss"]
            scores.append(-float(loss) * int((labels != -100).sum()))
        right += max(range(len(scores)), key=scores.__getitem__) == doc["label"]
    assert results["results"]["shapes_mc"]["acc,none"] == pytest.approx(right / SAMPLES)
    lls = [s["filtered_resps"] for s in sorted(samples["shapes_mc"], key=lambda s: s["doc_id"])]
    assert all(len(ll) == len(doc["choices"]) for ll, doc in zip(lls, docs))


def test_generate_until_honours_until_and_max_new_tokens(answering_model):
    from genllava.eval.lmms_plugin import GenLlavaLmms, cut_at

    assert cut_at("red.\nblue", ["\n", "."]) == "red"
    lm = GenLlavaLmms(pretrained=str(answering_model), device="cpu", batch_size=2)
    prompts = [(lm._prompt("What is 2 plus 3?", False), None), (lm._prompt("Which is larger, 4 or 9?", False), None)]
    free = lm._generate(prompts, {"max_new_tokens": 6, "temperature": 0})
    one = lm._generate(prompts, {"max_new_tokens": 1, "temperature": 0})
    assert all(len(lm.processor.tokenizer(t).input_ids) <= 3 for t in one)  # one token (+ bos) at most
    for text, short in zip(free, one):
        assert text.startswith(short)
    sampled = lm._generate(prompts, {"max_new_tokens": 6, "temperature": 1.0})
    assert sampled == lm._generate(prompts, {"max_new_tokens": 6, "temperature": 1.0})  # seeded
    stop = free[0][1:2] or "x"
    cut = lm._generate(prompts[:1], {"max_new_tokens": 6, "temperature": 0, "until": [stop]})
    assert stop not in cut[0] and free[0].startswith(cut[0])
    with pytest.raises(NotImplementedError, match="single-round"):
        lm.generate_until_multi_round([])


def test_bench_plan_follows_table_1_and_names_judges():
    from genllava.eval.bench import plan

    columns = plan(judge=None)
    assert [c.name for c in columns] == ["MathVista", "MMMU", "MM-Vet", "SEED-Bench", "MMBench", "VQAv2", "GQA"]
    assert [c.paper for c in columns] == [30.5, 37.1, 35.8, 64.5, 66.8, 79.3, 62.9]
    by_name = {c.name: c for c in columns}
    assert by_name["MathVista"].task is None and "needs a judge" in by_name["MathVista"].note
    assert by_name["MM-Vet"].task is None
    assert by_name["MMBench"].task == "mmbench_en_dev_static" and "no judge" in by_name["MMBench"].note
    judged = {c.name: c for c in plan(judge="gpt-4o-2024-08-06")}
    assert judged["MM-Vet"].task == "mmvet" and judged["MM-Vet"].judge == "gpt-4o-2024-08-06"
    assert judged["MMBench"].task == "mmbench_en_dev" and "gpt-4o-2024-08-06" in judged["MMBench"].note
    assert judged["MMMU"].judge is None


def test_bench_scores_two_models_side_by_side(answering_model, saved_tiny_model, tmp_path, capsys, monkeypatch):
    from genllava.cli import main

    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(name, value)

    include = tmp_path / "tasks"
    write_shapes_tasks(include, seed=SEED, samples=4)
    out = tmp_path / "bench"
    assert main(["eval", "bench", "--model", str(answering_model), "--compare", str(saved_tiny_model),
                 "--names", "full", "untrained", "--tasks", "shapes_qa,shapes_mc", "--include-path", str(include),
                 "--out", str(out), "--device", "cpu", "--dtype", "float32", "--batch-size", "4"]) == 0
    payload = json.loads((out / "bench.json").read_text())
    assert list(payload["scores"]) == ["full", "untrained"]
    for column in ("shapes_qa", "shapes_mc"):
        a, b = payload["scores"]["full"][column], payload["scores"]["untrained"][column]
        assert 0 <= a <= 100 and 0 <= b <= 100
        assert payload["difference"]["values"][column] == pytest.approx(a - b)
    table = (out / "bench.md").read_text()
    assert table.startswith("| model | shapes_qa | shapes_mc |") and "| full − untrained |" in table
    assert "bench.md" in capsys.readouterr().out
