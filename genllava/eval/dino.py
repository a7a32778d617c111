"""DINO similarity, MagicBrush's editing metric (the paper's EVR 66.9): cosine of the CLS embeddings
of DINO ViT-S/16 for a generated and a target image.

Preprocessing as MagicBrush's evaluation script: Resize(256, bicubic) on the short side,
CenterCrop(224), ToTensor, Normalize(ImageNet mean, std). The network is `facebook/dino-vits16`
(the transformers port of torch.hub's dino_vits16; its last_hidden_state is after the final norm,
as the hub model's CLS output), from a local folder or a cached hub id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .extractors import load_pretrained

DEFAULT_DINO = "facebook/dino-vits16"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def magicbrush_preprocess(image: Image.Image, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """(3, crop, crop) float tensor: torchvision's Resize(resize, BICUBIC) + CenterCrop(crop) +
    ToTensor + Normalize(ImageNet), in PIL and numpy."""
    image = image.convert("RGB")
    w, h = image.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    image = image.resize(size, Image.BICUBIC)
    w, h = image.size
    left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


class DinoSimilarity:
    def __init__(self, name_or_path: str | Path = DEFAULT_DINO, device: str = "cpu", model=None):
        """`model` injects a ViTModel (tests); else it loads offline from `name_or_path`."""
        from transformers import ViTModel

        self.model = (model or load_pretrained(ViTModel, "dino", name_or_path, add_pooling_layer=False)).to(device).eval()
        self.device = device
        size = self.model.config.image_size
        self.crop = size if isinstance(size, int) else size[0]
        self.resize = round(self.crop * 256 / 224)

    @torch.no_grad()
    def features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([magicbrush_preprocess(im, self.resize, self.crop) for im in images]).to(self.device)
        cls = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(cls.float(), dim=-1).cpu()

    def similarity(self, images: list[Image.Image], targets: list[Image.Image]) -> list[float]:
        return (self.features(images) * self.features(targets)).sum(-1).tolist()


def l1_distance(image: Image.Image, target: Image.Image) -> float:
    """MagicBrush's L1: mean absolute difference of pixel values in [0, 1], the image resized
    (bicubic) to the target's size."""
    image, target = image.convert("RGB"), target.convert("RGB")
    if image.size != target.size:
        image = image.resize(target.size, Image.BICUBIC)
    a = np.asarray(image, dtype=np.float32) / 255.0
    b = np.asarray(target, dtype=np.float32) / 255.0
    return float(np.abs(a - b).mean())
