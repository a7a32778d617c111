"""The composite model on tiny components of the real classes: what is frozen, what trains, the
[IMG] states gathered identically in training and inference, and a lossless save/load."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from genllava.data import templates
from genllava.data.conversation import ASSISTANT, Message, user
from genllava.model.modeling import GenLlava, Reply
from genllava.shapes.tasks import make_eval_records
from genllava.shapes.world import Scene, Shape, render
from genllava.train.config import TrainConfig
from genllava.train.examples import Collator, SkipReport, prepare
from genllava.train.trainer import parameter_groups

T2I, I2T = templates.T2I, templates.I2T
SQUARE = Scene((Shape("green", "square", "top right"),))


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def batch_of(model: GenLlava, tasks=("understanding", "generation", "editing", "text")) -> dict:
    records = [make_eval_records(task, 1, seed=5)[0] for task in tasks]
    examples = list(prepare(records, model.processor, SkipReport()))
    assert len(examples) == len(records)
    return Collator(model.processor, model.decoder.preprocess)(examples)


# ---- the vision side --------------------------------------------------------------------------------

def test_vision_tower_is_frozen_and_reads_the_penultimate_layer(tiny_model):
    model = tiny_model
    model.train()
    assert not model.vision.training and not model.vision.model.training
    assert all(not p.requires_grad for p in model.vision.parameters())
    pixels = model.processor.pixel_values([render(SQUARE), render(Scene((Shape("red", "circle", "center"),)))])
    features = model.vision(pixels)
    assert features.shape == (2, model.processor.image_seq_length, model.vision.width)
    assert not features.requires_grad
    with torch.no_grad():
        reference = model.vision.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert torch.allclose(features, reference[-2])
    assert not torch.allclose(features, reference[-1], atol=1e-3)  # not the last layer
    assert model.config.vision_feature_layer == -2


def test_embed_puts_projected_patches_in_the_image_slots(tiny_model):
    model, proc = tiny_model.eval(), tiny_model.processor
    ids = torch.tensor([proc.encode_prompt([user("What is this?", has_image=True)])])
    pixels = proc.pixel_values([render(SQUARE)])
    with torch.no_grad():
        embeds = model.embed(ids, pixels)
        slots = ids[0] == proc.image_token_id
        assert int(slots.sum()) == proc.image_seq_length
        projected = model.projector(model.vision(pixels))[0]
        assert torch.allclose(embeds[0, slots], projected)
        words = model.language_model.get_input_embeddings()(ids)[0]
        assert torch.equal(embeds[0, ~slots], words[~slots])
    with pytest.raises(ValueError, match="no image"):
        model.embed(ids, None)
    with pytest.raises(ValueError, match="image slots"):
        model.embed(ids, proc.pixel_values([render(SQUARE), render(SQUARE)]))


# ---- what trains ---------------------------------------------------------------------------------------

def test_gradients_reach_new_token_rows_head_and_projector_but_not_frozen_parts(tiny_model):
    model = tiny_model
    model.train()
    batch = batch_of(model)
    assert batch["target_pixels"].shape[0] == 2 and batch["pixel_values"].shape[0] == 2
    losses = model(**batch, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"lm_loss", "diffusion_loss", "align_loss", "loss"}
    expected = (losses["lm_loss"] + model.config.diffusion_loss_weight * losses["diffusion_loss"]
                + model.config.align_loss_weight * losses["align_loss"])
    assert torch.allclose(losses["loss"], expected)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()

    proc = model.processor
    new_rows = [*proc.img_token_ids, *proc.task_ids.values(), proc.soi_id, proc.eoi_id]
    input_grad = model.language_model.get_input_embeddings().weight.grad
    output_grad = model.language_model.get_output_embeddings().weight.grad
    for token in new_rows:
        assert input_grad[token].abs().sum() > 0, proc.tokenizer.convert_ids_to_tokens(token)
        assert output_grad[token].abs().sum() > 0, proc.tokenizer.convert_ids_to_tokens(token)
    assert input_grad[proc.image_token_id].abs().sum() == 0  # its slots are overwritten by image features

    for name, p in model.decoder.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in model.vision.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in model.generation_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in model.projector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_text_only_batch_has_no_diffusion_loss(tiny_model):
    model = tiny_model
    model.train()
    losses = model(**batch_of(model, ("text", "understanding")))
    assert set(losses) == {"lm_loss", "loss"}
    assert torch.equal(losses["loss"], losses["lm_loss"])
    losses["loss"].backward()
    # The idle head still takes part (GenLlava.forward, for DDP): zero gradients, not none.
    assert all(p.grad is not None and not p.grad.any() for p in model.generation_head.parameters())


def test_optimizer_groups_hold_exactly_the_trainable_parts(tiny_model):
    groups = parameter_groups(tiny_model, TrainConfig(weight_decay=0.1, learning_rate=1e-4, new_modules_learning_rate=1e-3))
    in_optimizer = {id(p) for g in groups for p in g["params"]}
    expected = {id(p) for part in (tiny_model.projector, tiny_model.language_model, tiny_model.generation_head)
                for p in part.parameters()}
    assert in_optimizer == expected
    frozen = {id(p) for part in (tiny_model.decoder, tiny_model.vision) for p in part.parameters()}
    assert not in_optimizer & frozen
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert all(p.ndim >= 2 for g in groups if g["weight_decay"] == 0.1 for p in g["params"])
    assert all(p.ndim < 2 for g in groups if g["weight_decay"] == 0.0 for p in g["params"])
    assert decayed and decayed != in_optimizer
    lm = {id(p) for p in tiny_model.language_model.parameters()}
    for g in groups:  # the LM at learning_rate; the modules trained from scratch at their own rate
        assert g["lr"] == (1e-4 if {id(p) for p in g["params"]} <= lm else 1e-3)


def test_model_train_keeps_the_frozen_decoder_in_eval_mode(tiny_model):
    tiny_model.train()
    assert not tiny_model.decoder.training
    assert not any(m.training for m in tiny_model.decoder.modules())


# ---- training and inference gather the same [IMG] states ------------------------------------------------

def _conversations():
    short = [user("Generate an image of a red circle at the center."),
             Message(ASSISTANT, "", task=T2I, image_answer=True)]
    long = [user("Draw what you see, then change it.", has_image=True),
            Message(ASSISTANT, "Here it is.", task=T2I, image_answer=True),
            user("Now make it blue and move it to the bottom left."),
            Message(ASSISTANT, "Done.", task=T2I, image_answer=True)]
    return short, long


def _inference_sequence(proc, conversation):
    """What generate() hands to _draw: the prompt with the task, the generated text, then the block."""
    *history, answer = conversation
    return (proc.encode_prompt(history, task=answer.task) + proc._content(answer.text)
            + [proc.soi_id, *proc.img_token_ids, proc.eoi_id])


def test_img_states_identical_in_training_and_inference_internals(tiny_model):
    model, proc = tiny_model.eval(), tiny_model.processor
    short, long = _conversations()
    image = render(SQUARE)
    pixels = proc.pixel_values([image])
    lm = model.language_model
    train_ids = [proc.encode(short).input_ids, proc.encode(long).input_ids]
    assert len(train_ids[0]) < len(train_ids[1])
    with torch.no_grad():
        # training: right padding, default positions (as GenLlava.forward)
        ids, mask = proc.pad(train_ids, left=False)
        assert mask[0, -1] == 0  # the first sample really is padded
        embeds = model.embed(ids, pixels)
        hidden = lm(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        trained = model.img_states(ids, embeds, hidden)
        # inference: left padding, positions counted from the first real token (as GenLlava._draw)
        infer_ids = [_inference_sequence(proc, short), _inference_sequence(proc, long)]
        ids_l, mask_l = proc.pad(infer_ids, left=True)
        assert mask_l[0, 0] == 0
        embeds_l = model.embed(ids_l, pixels)
        positions = (mask_l.cumsum(-1) - 1).clamp(min=0)
        hidden_l = lm(inputs_embeds=embeds_l, attention_mask=mask_l, position_ids=positions,
                      output_hidden_states=True).hidden_states[-1]
        inferred = model.img_states(ids_l, embeds_l, hidden_l)
    n, width = model.config.num_img_tokens, lm.config.hidden_size
    assert trained.shape == inferred.shape == (3, n, width)
    assert torch.allclose(trained, inferred, atol=1e-5), (trained - inferred).abs().max()
    # e + h: the word embedding of each [IMGi] is part of it
    word = lm.get_input_embeddings().weight[proc.img_token_ids]
    assert torch.allclose(trained[0] - word, hidden[0][torch.isin(ids[0], torch.tensor(proc.img_token_ids))], atol=1e-5)
    # the blocks are the [IMG] positions of each answer, in order: not interchangeable
    assert not torch.allclose(trained[1], trained[2], atol=1e-3)


def test_forward_and_draw_feed_the_head_the_same_states(tiny_model, monkeypatch):
    """The real code paths: the generation head's input in forward() (training) and in _draw()."""
    model, proc = tiny_model.eval(), tiny_model.processor
    short, long = _conversations()
    image = render(SQUARE)
    captured = []
    hook = model.generation_head.register_forward_hook(lambda mod, args, out: captured.append((args[0], out)))
    drawn = {}

    def fake_sample(conditioning, negative, **kwargs):
        drawn.update(conditioning=conditioning, negative=negative, **kwargs)
        return [image.copy() for _ in range(conditioning.shape[0])]

    monkeypatch.setattr(model.decoder, "sample", fake_sample)
    try:
        with torch.no_grad():
            encoded = [proc.encode(short), proc.encode(long)]
            ids, mask = proc.pad([e.input_ids for e in encoded], left=False)
            labels, _ = proc.pad([e.labels for e in encoded], left=False, value=-100)
            targets = model.decoder.preprocess([render(SQUARE)] * 3)
            model(ids, mask, labels, pixel_values=proc.pixel_values([image]), target_pixels=targets,
                  generator=torch.Generator().manual_seed(0))
            replies = [Reply("", T2I), Reply("", T2I)]
            wants = [(0, _inference_sequence(proc, short)), (1, _inference_sequence(proc, long))]
            model._draw(wants, [None, image], [None, image], replies, seed=0, guidance_scale=None, steps=None, strength=1.0)
    finally:
        hook.remove()
    (train_in, train_out), (infer_in, infer_out) = captured
    assert train_in.shape[0] == 3 and infer_in.shape[0] == 2  # inference draws each row's last block
    assert torch.allclose(train_in[[0, 2]], infer_in, atol=1e-5), (train_in[[0, 2]] - infer_in).abs().max()
    assert torch.allclose(train_out[[0, 2]], infer_out, atol=1e-5)
    assert torch.equal(drawn["conditioning"], infer_out)
    # classifier-free guidance: the negative is the decoder's own embedding of ""
    assert torch.equal(drawn["negative"], model.decoder.encode_prompt([""]))
    assert drawn["steps"] == model.config.inference_steps and drawn["guidance_scale"] == model.config.guidance_scale
    assert all(r.image is not None and r.task == T2I for r in replies)


def test_cfg_negative_is_the_decoders_empty_prompt(tiny_model):
    negative = tiny_model.negative_conditioning
    assert negative.shape == (1, 77, tiny_model.decoder.cross_attention_dim)
    with torch.no_grad():
        assert torch.equal(negative, tiny_model.decoder.encode_prompt([""]))
        assert not torch.allclose(negative, tiny_model.decoder.encode_prompt(["a red circle at the center"]))
    assert "negative_conditioning" not in tiny_model.state_dict()  # rebuilt, never saved


# ---- inference ----------------------------------------------------------------------------------------------

def test_batched_left_padded_generation_equals_one_by_one(tiny_model):
    model = tiny_model.eval()
    image = render(SQUARE)
    conversations = [[user("What is 2 plus 3?")], [user("What color is the square?", has_image=True)],
                     [user("Which is larger, 4 or 7? Answer with one word please, and be brief.")]]
    images = [None, image, None]
    together = model.generate(conversations, images, max_new_tokens=6, task=I2T)
    alone = [model.generate([c], [im], max_new_tokens=6, task=I2T)[0] for c, im in zip(conversations, images)]
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.task == I2T and r.image is None for r in together)


def test_forced_image_answer_draws_an_image(tiny_model):
    model = tiny_model.eval()
    reply, = model.generate([[user("Generate an image of a blue square.")]], [None], task=T2I, max_new_tokens=3,
                            seed=1)
    assert reply.task == T2I
    assert reply.image is not None and reply.image.mode == "RGB" and reply.image.size == (32, 32)
    again, = model.generate([[user("Generate an image of a blue square.")]], [None], task=T2I, max_new_tokens=3,
                            seed=1)
    assert png(again.image) == png(reply.image)  # seeded


def test_generate_argument_errors(tiny_model):
    with pytest.raises(ValueError, match="one image"):
        tiny_model.generate([[user("hi")]], [None, None])
    with pytest.raises(ValueError, match="input image"):
        tiny_model.generate([[user("Draw a circle.")]], [None], task=T2I, max_new_tokens=1, strength=0.5)


def test_stray_img_token_in_generated_text_does_not_break_drawing(tiny_model):
    model = tiny_model.eval()
    img3 = model.processor.img_token_ids[3]
    hook = model.language_model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: out.index_fill(-1, torch.tensor([img3]), 1e4))
    try:
        reply, = model.generate([[user("Draw a red circle.")]], [None], task=T2I, max_new_tokens=1)
    finally:
        hook.remove()
    assert reply.image is not None


# ---- persistence ---------------------------------------------------------------------------------------------

def _weights_of(model: GenLlava) -> dict[str, torch.Tensor]:
    state = {f"projector.{k}": v for k, v in model.projector.state_dict().items()}
    state |= {f"generation_head.{k}": v for k, v in model.generation_head.state_dict().items()}
    state |= {f"lm.{k}": v for k, v in model.language_model.state_dict().items()}
    return state


def test_save_and_load_round_trip(tiny_model, tiny_components, tmp_path):
    model = tiny_model.eval()
    with torch.no_grad():  # make the trained parts distinctive, so a loader that ignored them is caught
        model.generation_head.queries.add_(0.5)
        model.projector[0].bias.add_(0.25)
        model.language_model.get_input_embeddings().weight[model.processor.img_token_ids[0]] += 1.0
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    loaded = GenLlava.from_pretrained(folder)
    assert not loaded.training

    ours, theirs = _weights_of(model), _weights_of(loaded)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert torch.equal(loaded.negative_conditioning, model.negative_conditioning)
    assert loaded.processor.image_seq_length == model.processor.image_seq_length
    assert loaded.processor.tokenizer.get_vocab() == model.processor.tokenizer.get_vocab()

    image = render(SQUARE)
    conversations = [[user("What is 2 plus 3?")], [user("What color is the square?", has_image=True)]]
    before = model.generate(conversations, [None, image], max_new_tokens=6)
    after = loaded.generate(conversations, [None, image], max_new_tokens=6)
    assert [(r.text, r.task) for r in before] == [(r.text, r.task) for r in after]
    drawn = [m.generate([[user("Generate an image of a red circle.")]], [None], task=T2I, max_new_tokens=2, seed=4)[0]
             for m in (model, loaded)]
    assert png(drawn[0].image) == png(drawn[1].image)


def test_saved_folder_layout(saved_tiny_model, tiny_components):
    folder = Path(saved_tiny_model)
    for name in ("config.json", "model.safetensors", "language_model/config.json", "language_model/model.safetensors",
                 "tokenizer.json", "tokenizer_config.json", "genllava_processor.json", "preprocessor_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "genllava"
    assert Path(config["decoder"]) == (tiny_components / "decoder").resolve()  # named, not copied
    assert Path(config["vision_tower"]) == (tiny_components / "vision").resolve()
    assert Path(config["vision_tower"]).is_absolute()

    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".pickle")]
    assert all(p.suffix in (".json", ".safetensors", ".txt", ".model", ".jinja") for p in files), files
    assert not (folder / "decoder").exists() and not (folder / "unet").exists() and not (folder / "vision").exists()
    frozen = [p for part in ("decoder", "vision") for p in (tiny_components / part).rglob("*.safetensors")]
    frozen_sizes = {p.stat().st_size for p in frozen}
    assert not [p for p in files if p.stat().st_size in frozen_sizes]
    largest_frozen = max(frozen_sizes)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("projector.", "generation_head.")) for k in keys)
    assert (folder / "model.safetensors").stat().st_size < largest_frozen
    with safe_open(str(folder / "language_model" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "unet" in k or "vae" in k or "vision" in k]


def test_saved_tokenizer_has_a_chat_template(saved_tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(saved_tiny_model)
    assert tokenizer.chat_template


def test_task_tokens_start_as_the_assistant_prefix_end(tiny_model):
    """[I2T]/[T2I] take the place where the pretrained LM began its answer; their input rows start
    as the row of the assistant prefix's last token, while other new rows keep the usual init."""
    proc = tiny_model.processor
    rows = tiny_model.language_model.get_input_embeddings().weight
    prefix_end = rows[proc.assistant_prefix_ids[-1]]
    for task_id in proc.task_ids.values():
        assert torch.equal(rows[task_id], prefix_end)
    assert not torch.equal(rows[proc.soi_id], prefix_end)


def test_align_loss_counts_the_caption_positions_beyond_their_share():
    from genllava.model.modeling import align_loss

    target = torch.zeros(2, 77, 8)
    words = torch.zeros(2, 77, dtype=torch.long)
    words[:, :8] = 1  # a caption of 6 tokens with its start and end
    off_words, off_padding = target.clone(), target.clone()
    off_words[:, 3] = 1.0
    off_padding[:, 40] = 1.0
    assert align_loss(off_words, target, words) > 5 * align_loss(off_padding, target, words)
    assert align_loss(target, target, words) == 0
    assert torch.isclose(align_loss(off_padding, target, words), torch.tensor(1 / 77))


def test_projector_may_take_its_own_learning_rate(tiny_model):
    groups = parameter_groups(tiny_model, TrainConfig(learning_rate=1e-4, new_modules_learning_rate=1e-3,
                                                      projector_learning_rate=5e-3))
    rates = {}
    for name, part in (("projector", tiny_model.projector), ("language_model", tiny_model.language_model),
                       ("generation_head", tiny_model.generation_head)):
        ids = {id(p) for p in part.parameters()}
        rates[name] = {g["lr"] for g in groups if {id(p) for p in g["params"]} <= ids}
    assert rates == {"projector": {5e-3}, "language_model": {1e-4}, "generation_head": {1e-3}}
