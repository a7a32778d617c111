"""The vision-language projector: LLaVA-1.5's two-layer MLP with a GELU."""

from torch import nn


class Projector(nn.Sequential):
    def __init__(self, vision_width: int, text_width: int):
        super().__init__(nn.Linear(vision_width, text_width), nn.GELU(), nn.Linear(text_width, text_width))
