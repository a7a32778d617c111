"""The vision-language projector: LLaVA-1.5's two-layer MLP with a GELU."""

import torch
from torch import nn


class Projector(nn.Sequential):
    def __init__(self, vision_width: int, text_width: int):
        super().__init__(nn.Linear(vision_width, text_width), nn.GELU(), nn.Linear(text_width, text_width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # The vision tower may be held in another dtype (bf16 frozen, fp32 trained): cast at the boundary.
        return super().forward(features.to(self[0].weight.dtype))
