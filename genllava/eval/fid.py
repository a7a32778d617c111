"""Fréchet Inception Distance (Heusel et al. 2017) between two image sets.

FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) over the extractor's features. The trace of the
matrix square root is the sum of the square roots of the eigenvalues of S1 S2 (as torchmetrics
computes it), in float64. The features come from:

- `InceptionFeatures(path)`: torch-fidelity's FID Inception (the TF-ported network of TTUR and
  pytorch-fid, pool3, 2048 features, its own resize to 299) from the weights file at `path`, the
  extractor the paper's CC3M FID uses. torch-fidelity needs torchvision, so it loads only where a
  torchvision built for the installed torch is (any CUDA setup; not the CPU-only torch here).
- `TorchScriptFeatures(path)`: any TorchScript module that maps uint8 images (N, 3, H, W) to
  features (N, D); the tests use a tiny one.
- any callable taking a list of PIL images and returning an (N, D) tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .extractors import MissingWeights, missing

Extractor = Callable[[list[Image.Image]], torch.Tensor]


def statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, covariance) of (N, D) features, in float64; the covariance divides by N - 1."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"FID needs at least two feature vectors per set, got shape {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(np.asarray(t), dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    mean_term = (mu1 - mu2).square().sum()
    # eigenvalues of S1 S2 are real and >= 0 in exact arithmetic (both PSD); float error gives tiny
    # negative or imaginary parts, dropped as torchmetrics does.
    eigenvalues = torch.linalg.eigvals(sigma1 @ sigma2)
    trace_sqrt = eigenvalues.sqrt().real.sum()
    return float(mean_term + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def fid_from_features(a, b) -> float:
    return frechet_distance(*statistics(a), *statistics(b))


def features(extractor: Extractor, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
    return torch.cat([extractor(images[i:i + batch_size]).double().cpu() for i in range(0, len(images), batch_size)])


def fid(extractor: Extractor, images_a: list[Image.Image], images_b: list[Image.Image], batch_size: int = 32) -> float:
    return fid_from_features(features(extractor, images_a, batch_size), features(extractor, images_b, batch_size))


def uint8_batch(images: list[Image.Image], size: int | None = None) -> torch.Tensor:
    """(N, 3, H, W) uint8; `size` resizes (bicubic) first, else all images must share one size."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class TorchScriptFeatures:
    def __init__(self, path: str | Path, device: str = "cpu", size: int | None = None):
        if not Path(path).is_file():
            raise missing("inception", str(path))
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self.device, self.size = device, size

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.module(uint8_batch(images, self.size).to(self.device)).flatten(1)


class InceptionFeatures:
    """torch-fidelity's FID Inception from a local weights file (2048 pool3 features)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        if not Path(path).is_file():
            raise missing("inception", str(path))
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise MissingWeights(f"the FID Inception needs torch-fidelity and a torchvision built for this torch "
                                 f"({err}); `pip install torch-fidelity` where torchvision loads, or give a "
                                 "TorchScript extractor (.pt)") from None
        self.module = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                  feature_extractor_weights_path=str(path)).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        # Its forward takes uint8 at any size and resizes to 299 itself, as in TTUR.
        return self.module(uint8_batch(images, 299).to(self.device))[0].flatten(1)


def load_fid_extractor(path: str | Path, device: str = "cpu") -> Extractor:
    """A TorchScript file (.pt / .jit / .torchscript) or torch-fidelity's Inception weights (.pth)."""
    if str(path).endswith((".pt", ".jit", ".torchscript")):
        return TorchScriptFeatures(path, device)
    return InceptionFeatures(path, device)
