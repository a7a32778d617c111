"""The single-stage GenLLaVA training loop, on accelerate (one CPU to many GPUs, one script).

Trains projector + LLM + generation head with  LM loss + lambda * diffusion loss;  the vision
tower and the image decoder stay frozen. Checkpoints hold the model folder (safetensors), the
optimizer and scheduler, the RNG and the data position, and resume exactly where they stopped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..data.collate import Collator, Example
from ..model.modeling import GenLlava
from .config import TrainConfig
from .sampling import InMemoryExamples, StreamedExamples

STATE_NAME = "trainer_state.pt"


def mixed_precision(setting: str) -> str:
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def parameter_groups(model: GenLlava, config: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and other 1-D parameters; the modules that
    start from scratch (projector, generation head) may take their own learning rate, and the
    projector one of its own."""
    groups = []
    for name, params in model.trainable_parameters().items():
        params = [p for p in params if p.requires_grad]
        lr = config.learning_rate
        if name != "language_model" and config.new_modules_learning_rate is not None:
            lr = config.new_modules_learning_rate
        if name == "projector" and config.projector_learning_rate is not None:
            lr = config.projector_learning_rate
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay, "lr": lr},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr}]
    return [g for g in groups if g["params"]]


def describe_trainable(model: GenLlava) -> list[str]:
    lines = [f"trains  {name}: {sum(p.numel() for p in ps) / 1e6:.2f}M parameters"
             for name, ps in model.trainable_parameters().items()]
    lines += [f"frozen  vision tower: {sum(p.numel() for p in model.vision.parameters()) / 1e6:.2f}M parameters",
              f"frozen  image decoder: {sum(p.numel() for p in model.decoder.parameters()) / 1e6:.2f}M parameters"]
    return lines


def train(model: GenLlava, examples: list[Example] | StreamedExamples, config: TrainConfig, out: str | Path, *,
          resume: str | Path | None = None, log: Callable[[str], None] = print,
          stop_after: int | None = None) -> list[dict]:
    """Runs config.max_steps optimizer steps (or until `stop_after`, for tests of resuming);
    returns the per-step loss history. Checkpoints go to out/checkpoints/step-N; to resume, load
    the model from CHECKPOINT/model and pass resume=CHECKPOINT."""
    source = examples if isinstance(examples, StreamedExamples) else InMemoryExamples(examples, config.seed)
    accelerator = Accelerator(mixed_precision=mixed_precision(config.mixed_precision))
    torch.manual_seed(config.seed)
    micro = config.micro_batch_size
    accumulation = max(1, config.global_batch_size // (micro * accelerator.num_processes))
    for line in describe_trainable(model):
        log(line)
    log(f"batch: {micro} per device x {accumulation} accumulation x {accelerator.num_processes} devices; "
        f"precision: {accelerator.mixed_precision}")
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * config.max_steps),
                                                config.max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    inner = accelerator.unwrap_model(model)
    collate = Collator(inner.processor, inner.decoder.preprocess)
    start, history = 0, []
    if resume is not None:
        state = torch.load(Path(resume) / STATE_NAME, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, history = int(state["step"]), json.loads(state["history"])
        log(f"resumed from {resume} at step {start}")
    per_step = micro * accumulation * accelerator.num_processes
    end = min(config.max_steps, stop_after or config.max_steps)
    progress = tqdm(range(start, end), desc="train genllava", initial=0, disable=not accelerator.is_main_process)
    for step in progress:
        generator = torch.Generator(accelerator.device).manual_seed(config.seed * 1_000_003 + step)
        totals: dict[str, float] = {}
        for m in range(accumulation):
            first = step * per_step + (m * accelerator.num_processes + accelerator.process_index) * micro
            batch = collate(source.take(first, micro))
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with accelerator.autocast():
                losses = model(**batch, generator=generator)
            accelerator.backward(losses["loss"] / accumulation)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + value.item() / accumulation
        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        history.append({"step": step + 1, **totals, "lr": scheduler.get_last_lr()[0]})
        progress.set_postfix({k: f"{v:.3f}" for k, v in totals.items()})
        done = step + 1
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == end:
            save_checkpoint(accelerator, inner, optimizer, scheduler, done, history, Path(out) / "checkpoints" / f"step-{done}")
    return history


def save_checkpoint(accelerator, model, optimizer, scheduler, step, history, folder: Path) -> None:
    """Written to a temporary folder and renamed, so a killed save never leaves half a checkpoint."""
    if not accelerator.is_main_process:
        return
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial / "model")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                "step": step, "history": json.dumps(history)}, partial / STATE_NAME)
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    partial.rename(folder)
