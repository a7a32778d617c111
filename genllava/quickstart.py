"""`genllava quickstart`: the whole mission on the embedded shapes world, in minutes on a laptop.

data -> build GenLLaVA from the world's pretrained parts -> single-stage training -> save ->
evaluate on a fresh seed -> report.json, report.md and image grids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import presets
from .eval.grids import save_grid
from .eval.shapes_eval import evaluate_shapes
from .model.modeling import GenLlava
from .shapes.tasks import MIXES, make_records
from .train.examples import SkipReport, prepare
from .train.trainer import train

EVAL_SEED = 20261126  # never used for training data


def flat_metrics(results: dict) -> dict[str, float]:
    """The DESIGN §4 keys: understanding.accuracy, generation.accuracy_heldout, ..."""
    return {f"{task}.{key}": value for task, values in results.items() for key, value in values.items()
            if key.startswith("accuracy")}


def write_grids(examples: dict, out: Path) -> list[str]:
    paths = []
    for name in ("generation", "generation_heldout"):
        records, replies = examples[name]
        rows = [(f'{r["conversations"][0]["value"]} -> {rep.text}', [rep.image, r["target_image"][0]])
                for r, rep in zip(records[:12], replies)]
        paths.append(save_grid(rows, out / f"{name}.png", ["generated", "truth"]))
    records, replies = examples["editing"]
    rows = [(f'{r["conversations"][0]["value"].split(chr(10))[-1]} -> {rep.text}', [r["image"], rep.image, r["target_image"][0]])
            for r, rep in zip(records[:12], replies)]
    paths.append(save_grid(rows, out / "editing.png", ["input", "edited", "truth"]))
    records, transcripts = examples["multiturn"]
    rows = [(" / ".join(t["value"] for t in r["conversations"][0::2][:2]) + f" -> {turns[2].text}",
             [turns[0].image, turns[1].image]) for r, turns in zip(records[:8], transcripts)]
    paths.append(save_grid(rows, out / "multiturn.png", ["turn 1", "turn 2"]))
    return [str(p) for p in paths]


def write_markdown(report: dict, out: Path) -> None:
    m = report["metrics"]
    lines = [f"# genllava quickstart ({report['mix']} mix)", "",
             f"Wall time: {report['wall_seconds']:.0f} s; training: {report['train']['max_steps']} steps of "
             f"{report['train']['global_batch_size']} samples; evaluation seed {report['eval_seed']}, "
             f"{report['eval_samples']} samples per task.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in m.items()]
    for key, title in (("by_question_kind", "kind of question"), ("by_shape_count", "number of shapes in the image")):
        scores = report.get("understanding", {}).get(key, {})
        if scores:
            lines += ["", f"Understanding by {title}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()) + "."]
    ceiling = report.get("decoder_ceiling")
    if ceiling is not None:
        lines += ["", f"The frozen decoder alone, prompted with its own text encoder, draws {ceiling:.3f} of all "
                      "one-shape captions correctly: the ceiling for generation accuracy."]
    lines += ["", f"Skipped training records: {report['skipped']['total']} {report['skipped']['by_reason']}", "",
              "Image grids:", *[f"- ![{Path(p).stem}]({Path(p).name})" for p in report["grids"]]]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def quickstart(out: str | Path, *, mix: str = "full", steps: int | None = None, eval_samples: int = 50,
               seed: int = 0, log: Callable[[str], None] = print) -> dict:
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; choose one of {sorted(MIXES)}")
    model_config, train_config = presets.shapes()
    if steps is not None:
        train_config.max_steps = steps
    train_config.seed = seed
    log(f"[1/5] building GenLLaVA from the shapes world's pretrained parts in {presets.SHAPES_PRETRAINED}")
    model = GenLlava.build(model_config)
    count = train_config.max_steps * train_config.global_batch_size
    log(f"[2/5] generating {count} training records ({mix} mix, seed {seed})")
    records = make_records(count, seed, MIXES[mix])
    skipped = SkipReport()
    examples = list(tqdm(prepare(records, model.processor, skipped), total=count, desc="encode records"))
    log(f"[3/5] training {train_config.max_steps} steps")
    history = train(model, examples, train_config, out, log=log)  # also writes out/model
    log(f"      saved the model to {out / 'model'}")
    log(f"[4/5] evaluating on a fresh seed ({EVAL_SEED}), {eval_samples} samples per task")
    results, shown = evaluate_shapes(model, EVAL_SEED, eval_samples, log=log)
    log("[5/5] writing the report and image grids")
    ceiling_file = Path(model_config.decoder) / "pretrain_report.json"
    report = {
        "mix": mix, "metrics": flat_metrics(results), **results,
        "wall_seconds": time.time() - start, "eval_seed": EVAL_SEED, "eval_samples": eval_samples,
        "train": train_config.to_dict(), "model": model_config.to_dict(),
        "final_losses": history[-1] if history else {},
        "skipped": {"total": skipped.total, "by_reason": dict(skipped.counts)},
        "decoder_ceiling": json.loads(ceiling_file.read_text()).get("accuracy_own_text_encoder") if ceiling_file.exists() else None,
        "grids": write_grids(shown, out),
    }
    report["wall_seconds"] = time.time() - start
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out)
    for key, value in report["metrics"].items():
        log(f"      {key:32s} {value:.3f}")
    log(f"done in {report['wall_seconds']:.0f} s: {out / 'report.md'}")
    return report
