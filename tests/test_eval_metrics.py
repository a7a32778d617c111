"""Generation and editing metrics with tiny randomly initialised extractors (no weights are
downloaded): FID against a direct numpy/scipy computation, CLIP-I/CLIP-T/CLIPScore, DINO with
MagicBrush's preprocessing, L1, and the one-line error for a missing weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from genllava.eval.clip_similarity import ClipSimilarity, clip_score
from genllava.eval.dino import DinoSimilarity, l1_distance, magicbrush_preprocess
from genllava.eval.extractors import MissingWeights
from genllava.eval.fid import TorchScriptFeatures, fid, fid_from_features, load_fid_extractor, statistics


class TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x.float() / 255.0)).mean((2, 3))


def save_tiny_fid_extractor(path) -> str:
    torch.manual_seed(0)
    traced = torch.jit.trace(TinyFeatures().eval(), torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    traced.save(str(path))
    return str(path)


def save_tiny_clip(folder) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from genllava.shapes.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(documents=200)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def save_tiny_dino(folder) -> str:
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_extractors(tmp_path_factory):
    root = tmp_path_factory.mktemp("extractors")
    return {"fid": save_tiny_fid_extractor(root / "features.pt"), "clip": save_tiny_clip(root / "clip"),
            "dino": save_tiny_dino(root / "dino")}


def shapes(seed: int, count: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (32, 32), "white")
        x, y = rng.integers(2, 18, size=2)
        ImageDraw.Draw(image).ellipse([x, y, x + 12, y + 12], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        images.append(image)
    return images


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_fid_matches_a_direct_scipy_computation_and_is_zero_against_itself():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16))
    b = rng.normal(loc=0.3, scale=1.5, size=(150, 16)) @ rng.normal(size=(16, 16)) * 0.3
    assert fid_from_features(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(a, a + 1.0) == pytest.approx(16.0, rel=1e-6)  # a shift moves only the mean term
    mu, sigma = statistics(a)
    assert np.allclose(sigma.numpy(), np.cov(a, rowvar=False))
    with pytest.raises(ValueError, match="at least two"):
        fid_from_features(a[:1], b)


def test_fid_on_images_with_a_tiny_extractor(tiny_extractors):
    extractor = load_fid_extractor(tiny_extractors["fid"])
    assert isinstance(extractor, TorchScriptFeatures)
    a, b = shapes(0, 12), shapes(1, 12)
    assert fid(extractor, a, a) == pytest.approx(0.0, abs=1e-6)
    features_a = extractor(a).double().numpy()
    features_b = extractor(b).double().numpy()
    assert fid(extractor, a, b, batch_size=5) == pytest.approx(scipy_fid(features_a, features_b), rel=1e-5)
    assert fid(extractor, a, b) > 0


def test_clip_similarities_with_a_tiny_clip(tiny_extractors):
    clip = ClipSimilarity(tiny_extractors["clip"])
    a, b = shapes(0, 3), shapes(1, 3)
    same = clip.clip_i(a, a)
    assert same == pytest.approx([1.0] * 3, abs=1e-5)
    other = clip.clip_i(a, [Image.new("RGB", (32, 32), "black")] * 3)
    assert all(o < 1.0 - 1e-4 for o in other)
    texts = clip.clip_t(a, ["a red circle", "a blue square", "a green triangle"])
    assert all(-1.0 <= t <= 1.0 for t in texts)
    assert clip_score([0.3, -0.2]) == [pytest.approx(30.0), 0.0]


def test_dino_similarity_and_magicbrush_preprocessing(tiny_extractors):
    dino = DinoSimilarity(tiny_extractors["dino"])
    a = shapes(0, 3)
    assert dino.similarity(a, a) == pytest.approx([1.0] * 3, abs=1e-5)
    assert all(s < 1.0 - 1e-4 for s in dino.similarity(a, [Image.new("RGB", (32, 32), "black")] * 3))
    x = magicbrush_preprocess(Image.new("RGB", (512, 384), (255, 255, 255)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))
    # Resize to 256 on the short side, then the central 224: a 256-wide band seen whole.
    wide = Image.new("RGB", (400, 200), "black")
    ImageDraw.Draw(wide).rectangle([0, 0, 99, 199], fill="white")  # the left quarter, outside the crop
    assert torch.allclose(magicbrush_preprocess(wide)[0], magicbrush_preprocess(Image.new("RGB", (400, 200), "black"))[0])


def test_l1_distance():
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (16, 16), "black")
    assert l1_distance(white, white) == 0.0
    assert l1_distance(white, black) == pytest.approx(1.0)


def test_a_missing_weight_says_which_file_to_get(tmp_path):
    for make, what in ((lambda p: ClipSimilarity(p), "openai/clip-vit-large-patch14"),
                       (lambda p: DinoSimilarity(p), "facebook/dino-vits16"),
                       (lambda p: load_fid_extractor(p), "pt_inception-2015-12-05"),
                       (lambda p: load_fid_extractor(str(p) + ".pt"), "pt_inception-2015-12-05")):
        with pytest.raises(MissingWeights) as caught:
            make(tmp_path / "nothing-here")
        message = str(caught.value)
        assert "\n" not in message and what in message and "nothing-here" in message
