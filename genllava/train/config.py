"""TrainConfig: the optimisation recipe, dumped with every run."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainConfig:
    learning_rate: float = 2e-5
    new_modules_learning_rate: float | None = None  # projector + generation head (trained from scratch); None = learning_rate
    projector_learning_rate: float | None = None  # None = new_modules_learning_rate
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.03
    global_batch_size: int = 128
    micro_batch_size: int = 16  # per device; accumulation makes up the global batch
    max_steps: int = 1000  # optimizer steps
    mixed_precision: str = "auto"  # bf16 where the device supports it, else fp32
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    keep_checkpoints: int = 3  # the newest K complete checkpoints are kept; 0 keeps all
    dataloader_workers: int = 0  # processes that decode, encode and batch records (0: in the training process)
    group_by_modality_length: bool = False  # sort each global batch by modality and length (LLaVA's grouping)
    # Recompute the LM's and UNet's activations in the backward (GenLlava.enable_gradient_checkpointing):
    # less memory for about a third more compute.
    gradient_checkpointing: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)
