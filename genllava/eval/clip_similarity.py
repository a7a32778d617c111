"""CLIP similarities: CLIP-I (GILL's generation protocol and MagicBrush's editing one: cosine of the
CLIP image embeddings of a generated and a reference image), CLIP-T (cosine of a generated image's
embedding and its caption's) and CLIPScore (torchmetrics' definition: 100 * max(CLIP-T, 0)).

The paper's COCO "CLIP similarity 0.73" is CLIP-I with `openai/clip-vit-large-patch14`. The model
comes from a local folder or a hub id already in the cache; nothing is downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .extractors import load_pretrained

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class ClipSimilarity:
    def __init__(self, name_or_path: str | Path = DEFAULT_CLIP, device: str = "cpu", model=None, processor=None):
        """`model`/`processor` inject a CLIPModel and CLIPProcessor (tests); else both load offline."""
        from transformers import CLIPModel, CLIPProcessor

        self.model = (model or load_pretrained(CLIPModel, "clip", name_or_path)).to(device).eval()
        self.processor = processor or load_pretrained(CLIPProcessor, "clip", name_or_path)
        self.device = device

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
        out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        out = getattr(out, "pooler_output", out)  # transformers 5 may return a model output
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings)
        out = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                           attention_mask=tokens.attention_mask.to(self.device))
        out = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()

    def clip_i(self, images: list[Image.Image], references: list[Image.Image]) -> list[float]:
        """Per pair: cosine of the two images' CLIP embeddings."""
        return (self.image_features(images) * self.image_features(references)).sum(-1).tolist()

    def clip_t(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        """Per pair: cosine of the image's and the text's CLIP embeddings."""
        return (self.image_features(images) * self.text_features(texts)).sum(-1).tolist()


def clip_score(clip_t: list[float]) -> list[float]:
    """CLIPScore as torchmetrics reports it: 100 * max(cosine, 0)."""
    return [100.0 * max(c, 0.0) for c in clip_t]
