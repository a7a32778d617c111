"""The shapes world written as the folders `eval generation` and `eval editing` read: a captions
file with reference renders, and a two-turn MagicBrush-style editing set. Small, seeded, offline:
for trying the commands and for the tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..shapes.tasks import make_eval_records, random_edit
from ..shapes.world import Scene, random_shape, render


def write_generation_set(folder: str | Path, samples: int = 8, seed: int = 1) -> tuple[Path, Path]:
    """(captions.jsonl, references/) for `genllava eval generation`."""
    folder = Path(folder)
    (folder / "references").mkdir(parents=True, exist_ok=True)
    lines = []
    for n, record in enumerate(make_eval_records("generation", samples, seed)):
        item = {"id": f"{n:05d}", "caption": record["target_caption"][0]}
        record["target_image"][0].save(folder / "references" / f"{item['id']}.png")
        lines.append(json.dumps(item))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "captions.jsonl", folder / "references"


def write_editing_set(folder: str | Path, sessions: int = 4, turns: int = 2, seed: int = 1) -> Path:
    """A folder with edits.jsonl and images/: `sessions` one-shape scenes edited `turns` times."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for s in range(sessions):
        shape = random_shape(rng, allow_heldout=False)
        render(Scene((shape,))).save(folder / "images" / f"s{s}-0.png")
        for turn in range(1, turns + 1):
            instruction, shape = random_edit(shape, rng, pronoun=turn > 1)
            scene = Scene((shape,))
            render(scene).save(folder / "images" / f"s{s}-{turn}.png")
            lines.append(json.dumps({"session": f"s{s}", "turn": turn, "source": f"images/s{s}-{turn - 1}.png",
                                     "instruction": instruction, "target": f"images/s{s}-{turn}.png",
                                     "target_caption": scene.caption()}))
    (folder / "edits.jsonl").write_text("\n".join(lines) + "\n")
    return folder
