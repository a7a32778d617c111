"""The training engine: one `Accelerator`, set up from `accelerate launch`'s config and the TrainConfig.

`accelerate launch --config_file configs/accelerate/<engine>.yaml` picks single-process, DDP,
DeepSpeed ZeRO-2/3 or FSDP2; this module fills in what those configs leave to the script (micro-batch,
accumulation, clipping) so that global batch = micro x accumulation x processes exactly, and names
the engine for the run's first lines.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

from .config import TrainConfig


def mixed_precision(setting: str) -> str:
    """"auto": bf16 where the device supports it, else full precision."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _launched_on_cpu() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _cpu_process_group() -> list:
    """accelerate enables DeepSpeed and FSDP only on accelerators; on CPU (where the test suite runs
    them, 2 processes on gloo) it needs the gloo backend named, and FSDP needs the GPU label that its
    state machine checks for (the device stays the CPU)."""
    if not _launched_on_cpu():
        return []
    state = PartialState(backend="gloo")
    if state.distributed_type == DistributedType.NO:
        fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        state.distributed_type = DistributedType.MULTI_GPU if fsdp else DistributedType.MULTI_CPU
    return [InitProcessGroupKwargs(backend="gloo")]


def accumulation_steps(config: TrainConfig, processes: int) -> int:
    per_pass = config.micro_batch_size * processes
    if config.global_batch_size % per_pass:
        raise ValueError(f"global batch {config.global_batch_size} is not a multiple of micro-batch "
                         f"{config.micro_batch_size} x {processes} processes; change --global-batch or --micro-batch")
    return config.global_batch_size // per_pass


def make_accelerator(config: TrainConfig) -> Accelerator:
    handlers = _cpu_process_group()
    processes = PartialState().num_processes
    accumulation = accumulation_steps(config, processes)
    accelerator = Accelerator(
        mixed_precision=mixed_precision(config.mixed_precision), gradient_accumulation_steps=accumulation,
        # Every trainable module takes part in every forward (GenLlava.forward), so DDP needs no search.
        kwargs_handlers=[*handlers, DistributedDataParallelKwargs(find_unused_parameters=False)],
        step_scheduler_with_optimizer=False)
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:
        # What the launch config leaves as "auto", from the recipe (accelerate reads it from a prepared
        # DataLoader otherwise; ours is sharded by the trainer itself).
        ds = deepspeed.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
        ds["gradient_accumulation_steps"] = accumulation
        ds["train_batch_size"] = config.global_batch_size
        ds["gradient_clipping"] = config.max_grad_norm
    return accelerator


def engine_name(accelerator: Accelerator) -> str:
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return f"fsdp{getattr(accelerator.state.fsdp_plugin, 'fsdp_version', 1)}"
    if kind in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        return "ddp"
    return "single-process"
