"""The single-stage GenLLaVA training loop, on accelerate (one CPU to many GPUs, one script).

Trains projector + LLM (or its LoRA adapter) + generation head with  LM loss + lambda * diffusion
loss; the vision tower and the image decoder stay frozen. Runs under whatever engine `accelerate
launch` was given (single process, DDP, DeepSpeed ZeRO-2/3, FSDP2): gradient accumulation goes
through `accelerator.accumulate`, the LR schedule counts optimizer steps, and checkpoints hold the
engine's own (sharded) state plus a consolidated model folder, so a run resumes exactly.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import DistributedType, gather_object
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..model.modeling import GenLlava
from .batches import BatchPlan, InMemoryExamples, loader
from .checkpoints import STATE_NAME, load_trainer_state, resolve_resume, save_checkpoint, save_model
from .config import TrainConfig
from .engine import engine_name, make_accelerator
from .examples import Collator, Example

__all__ = ["train", "parameter_groups", "STATE_NAME"]
LOSSES = ("loss", "lm_loss", "diffusion_loss", "align_loss")


def parameter_groups(model: GenLlava, config: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms and other 1-D parameters; the modules that
    start from scratch (projector, generation head) may take their own learning rate, and the
    projector one of its own. Frozen parameters never enter the optimizer."""
    groups = []
    for name, params in model.trainable_parameters().items():
        params = [p for p in params if p.requires_grad]
        lr = config.learning_rate
        if name != "language_model" and config.new_modules_learning_rate is not None:
            lr = config.new_modules_learning_rate
        if name == "projector" and config.projector_learning_rate is not None:
            lr = config.projector_learning_rate
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay, "lr": lr, "name": name},
                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr, "name": name}]
    return [g for g in groups if g["params"]]


def describe_trainable(model: GenLlava) -> list[str]:
    def millions(params) -> str:
        return f"{sum(p.numel() for p in params if p.requires_grad) / 1e6:.2f}M"

    lines = [f"trains  {name}: {millions(ps)} parameters" for name, ps in model.trainable_parameters().items()]
    lines += [f"frozen  vision tower: {sum(p.numel() for p in model.vision.parameters()) / 1e6:.2f}M parameters",
              f"frozen  image decoder: {sum(p.numel() for p in model.decoder.parameters()) / 1e6:.2f}M parameters"]
    return lines


def noise_seed(seed: int, step: int, micro_index: int) -> int:
    """The diffusion noise of micro-batch j of step s: the same whichever process draws it."""
    return seed * 1_000_003 + step + micro_index * 7_919_000_033


def train(model: GenLlava, examples, config: TrainConfig, out: str | Path, *,
          resume: str | Path | None = None, log: Callable[[str], None] = print,
          stop_after: int | None = None, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Runs config.max_steps optimizer steps (or up to step `stop_after`); returns the per-step
    history (losses averaged over the global batch, and the learning rate used).

    `examples`: a list of Examples or a random-access source (batches.MixtureExamples). Checkpoints
    go to OUT/checkpoints/step-N every `config.checkpoint_every` steps and at the end; the final
    model folder to OUT/model. `resume`: a checkpoint folder or "latest"; pass a model built the
    same way (weights, optimizer, scheduler and RNG come from the checkpoint). `on_step` receives
    each step's timings (data wait, forward-backward, optimizer), for benchmarks.
    """
    source = InMemoryExamples(examples) if isinstance(examples, list) else examples
    accelerator = make_accelerator(config)
    torch.manual_seed(config.seed)
    processes = accelerator.num_processes
    accumulation = accelerator.gradient_accumulation_steps
    main = accelerator.is_main_process
    say = log if main else (lambda line: None)
    for line in describe_trainable(model):
        say(line)
    say(f"engine: {engine_name(accelerator)}; processes: {processes}; batch: {config.micro_batch_size} per device x "
        f"{accumulation} accumulation x {processes} devices = global batch {config.global_batch_size}; "
        f"precision: {accelerator.mixed_precision if accelerator.distributed_type != DistributedType.DEEPSPEED else 'deepspeed config'}; "
        f"gradient checkpointing: {'on' if config.gradient_checkpointing else 'off'}; "
        f"loader workers: {config.dataloader_workers}; examples: {len(source)}")
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    with model.frozen_parts_apart(accelerator.device):
        return _train_loop(accelerator, model, source, config, out, resume, say, stop_after, on_step)


def _train_loop(accelerator, model, source, config, out, resume, say, stop_after, on_step) -> list[dict]:
    main, processes = accelerator.is_main_process, accelerator.num_processes
    accumulation = accelerator.gradient_accumulation_steps
    collate = Collator(model.processor, model.decoder.preprocess)
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate)
    # Stepped by this loop once per optimizer step (not handed to the engine), and checkpointed with it.
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * config.max_steps),
                                                config.max_steps)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    start, history, skipped = 0, [], Counter()
    if resume is not None:
        folder = resolve_resume(resume, out)
        accelerator.load_state(str(folder / "state"))
        state = load_trainer_state(folder)
        start, history, skipped = int(state["step"]), state["history"], Counter(state["skipped"])
        say(f"resumed from {folder} at step {start}")
    plan = BatchPlan(source, config.global_batch_size, config.micro_batch_size, processes, config.seed,
                     config.group_by_modality_length)
    end = min(config.max_steps, stop_after or config.max_steps)
    batches = iter(loader(plan, collate, accelerator.process_index, start, end, config.dataloader_workers))
    progress = tqdm(total=config.max_steps, initial=start, desc="train genllava", unit="step", disable=not main,
                    dynamic_ncols=True)
    for step in range(start, end):
        sums, counts, timing = torch.zeros(len(LOSSES)), torch.zeros(len(LOSSES)), Counter()
        step_start = time.perf_counter()
        for _ in range(accumulation):
            tick = time.perf_counter()
            batch = next(batches)
            timing["data_wait"] += time.perf_counter() - tick
            # For benchmarks (on_step): non-pad tokens, input images and target images of the micro-batch.
            timing.update(tokens=int(batch["attention_mask"].sum()),
                          **{k: len(batch[k]) for k in ("pixel_values", "target_pixels") if batch.get(k) is not None})
            skipped.update(reason for reason, _ in batch.pop("skipped"))
            generator = torch.Generator(accelerator.device).manual_seed(
                noise_seed(config.seed, step, batch.pop("micro_index")))
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            tick = time.perf_counter()
            with accelerator.accumulate(prepared):
                with accelerator.autocast():
                    losses = prepared(**batch, generator=generator)
                accelerator.backward(losses["loss"])
                timing["forward_backward"] += time.perf_counter() - tick
                tick = time.perf_counter()
                if accelerator.sync_gradients and accelerator.distributed_type != DistributedType.DEEPSPEED:
                    accelerator.clip_grad_norm_(prepared.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                timing["optimizer"] += time.perf_counter() - tick
            for i, name in enumerate(LOSSES):
                if name in losses:
                    sums[i] += losses[name].detach().float().cpu()
                    counts[i] += 1
        # The language model's rate, as the engine's optimizer used it for this step's update.
        lr = next(g["lr"] for g in optimizer.param_groups if g.get("name") == "language_model")
        scheduler.step()
        sums, counts = accelerator.reduce(torch.stack([sums, counts]).to(accelerator.device), "sum").cpu()
        totals = {name: float(sums[i] / counts[i]) for i, name in enumerate(LOSSES) if counts[i] > 0}
        history.append({"step": step + 1, **totals, "lr": lr})
        seconds = time.perf_counter() - step_start
        progress.update(1)
        progress.set_postfix({**{k: f"{v:.3f}" for k, v in totals.items()},
                              "samples/s": f"{config.global_batch_size / seconds:.1f}"})
        if on_step is not None:
            on_step({"step": step + 1, "seconds": seconds, **timing})
        done = step + 1
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == end:
            merged = Counter()
            for counts_of_rank in gather_object([dict(skipped)]):
                merged.update(counts_of_rank)
            folder = save_checkpoint(accelerator, prepared, done, history, dict(merged), out, config.keep_checkpoints)
            say(f"checkpoint {folder}")
    progress.close()
    if end == config.max_steps and start < end:
        save_model(accelerator, prepared, Path(out) / "model")
        say(f"saved {Path(out) / 'model'}")
    accelerator.wait_for_everyone()
    return history
