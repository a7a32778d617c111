"""GenLlavaConfig: one typed record of the whole model, written as config.json in the model folder.

Frozen parts (vision tower, image decoder) are named by hub id or path and never copied; the
trained language model lives in the model folder once the model has been saved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

CONFIG_NAME = "config.json"


@dataclass
class HeadConfig:
    """The generation head (paper eq. 2): Transformer encoder-decoder over the [IMG] states."""

    width: int = 512
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    num_queries: int = 77  # L learnable queries -> L conditioning vectors for the UNet


@dataclass
class GenLlavaConfig:
    vision_tower: str  # hub id or path of a transformers vision model (SigLIP / CLIP)
    language_model: str  # hub id or path of the base causal LM
    decoder: str  # hub id or path of a Stable-Diffusion-layout folder (unet/, vae/, scheduler/, ...)
    vision_feature_layer: int = -2  # penultimate layer, all patches (LLaVA-1.5 convention)
    num_img_tokens: int = 16
    head: HeadConfig = field(default_factory=HeadConfig)
    max_length: int = 2048  # longest token sequence the model is trained or prompted with
    diffusion_loss_weight: float = 1.0  # lambda in  loss = LM + lambda * diffusion
    diffusion_high_noise_share: float = 0.0  # share of diffusion timesteps from the noisiest tenth (0: uniform)
    lm_loss_reduction: str = "sample"  # "sample": mean per conversation, then over the batch; or "token"
    align_loss_weight: float = 0.0  # optional MSE to the decoder's own caption embedding (GILL-style)
    guidance_scale: float = 7.5
    inference_steps: int = 25
    model_type: str = "genllava"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenLlavaConfig":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if isinstance(data.get("head"), dict):
            data["head"] = HeadConfig(**data["head"])
        return cls(**data)

    def save(self, folder: str | Path) -> None:
        Path(folder, CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "GenLlavaConfig":
        path = Path(folder, CONFIG_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a genllava model folder (no {CONFIG_NAME})")
        data = json.loads(path.read_text())
        if data.get("model_type") != "genllava":
            raise ValueError(f"{path} is not a genllava config (model_type={data.get('model_type')!r})")
        return cls.from_dict(data)
