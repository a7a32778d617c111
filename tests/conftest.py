"""Shared fixtures: tiny components of the real classes, built from configs, saved with
save_pretrained and loaded back through the same from_pretrained path a 7B user takes."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with another job, spinning
# threads made each torch op up to ~50x slower (measured: 2-step sampling 5 s -> 0.09 s).
# Must be set before torch is first imported; a value from the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Real public data shipped with the tests (provenance in tests/fixtures/README.md).
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """(tokenizer_dir, vision_dir, lm_dir, decoder_dir): each pretrained for a step or two."""
    from genllava.shapes.pretrain_decoder import pretrain_decoder
    from genllava.shapes.pretrain_lm import pretrain_lm
    from genllava.shapes.pretrain_vision import pretrain_vision
    from genllava.shapes.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("components")
    tokenizer = build_tokenizer(documents=2000)
    pretrain_vision(root / "vision", tokenizer, steps=1, batch=4)
    pretrain_lm(root / "language", tokenizer, steps=1, batch=4, evaluate=False)
    pretrain_decoder(root / "decoder", tokenizer, vae_steps=1, unet_steps=1, batch=4, evaluate=False)
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_components):
    from genllava.model.config import GenLlavaConfig, HeadConfig

    return GenLlavaConfig(vision_tower=str(tiny_components / "vision"), language_model=str(tiny_components / "language"),
                          decoder=str(tiny_components / "decoder"), max_length=256,
                          head=HeadConfig(width=32, heads=2, encoder_layers=1, decoder_layers=1),
                          inference_steps=2, align_loss_weight=1.0)


@pytest.fixture()
def tiny_model(tiny_config):
    from copy import deepcopy

    from genllava.model.modeling import GenLlava

    torch.manual_seed(0)
    return GenLlava.build(deepcopy(tiny_config))


PHOTOS = sorted(os.path.join(FIXTURES, "photos", name) for name in os.listdir(os.path.join(FIXTURES, "photos")))


@pytest.fixture(scope="session")
def photos():
    """Real 512x512 RGB JPEG photographs from tests/fixtures/photos."""
    return PHOTOS


@pytest.fixture(scope="session")
def tiny_processor(tiny_components):
    """A GenLlavaProcessor on the tiny components' tokenizer and image processor (no model)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    from genllava.model.processor import GenLlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(tiny_components / "language")
    GenLlavaProcessor.add_genllava_tokens(tokenizer)
    image_processor = AutoImageProcessor.from_pretrained(tiny_components / "vision")
    return GenLlavaProcessor(tokenizer, image_processor, image_seq_length=16, max_length=256)


@pytest.fixture(scope="session")
def saved_tiny_model(tiny_config, tmp_path_factory):
    """A tiny GenLlava (untrained glue) saved with save_pretrained: the folder a user would pass as --model."""
    from copy import deepcopy

    from genllava.model.modeling import GenLlava

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("saved") / "model"
    GenLlava.build(deepcopy(tiny_config)).save_pretrained(folder)
    return folder
