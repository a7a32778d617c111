"""Checkpoints that survive sharding and kills.

    OUT/checkpoints/step-N/
        state/               the engine's own state (accelerator.save_state): model, optimizer and
                             RNG, sharded as DeepSpeed or FSDP keep them, plus the LR scheduler
        model/               a consolidated model folder (GenLlava.from_pretrained on one process)
        trainer_state.json   the step, the loss history and the skipped-record counts

Every process writes into step-N.partial; once all have finished, the main process renames it, so a
folder named step-N is always complete and a kill leaves only a .partial behind. The newest
`keep` complete checkpoints are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

STATE_NAME = "trainer_state.json"
PARTIAL = ".partial"
_STEP = re.compile(r"^step-(\d+)$")


def complete_checkpoints(out: str | Path) -> list[Path]:
    """OUT/checkpoints/step-N folders that finished writing, oldest first."""
    folder = Path(out) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step-*") if (m := _STEP.match(p.name)) and
             (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | Path, out: str | Path) -> Path:
    """`latest` -> the newest complete checkpoint under OUT; otherwise the folder given, checked."""
    if str(resume) == "latest":
        found = complete_checkpoints(out)
        if not found:
            raise FileNotFoundError(f"--resume latest: no complete checkpoint under {Path(out) / 'checkpoints'}")
        return found[-1]
    folder = Path(resume)
    if not (folder / STATE_NAME).is_file() or not (folder / "state").is_dir():
        raise FileNotFoundError(f"{folder} is not a complete genllava checkpoint (no {STATE_NAME} or state/)")
    return folder


def save_checkpoint(accelerator, model, step: int, history: list[dict], skipped: dict, out: str | Path,
                    keep: int = 0) -> Path:
    """Collective: every process must call it. Returns the checkpoint folder."""
    folder = Path(out) / "checkpoints" / f"step-{step}"
    partial = folder.with_name(folder.name + PARTIAL)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a killed save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial / "state"))
    save_model(accelerator, model, partial / "model")
    if accelerator.is_main_process:
        (partial / STATE_NAME).write_text(json.dumps({"step": step, "history": history, "skipped": skipped}) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
        if keep:
            for old in complete_checkpoints(out)[:-keep]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return folder


def save_model(accelerator, model, folder: str | Path) -> None:
    """Collective: the consolidated model folder, gathered from the shards under ZeRO-3/FSDP and
    written (atomically, by GenLlava.save_pretrained) by the main process alone."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(Path(folder), state_dict=state_dict)
    accelerator.wait_for_everyone()


def load_trainer_state(folder: Path) -> dict:
    return json.loads((Path(folder) / STATE_NAME).read_text())
