"""`genllava eval editing`: MagicBrush/EVR-style instruction editing, scored by DINO, CLIP-I, CLIP-T
and L1 against the target images, per turn and on the final turn of multi-turn sessions.

The data folder holds `edits.jsonl`, one line per edit:
    {"session": "s1", "turn": 1, "source": "images/s1-0.png", "instruction": "Make the circle red.",
     "target": "images/s1-1.png", "target_caption": "a red circle ..."}   (target_caption optional)
Paths are relative to the folder. As in MagicBrush's multi-turn protocol, turn 1 edits `source` and
each later turn edits the model's own output of the turn before (its `source` is not read).
Outputs go to OUT/images/SESSION_turnT.png as they are made and are skipped when present.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .resumable import load_rgb, safe_name, save_atomically


def read_edits(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    path = folder / "edits.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no edits.jsonl in {str(folder)!r} (see docs/evaluation.md for the layout)")
    edits = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for n, edit in enumerate(edits):
        for key in ("session", "instruction", "target"):
            if key not in edit:
                raise ValueError(f"{path}: line {n + 1} lacks {key!r}")
        edit["session"], edit["turn"] = safe_name(edit["session"]), int(edit.get("turn", 1))
        if edit["turn"] == 1 and "source" not in edit:
            raise ValueError(f"{path}: line {n + 1} is a first turn without 'source'")
    turns = {}
    for edit in edits:
        turns.setdefault(edit["session"], []).append(edit["turn"])
    for session, numbers in turns.items():
        if sorted(numbers) != list(range(1, len(numbers) + 1)):
            raise ValueError(f"{path}: session {session!r} has turns {sorted(numbers)}, not 1..{len(numbers)}")
    return sorted(edits, key=lambda e: (e["turn"], e["session"]))


def output_path(out: Path, edit: dict) -> Path:
    return out / "images" / f"{edit['session']}_turn{edit['turn']}.png"


def run_edits(model, folder: Path, edits: list[dict], out: Path, batch_size: int = 8, seed: int = 0,
              strength: float = 1.0, log: Callable[[str], None] = print) -> dict:
    from ..data.conversation import user
    from ..data.templates import T2I, editing_prompt

    started, drawn, skipped = time.time(), 0, 0
    for turn in sorted({e["turn"] for e in edits}):
        todo = [(n, e) for n, e in enumerate(edits) if e["turn"] == turn and not output_path(out, e).is_file()]
        skipped += sum(e["turn"] == turn for e in edits) - len(todo)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            inputs = [load_rgb(folder / e["source"]) if turn == 1 else
                      load_rgb(output_path(out, {**e, "turn": turn - 1})) for _, e in batch]
            conversations = [[user(editing_prompt(e["instruction"]), has_image=True)] for _, e in batch]
            replies = model.generate(conversations, inputs, task=T2I, seed=[seed + n for n, _ in batch],
                                     strength=strength)
            for (_, edit), reply in zip(batch, replies):
                save_atomically(reply.image, output_path(out, edit))
                drawn += 1
            log(f"turn {turn}: edited {min(start + batch_size, len(todo))}/{len(todo)}")
    return {"drawn": drawn, "skipped": skipped, "seconds": round(time.time() - started, 2)}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def score_edits(folder: Path, edits: list[dict], out: Path, dino=None, clip=None) -> dict:
    from .dino import l1_distance

    outputs = [load_rgb(output_path(out, e)) for e in edits]
    targets = [load_rgb(folder / e["target"]) for e in edits]
    per_edit = [{"session": e["session"], "turn": e["turn"], "l1": l1_distance(o, t)}
                for e, o, t in zip(edits, outputs, targets)]
    if dino is not None:
        for row, value in zip(per_edit, dino.similarity(outputs, targets)):
            row["dino"] = value
    if clip is not None:
        for row, value in zip(per_edit, clip.clip_i(outputs, targets)):
            row["clip_i"] = value
        captioned = [n for n, e in enumerate(edits) if e.get("target_caption")]
        if captioned:
            values = clip.clip_t([outputs[n] for n in captioned], [edits[n]["target_caption"] for n in captioned])
            for n, value in zip(captioned, values):
                per_edit[n]["clip_t"] = value
    names = [k for k in ("dino", "clip_i", "clip_t", "l1") if any(k in row for row in per_edit)]
    last = {}
    for row in per_edit:
        if row["turn"] >= last.get(row["session"], {"turn": 0})["turn"]:
            last[row["session"]] = row

    def summary(rows):
        return {k: _mean([r[k] for r in rows if k in r]) for k in names if any(k in r for r in rows)} | {"edits": len(rows)}

    return {"all_turns": summary(per_edit), "final_turn": summary(list(last.values())),
            "per_turn": {str(t): summary([r for r in per_edit if r["turn"] == t])
                         for t in sorted({r["turn"] for r in per_edit})},
            "per_edit": per_edit}


def evaluate_editing(model, data: str | Path, out: str | Path, *, dino=None, clip=None, batch_size: int = 8,
                     seed: int = 0, strength: float = 1.0, limit: int | None = None,
                     log: Callable[[str], None] = print) -> dict:
    folder, out = Path(data), Path(out)
    edits = read_edits(folder)
    if limit is not None:
        keep = sorted({e["session"] for e in edits})[:limit]
        edits = [e for e in edits if e["session"] in keep]
    for e in edits:
        for key in ("source",) * (e["turn"] == 1) + ("target",):
            if not (folder / e[key]).is_file():
                raise FileNotFoundError(f"session {e['session']!r} turn {e['turn']}: no {key} image {e[key]!r}")
    run = run_edits(model, folder, edits, out, batch_size, seed, strength, log)
    metrics = score_edits(folder, edits, out, dino, clip)
    payload = {"metrics": {k: v for k, v in metrics.items() if k != "per_edit"}, "run": run, "data": str(data),
               "seed": seed, "strength": strength, "per_edit": metrics["per_edit"]}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload
