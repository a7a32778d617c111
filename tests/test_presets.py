"""Presets: the paper's recipe names the real parts, fails clearly offline, and - proved on
tiny-ised copies of the real configs - builds the right classes with the right shapes."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from PIL import Image
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import (AutoTokenizer, CLIPTextConfig, CLIPTextModel, MistralConfig, MistralForCausalLM,
                          SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel)

from genllava import presets
from genllava.data.conversation import user
from genllava.model.config import GenLlavaConfig, HeadConfig
from genllava.model.decoder import DiffusionDecoder
from genllava.model.generation_head import GenerationHead
from genllava.model.loading import ComponentError
from genllava.model.modeling import GenLlava
from genllava.model.projector import Projector
from genllava.shapes.pretrain_decoder import save_decoder, tiny_vae

MISTRAL = "mistralai/Mistral-7B-Instruct-v0.2"
SIGLIP = "google/siglip-large-patch16-384"
SD14 = "CompVis/stable-diffusion-v1-4"


def test_paper_preset_names_the_real_parts():
    model, train = presets.preset("genllava-mistral-7b")
    assert (model.language_model, model.vision_tower, model.decoder) == (MISTRAL, SIGLIP, SD14)
    assert model.vision_feature_layer == -2 and model.num_img_tokens == 16
    assert model.head == HeadConfig(width=512, heads=8, encoder_layers=4, decoder_layers=4, num_queries=77)
    assert model.max_length == 2048
    # the paper's optimisation recipe
    assert (train.learning_rate, train.weight_decay, train.max_grad_norm, train.warmup_ratio) == (2e-5, 0.1, 1.0, 0.03)
    assert train.global_batch_size == 128 and train.mixed_precision == "auto"
    assert train.global_batch_size % train.micro_batch_size == 0


def test_presets_are_fresh_copies_and_unknown_names_fail():
    a, _ = presets.preset("genllava-mistral-7b")
    a.decoder = "elsewhere"
    assert presets.preset("genllava-mistral-7b")[0].decoder == SD14  # no shared mutable state
    with pytest.raises(ValueError, match="genllava-mistral-7b"):
        presets.preset("llava-13b")


def test_shapes_preset_uses_the_packaged_parts():
    model, train = presets.preset("shapes")
    for path in (model.vision_tower, model.language_model, model.decoder):
        assert Path(path).parent == presets.SHAPES_PRETRAINED
    assert model.head.num_queries == 77 and model.max_length == 256
    assert train.max_steps > 0 and train.global_batch_size % train.micro_batch_size == 0
    assert GenLlavaConfig.from_dict(model.to_dict()) == model  # config round-trips


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


def _assert_one_clear_line(err, what: str, name: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert what in message and name in message
    assert "hub" in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback


def test_paper_preset_offline_fails_with_one_clear_line(offline):
    config, _ = presets.preset("genllava-mistral-7b")
    with pytest.raises(ComponentError) as err:
        GenLlava.build(config)
    _assert_one_clear_line(err, "vision tower", SIGLIP)


def test_offline_language_model_and_decoder_errors_name_their_part(offline, tiny_components):
    config, _ = presets.preset("genllava-mistral-7b")
    config.vision_tower = str(tiny_components / "vision")
    with pytest.raises(ComponentError) as err:
        GenLlava.build(deepcopy(config))
    _assert_one_clear_line(err, "language model", MISTRAL)
    config.language_model = str(tiny_components / "language")
    with pytest.raises(ComponentError) as err:
        GenLlava.build(deepcopy(config))
    _assert_one_clear_line(err, "image decoder", SD14)


def test_a_broken_local_folder_is_one_clear_line(tiny_components, tmp_path):
    broken = tmp_path / "decoder"
    broken.mkdir()
    config = GenLlavaConfig(vision_tower=str(tiny_components / "vision"), language_model=str(tiny_components / "language"),
                            decoder=str(broken), head=HeadConfig(width=32, heads=2, encoder_layers=1, decoder_layers=1))
    with pytest.raises(ComponentError) as err:
        GenLlava.build(config)
    assert "\n" not in str(err.value) and "local folder" in str(err.value) and str(broken) in str(err.value)


# ---- the real architectures, tiny-ised ---------------------------------------------------------------

def mistral_7b_tiny(vocab_size: int, tokenizer) -> MistralConfig:
    """Mistral-7B-Instruct-v0.2's config.json with the width and depth shrunk."""
    return MistralConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=224, num_hidden_layers=2,
        num_attention_heads=32, num_key_value_heads=8, head_dim=2, hidden_act="silu", max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)


def siglip_large_384_tiny() -> SiglipVisionConfig:
    """google/siglip-large-patch16-384's vision config with the width and depth shrunk."""
    return SiglipVisionConfig(image_size=384, patch_size=16, hidden_size=48, intermediate_size=96,
                              num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu_pytorch_tanh",
                              layer_norm_eps=1e-6)


def sd14_unet_tiny() -> UNet2DConditionModel:
    """CompVis/stable-diffusion-v1-4's UNet config with the channels shrunk."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu")


@pytest.fixture(scope="module")
def real_architectures(tiny_components, tmp_path_factory):
    """Local folders in the real parts' layouts, built from tiny-ised copies of their configs."""
    root = tmp_path_factory.mktemp("real-architectures")
    tokenizer = AutoTokenizer.from_pretrained(tiny_components / "language")
    torch.manual_seed(0)
    MistralForCausalLM(mistral_7b_tiny(len(tokenizer), tokenizer)).save_pretrained(root / "mistral")
    tokenizer.save_pretrained(root / "mistral")
    SiglipVisionModel(siglip_large_384_tiny()).save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 384, "width": 384}).save_pretrained(root / "siglip")
    text_encoder = CLIPTextModel(CLIPTextConfig(  # SD v1.4's text encoder is CLIP ViT-L/14's: width 768
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
        max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                            beta_schedule="scaled_linear", prediction_type="epsilon")
    save_decoder(DiffusionDecoder(sd14_unet_tiny(), tiny_vae(16), scheduler, text_encoder, tokenizer), root / "sd")
    return root


def test_paper_architecture_builds_with_the_right_classes_and_shapes(real_architectures):
    root = real_architectures
    config, _ = presets.preset("genllava-mistral-7b")
    config.vision_tower, config.language_model, config.decoder = (str(root / "siglip"), str(root / "mistral"),
                                                                  str(root / "sd"))
    model = GenLlava.build(config).eval()

    assert type(model.language_model) is MistralForCausalLM
    assert type(model.vision.model) is SiglipVisionModel
    assert type(model.decoder.unet) is UNet2DConditionModel and type(model.decoder.vae) is AutoencoderKL
    assert model.language_model.config.num_key_value_heads == 8 and model.language_model.config.rope_parameters["rope_theta"] == 1e6
    # SigLIP-large/384 at patch 16: 24 x 24 = 576 patches, all of them image tokens
    assert model.vision.num_patches == 576 and model.processor.image_seq_length == 576
    siglip_width, lm_width = 48, 64
    assert isinstance(model.projector, Projector)
    assert (model.projector[0].in_features, model.projector[0].out_features) == (siglip_width, lm_width)
    assert (model.projector[2].in_features, model.projector[2].out_features) == (lm_width, lm_width)
    # the generation head: 16 [IMG] states of the LM's width -> 77 x 768 for SD v1.4's cross-attention
    head = model.generation_head
    assert isinstance(head, GenerationHead)
    assert head.input_proj.in_features == lm_width and head.input_proj.out_features == 512
    assert len(head.transformer.encoder.layers) == 4 and len(head.transformer.decoder.layers) == 4
    assert model.decoder.cross_attention_dim == 768
    assert model.negative_conditioning.shape == (1, 77, 768)

    with torch.no_grad():
        conditioning = head(torch.randn(2, 16, lm_width))
        assert conditioning.shape == (2, 77, 768)
        noise = model.decoder.unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]),
                                   encoder_hidden_states=conditioning).sample
        assert noise.shape == (2, 4, 8, 8)
        pixels = model.processor.pixel_values([Image.new("RGB", (500, 300))])
        assert pixels.shape == (1, 3, 384, 384)
        features = model.projector(model.vision(pixels))
        assert features.shape == (1, 576, lm_width)
        ids = torch.tensor([model.processor.encode_prompt([user("What is in the picture?", has_image=True)])])
        assert int((ids == model.processor.image_token_id).sum()) == 576
        assert model.embed(ids, pixels).shape == (1, ids.shape[1], lm_width)


def test_shipped_world_lm_answers_the_worlds_chats_in_words():
    """The shipped LM is what GenLLaVA starts from: it must already answer text questions and say
    what an image answer shows (its reading of a scene in words bounds understanding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genllava.shapes.pretrain_lm import EVAL_SEED, score_lm
    from genllava.shapes.tasks import make_eval_records

    folder = presets.SHAPES_PRETRAINED / "language"
    scores = score_lm(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), samples=50)
    assert scores["text"] >= 0.95 and scores["generation"] >= 0.95 and scores["editing"] >= 0.95
    assert scores["understanding"] >= 0.7
    # The split by shape count covers every understanding question: one shape is read from words.
    assert scores["understanding_one_shape"] >= 0.95
    shapes = [r["meta"]["image_shapes"] for r in make_eval_records("understanding", 50, EVAL_SEED)]
    one, two = shapes.count(1), shapes.count(2)
    assert one + two == 50 and one > 0 and two > 0
    weighted = (one * scores["understanding_one_shape"] + two * scores["understanding_two_shapes"]) / 50
    assert weighted == pytest.approx(scores["understanding"])


def test_language_pretraining_is_the_same_with_batch_workers(tmp_path):
    from genllava.shapes.pretrain_lm import pretrain_lm

    tokenizer = AutoTokenizer.from_pretrained(presets.SHAPES_PRETRAINED / "tokenizer")
    alone = pretrain_lm(tmp_path / "alone", tokenizer, steps=3, batch=4, seed=2, evaluate=False)
    workers = pretrain_lm(tmp_path / "workers", tokenizer, steps=3, batch=4, seed=2, evaluate=False, workers=2)
    assert alone["final_loss"] == workers["final_loss"]
