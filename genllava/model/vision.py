"""The frozen vision tower: a transformers vision model whose penultimate-layer patch features
(all patches, no CLS) are what the projector sees."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel

# model_type of a checkpoint's config -> the vision model class that reads it.
VISION_TOWERS = {
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
}


def vision_class(path: str) -> type:
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in VISION_TOWERS:
        raise ValueError(f"vision tower {path!r} has model_type {model_type!r}; supported: {sorted(VISION_TOWERS)}")
    return VISION_TOWERS[model_type]


class VisionTower(nn.Module):
    def __init__(self, model: nn.Module, feature_layer: int = -2):
        super().__init__()
        self.model, self.feature_layer = model, feature_layer
        self.model.requires_grad_(False).eval()

    @classmethod
    def from_pretrained(cls, path: str, feature_layer: int = -2, **kwargs) -> "VisionTower":
        return cls(vision_class(path).from_pretrained(path, **kwargs), feature_layer)

    def train(self, mode: bool = True) -> "VisionTower":
        return super().train(False)  # frozen: always in eval mode

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_patches(self) -> int:
        config = self.model.config
        return (config.image_size // config.patch_size) ** 2

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values.to(self.model.dtype), output_hidden_states=True)
        features = out.hidden_states[self.feature_layer]
        return features[:, -self.num_patches:]  # CLIP prepends a CLS token; SigLIP has none
