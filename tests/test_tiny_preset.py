"""The `tiny-mistral` preset: the 7B recipe's real classes and folder layouts (SigLIP, Mistral, SD v1.4), scaled
down and randomly initialised, built deterministically into a cache; and a Mistral-style SentencePiece tokenizer
meeting GenLlavaProcessor's piece-by-piece encoding."""

from __future__ import annotations

import json
import threading
from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel, MistralForCausalLM, SiglipVisionModel

from genllava import presets
from genllava.data import templates
from genllava.data.conversation import ASSISTANT, Message, user
from genllava.model.modeling import GenLlava
from genllava.shapes.world import Scene, Shape, render
from genllava.tiny import build as tiny_build
from genllava.train.examples import Collator, SkipReport, prepare

T2I, I2T = templates.T2I, templates.I2T
# Text outside the tokenizer's trained vocabulary: "é" and the emoji only exist as UTF-8 bytes (<0xC3><0xA9>...).
HARD_TEXT = "Café au lait, s'il vous plaît 🙂 — ok!"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("genllava-cache")


@pytest.fixture(scope="module")
def root(cache) -> Path:
    return tiny_build.tiny_components(cache)


@pytest.fixture(scope="module")
def config(cache, root):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENLLAVA_CACHE", str(cache))
        model, _ = presets.preset("tiny-mistral")
    return model


@pytest.fixture(scope="module")
def model(config) -> GenLlava:
    torch.manual_seed(0)
    return GenLlava.build(deepcopy(config))


def _records() -> list[dict]:
    """Two LLaVA-style records: understanding (input image, text answer) and generation (image answer)."""
    circle, square = Scene((Shape("red", "circle", "center"),)), Scene((Shape("green", "square", "top right"),))
    return [
        {"id": "understand", "image": render(circle), "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"},
            {"from": "gpt", "value": templates.text_answer("It is red.")}]},
        {"id": "generate", "target_image": [render(square)], "target_caption": [square.caption()],
         "conversations": [
             {"from": "human", "value": "Generate an image of a green square at the top right."},
             {"from": "gpt", "value": templates.image_answer("Here is a green square.")}]},
    ]


def _batch(model: GenLlava) -> dict:
    report = SkipReport()
    examples = list(prepare(_records(), model.processor, report))
    assert report.total == 0 and len(examples) == 2
    return Collator(model.processor, model.decoder.preprocess)(examples)


# ---- building and caching -----------------------------------------------------------------------------------

def test_same_seed_gives_identical_files_and_another_seed_other_weights(root, tmp_path):
    again = tiny_build.build_tiny_components(tmp_path / "again", seed=0)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert len(weights) == 5  # vision, language, unet, vae, text_encoder
    for name in files:
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    other = tiny_build.build_tiny_components(tmp_path / "other", seed=1)
    for name in weights:
        assert (root / name).read_bytes() != (other / name).read_bytes(), name
    # the tokenizers do not depend on the seed
    assert (root / "language/tokenizer.json").read_bytes() == (other / "language/tokenizer.json").read_bytes()


def test_cache_builds_once_and_a_race_has_one_winner(tmp_path, monkeypatch):
    built, barrier = [], threading.Barrier(2, timeout=60)
    real_build = tiny_build.build_tiny_components

    def build_then_wait(folder, seed=0):
        real_build(folder, seed)
        built.append(Path(folder))
        barrier.wait()  # both builds are finished before either is renamed into place

    monkeypatch.setattr(tiny_build, "build_tiny_components", build_then_wait)
    results, errors = [], []

    def worker():
        try:
            results.append(tiny_build.tiny_components(tmp_path))
        except Exception as err:  # noqa: BLE001 - surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(built) == 2
    target = tmp_path / f"tiny-mistral-{tiny_build.TINY_VERSION}"
    assert results == [target, target]
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # the loser's scratch folder is gone
    assert (target / tiny_build.DONE_MARKER).is_file()
    # a finished build is reused, not rebuilt
    assert tiny_build.tiny_components(tmp_path) == target and len(built) == 2


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLLAVA_CACHE", str(tmp_path / "elsewhere"))
    assert tiny_build.default_cache() == tmp_path / "elsewhere"
    monkeypatch.delenv("GENLLAVA_CACHE")
    assert tiny_build.default_cache() == Path.home() / ".cache" / "genllava"


def test_preset_is_the_7b_recipe_on_the_tiny_parts(config, root):
    big, big_train = presets.preset("genllava-mistral-7b")
    assert (Path(config.vision_tower), Path(config.language_model), Path(config.decoder)) == (
        root / "vision", root / "language", root / "decoder")
    assert config.head.width == 32 and config.head.heads == 2
    assert (config.head.encoder_layers, config.head.decoder_layers) == (1, 1)
    assert (config.max_length, config.inference_steps) == (256, 2)
    # every other model field as in the paper's recipe
    assert replace(config, vision_tower=big.vision_tower, language_model=big.language_model, decoder=big.decoder,
                   head=big.head, max_length=big.max_length, inference_steps=big.inference_steps) == big
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENLLAVA_CACHE", str(root.parent))
        _, train = presets.preset("tiny-mistral")
    assert (train.global_batch_size, train.micro_batch_size, train.max_steps) == (8, 2, 4)
    assert train.learning_rate == 1e-3
    assert replace(train, global_batch_size=big_train.global_batch_size, micro_batch_size=big_train.micro_batch_size,
                   max_steps=big_train.max_steps, learning_rate=big_train.learning_rate) == big_train


# ---- the real classes ------------------------------------------------------------------------------------------

def test_components_load_through_build_with_the_real_classes(model, root):
    assert isinstance(model.vision.model, SiglipVisionModel)
    assert json.loads((root / "vision/config.json").read_text())["model_type"] == "siglip"  # a full SiglipModel
    assert model.processor.image_seq_length == model.vision.num_patches == 16
    lm = model.language_model
    assert isinstance(lm, MistralForCausalLM)
    assert lm.config.num_key_value_heads < lm.config.num_attention_heads  # grouped-query attention
    assert not lm.config.tie_word_embeddings
    assert lm.lm_head.weight.data_ptr() != lm.get_input_embeddings().weight.data_ptr()
    unet = model.decoder.unet
    assert isinstance(unet, UNet2DConditionModel) and isinstance(model.decoder.vae, AutoencoderKL)
    assert list(unet.config.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert list(unet.config.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert model.decoder.vae.config.latent_channels == 4 and model.decoder.vae.config.scaling_factor == 0.18215
    assert isinstance(model.decoder.text_encoder, CLIPTextModel)
    assert type(model.decoder.tokenizer).__name__ == "CLIPTokenizer" and model.decoder.tokenizer.model_max_length == 77
    assert type(model.processor.image_processor).__name__.startswith("SiglipImageProcessor")
    assert isinstance(model.decoder.scheduler, DPMSolverMultistepScheduler)
    index = json.loads((root / "decoder/model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"] and index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert json.loads((root / "decoder/scheduler/scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    assert model.negative_conditioning.shape == (1, 77, unet.config.cross_attention_dim)


def test_forward_gives_finite_losses_and_a_few_steps_move_them(config):
    torch.manual_seed(0)
    model = GenLlava.build(deepcopy(config)).train()
    batch = _batch(model)
    assert batch["pixel_values"].shape == (1, 3, 32, 32) and batch["target_pixels"].shape == (1, 3, 64, 64)
    generator = torch.Generator().manual_seed(0)
    losses = model(**batch, generator=generator)
    assert set(losses) >= {"lm_loss", "diffusion_loss", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for part in ("projector", "generation_head", "language_model"):
        grads = [p.grad for p in model.trainable_parameters()[part] if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), part
        assert any(g.abs().sum() > 0 for g in grads), part
    assert all(p.grad is None for p in model.decoder.parameters())
    # the preset's learning rate moves the LM loss within a few steps (same batch)
    optimizer = torch.optim.AdamW([p for ps in model.trainable_parameters().values() for p in ps], lr=1e-3)
    first = losses["lm_loss"].item()
    for _ in range(3):
        optimizer.step()
        optimizer.zero_grad()
        losses = model(**batch, generator=torch.Generator().manual_seed(0))
        losses["loss"].backward()
    assert losses["lm_loss"].item() < first - 0.1


def test_generate_returns_text_and_an_image_for_t2i(model):
    image = render(Scene((Shape("blue", "triangle", "bottom left"),)))
    model.eval()
    read, drawn = model.generate([[user("What is in the picture?", has_image=True)], [user("Draw a red circle.")]],
                                 [image, None], max_new_tokens=4)
    assert isinstance(read.text, str) and isinstance(drawn.text, str)
    reply, = model.generate([[user("Draw a red circle.")]], [None], task=T2I, max_new_tokens=3)
    assert reply.task == T2I and reply.image is not None
    assert reply.image.size == (64, 64)  # the VAE's sample_size: 8x8 latents, upsampled 8x


# ---- the Mistral-style tokenizer -----------------------------------------------------------------------------

def test_tokenizer_behaves_like_mistrals(root):
    tokenizer = AutoTokenizer.from_pretrained(root / "language")
    config = json.loads((root / "language/tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and config["add_bos_token"] and not config["add_eos_token"]
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.pad_token_id is None  # Mistral ships none; the processor picks one
    assert tokenizer.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    ids = tokenizer("the red circle at the top").input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert ids[0] == 1 and pieces[1:] == ["▁the", "▁red", "▁circle", "▁at", "▁the", "▁top"]
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("é 🙂", add_special_tokens=False).input_ids)
    assert {"<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>"} <= set(pieces)  # byte fallback, no <unk>
    assert tokenizer.decode(tokenizer(HARD_TEXT).input_ids, skip_special_tokens=True) == HARD_TEXT
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == "<s>[INST] Hi [/INST]Hello.</s>"


def test_processor_round_trips_answers_and_shares_the_prefix_between_training_and_inference(model):
    proc = model.processor
    assert proc.pad_id == proc.tokenizer.unk_token_id  # Mistral has no pad token
    for text in ["It is red.", HARD_TEXT, "two  spaces", "line one\nline two", "a literal [IMG3] and <image>"]:
        for task, image in ((I2T, False), (T2I, True)):
            ids = proc._answer(Message(ASSISTANT, text, task=task, image_answer=image))
            assert proc.decode(ids) == text
            assert proc.tokenizer.unk_token_id not in ids
    history = [user("What is in the picture?", has_image=True),
               Message(ASSISTANT, "A café 🙂.", task=I2T),
               user("Draw it bigger, s'il vous plaît."),
               Message(ASSISTANT, "Voilà.", task=T2I, image_answer=True),
               user("Now in blue — thanks!")]
    prompt = proc.encode_prompt(history)
    trained = proc.encode(history + [Message(ASSISTANT, "Done 🙂", task=T2I, image_answer=True)])
    assert trained.input_ids[:len(prompt)] == prompt
    assert trained.image_answers == 2
    # the last answer is labelled as written ([IMG*] and [EOI] are placed by the code, not predicted)
    placed = set(proc.img_token_ids) | {proc.eoi_id}
    answer = [t for t in proc._answer(Message(ASSISTANT, "Done 🙂", task=T2I, image_answer=True)) if t not in placed]
    labelled = [t for t in trained.labels if t != -100]
    assert labelled[-len(answer):] == answer and proc.decode(answer) == "Done 🙂"


def test_content_pieces_tokenize_as_in_running_text(model):
    proc = model.processor
    tokenizer = proc.tokenizer
    running = tokenizer(templates.ASSISTANT_PREFIX + " It is red.", add_special_tokens=False).input_ids
    assert proc._assistant + proc._content("It is red.") == running
    # after an added token (task token, <image>, </s>) too: no lone "▁", newlines are bare "<0x0A>"
    assert proc._prepends
    pieces = tokenizer.convert_ids_to_tokens
    assert pieces(proc._newline) == ["<0x0A>"]
    history = [user("What is it?\nBe brief.", has_image=True), Message(ASSISTANT, "It is red.", task=I2T),
               user("Draw it."), Message(ASSISTANT, "Here it is.", task=T2I, image_answer=True)]
    ids = proc.encode(history).input_ids
    assert "▁" not in pieces(ids)
    text = tokenizer.decode(ids)  # the layout as running text: USER:/ASSISTANT: start words
    assert text.startswith("<s> A chat") and text.endswith("[EOI]</s>\n")
    assert "<image>\n What is it?\nBe" in text
    assert "[I2T] It is red.</s>\n USER: Draw it.\n ASSISTANT:[T2I] Here it is.[SOI]" in text


def test_chat_template_cannot_match_a_legacy_sentencepiece_tokenizer(model):
    """The reason templates.chat_template gives: text after an added token gets a "▁" of its own."""
    proc = model.processor
    after_eos = proc.tokenizer(templates.ASSISTANT_PREFIX + "[I2T]</s>\n", add_special_tokens=False).input_ids
    assert after_eos[-2:] == [proc.tokenizer.convert_tokens_to_ids("▁"), *proc._newline]


def test_saved_model_reloads_the_same_tokenizer(model, tmp_path):
    model.save_pretrained(tmp_path / "model")
    loaded = GenLlava.from_pretrained(tmp_path / "model")
    history = [user("What is in the picture?", has_image=True), Message(ASSISTANT, HARD_TEXT, task=I2T),
               user("Draw it.")]
    assert loaded.processor.encode_prompt(history) == model.processor.encode_prompt(history)
    assert loaded.processor.decode(loaded.processor._answer(history[1])) == HARD_TEXT
