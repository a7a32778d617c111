"""`genllava eval bench`: the paper's understanding suite through lmms-eval, laid out as its Table 1.

Columns in the paper's order, each an lmms-eval task and the metric read from its results, with the
paper's GenLLaVA-7B figure beside ours; then the ablations' VQAv2 and GQA. Judged tasks name their
judge in the output: MM-Vet and MathVista need one (an LLM grades or extracts every answer) and are
skipped without; MMBench uses a judge only as a fallback when its rules cannot read the choice, so
without one it runs as `mmbench_en_dev_static` (rules only) and says so. lmms-eval's tasks read the
judge's name from MODEL_VERSION and the key from OPENAI_API_KEY.

With --compare, a second model runs through the same tasks and the table adds the difference per
benchmark: the paper's question of what generation and editing cost understanding (full mix vs
`--mix understanding-only`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Benchmark:
    column: str
    task: str
    metric: str
    paper: float | None  # GenLLaVA-7B in the paper
    judge: str = "none"  # "none" | "required" | "fallback"
    task_without_judge: str | None = None  # for "fallback": the rules-only variant
    table: str = "Table 1"


BENCHMARKS = (
    Benchmark("MathVista", "mathvista_testmini_format", "llm_as_judge_eval", 30.5, judge="required"),
    Benchmark("MMMU", "mmmu_val", "mmmu_acc", 37.1),
    Benchmark("MM-Vet", "mmvet", "gpt_eval_score", 35.8, judge="required"),
    Benchmark("SEED-Bench", "seedbench", "seed_image", 64.5),
    Benchmark("MMBench", "mmbench_en_dev", "gpt_eval_score", 66.8, judge="fallback",
              task_without_judge="mmbench_en_dev_static"),
    Benchmark("VQAv2", "vqav2_val", "exact_match", 79.3, table="ablations"),
    Benchmark("GQA", "gqa", "exact_match", 62.9, table="ablations"),
)


@dataclass
class Column:
    name: str
    task: str | None  # None: skipped
    metric: str | None
    paper: float | None
    judge: str | None  # the judge model that grades it, if any
    note: str = ""


def plan(judge: str | None = None, tasks: str | None = None) -> list[Column]:
    """The columns to run: the paper's (judged ones as the judge allows) or the given tasks."""
    if tasks:
        return [Column(t.strip(), t.strip(), None, None, None, "custom task") for t in tasks.split(",") if t.strip()]
    columns = []
    for b in BENCHMARKS:
        where = "" if b.table == "Table 1" else "paper's ablations; "
        if b.judge == "none":
            columns.append(Column(b.column, b.task, b.metric, b.paper, None, where + "rule-based scoring, no judge"))
        elif judge:
            role = "grades every answer" if b.judge == "required" else "reads the choice where the rules cannot"
            columns.append(Column(b.column, b.task, b.metric, b.paper, judge, where + f"judge {judge} {role}"))
        elif b.judge == "fallback":
            columns.append(Column(b.column, b.task_without_judge, b.metric, b.paper, None,
                                  where + f"no judge: {b.task_without_judge}, choices read by rules only "
                                          "(the paper's figure used a GPT fallback)"))
        else:
            columns.append(Column(b.column, None, None, b.paper, None,
                                  where + "skipped: needs a judge model (--judge, with OPENAI_API_KEY set)"))
    return columns


def as_percent(value: float) -> float:
    """lmms-eval reports some scores as fractions and some in percent; the table is in percent."""
    return value * 100 if abs(value) <= 1.0 else value


def read_score(results: dict, column: Column) -> float | None:
    task = results.get("results", {}).get(column.task)
    if task is None:
        return None
    if column.metric and f"{column.metric},none" in task:
        value = task[f"{column.metric},none"]
    else:  # a custom task: its first numeric metric
        found = [v for k, v in task.items() if k.endswith(",none") and "stderr" not in k and isinstance(v, (int, float))]
        if not found:
            return None
        value = found[0]
    return round(as_percent(float(value)), 2) if isinstance(value, (int, float)) else None


def run_lmms(model: str | Path, tasks: list[str], out: Path, include_path=None, limit=None, batch_size: int = 8,
             device: str = "auto", dtype: str = "bfloat16", judge: str | None = None) -> dict:
    """One lmms-eval run (its CLI, in a child process); returns its results JSON."""
    import torch

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    command = [sys.executable, "-m", "lmms_eval", "--model", "genllava",
               "--model_args", f"pretrained={Path(model).resolve()},dtype={dtype}", "--device", device,
               "--tasks", ",".join(tasks), "--batch_size", str(batch_size), "--output_path", str(out),
               "--log_samples"]
    if include_path:
        command += ["--include_path", str(include_path)]
    if limit:
        command += ["--limit", str(limit)]
    env = dict(os.environ)
    if judge:
        env["MODEL_VERSION"] = judge
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    found = sorted(out.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    if done.returncode != 0 or not found:  # lmms-eval logs its errors and may still exit 0
        tail = [line for line in (done.stderr or done.stdout).splitlines() if "Error" in line][-1:] or ["no results"]
        raise RuntimeError(f"lmms-eval failed on {model}: {tail[0].strip()[:300]} (full log: rerun `{' '.join(command)}`)")
    return json.loads(found[-1].read_text())


def markdown(columns: list[Column], scores: dict[str, dict[str, float | None]], difference: dict | None) -> str:
    def cell(value):
        return "–" if value is None else f"{value:.1f}"

    head = "| model | " + " | ".join(c.name for c in columns) + " |"
    rows = [head, "|---" * (len(columns) + 1) + "|"]
    for name, row in scores.items():
        rows.append(f"| {name} | " + " | ".join(cell(row.get(c.name)) for c in columns) + " |")
    if difference is not None:
        rows.append(f"| {difference['label']} | " + " | ".join(
            "–" if difference["values"].get(c.name) is None else f"{difference['values'][c.name]:+.1f}"
            for c in columns) + " |")
    if any(c.paper is not None for c in columns):
        rows.append("| GenLLaVA-7B (paper) | " + " | ".join(cell(c.paper) for c in columns) + " |")
    notes = [f"- {c.name}: " + (f"`{c.task}`, {c.metric or 'first metric'}; " if c.task else "") + c.note
             for c in columns]
    return "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def run_bench(model: str | Path, out: str | Path, compare: str | Path | None = None, tasks: str | None = None,
              include_path=None, judge: str | None = None, limit: int | None = None, batch_size: int = 8,
              device: str = "auto", dtype: str = "bfloat16", names: list[str] | None = None) -> dict:
    out = Path(out)
    columns = plan(judge, tasks)
    runnable = [c.task for c in columns if c.task]
    if not runnable:
        raise ValueError("no task to run")
    models = [Path(model)] + ([Path(compare)] if compare else [])
    labels = names or [m.name if m.name != "model" else m.parent.name for m in models]
    if len(set(labels)) < len(labels):
        labels = [f"{label} ({n + 1})" for n, label in enumerate(labels)]
    scores = {}
    for label, folder in zip(labels, models):
        results = run_lmms(folder, runnable, out / "lmms" / label.replace("/", "_").replace(" ", "_"), include_path,
                           limit, batch_size, device, dtype, judge)
        scores[label] = {c.name: read_score(results, c) if c.task else None for c in columns}
    difference = None
    if compare:
        a, b = scores[labels[0]], scores[labels[1]]
        difference = {"label": f"{labels[0]} − {labels[1]}",
                      "values": {c.name: None if a[c.name] is None or b[c.name] is None else round(a[c.name] - b[c.name], 2)
                                 for c in columns}}
    table = markdown(columns, scores, difference)
    payload = {"columns": [asdict(c) for c in columns], "scores": scores, "difference": difference,
               "judge": judge, "limit": limit, "markdown": table}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "bench.md").write_text(table)
    return payload
