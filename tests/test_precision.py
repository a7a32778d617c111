"""Precision and memory on the tiny model: inference with every part in bf16/fp16 or mixed, a
training step with the frozen parts in bf16 under autocast, gradient checkpointing that changes
nothing but memory, and every trainable module taking part in every forward (DDP, ZeRO-3/FSDP)."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch

from genllava.data import templates
from genllava.data.conversation import user
from genllava.model.modeling import GenLlava
from genllava.presets import genllava_mistral_7b
from genllava.shapes.world import Scene, Shape, render
from genllava.train.config import TrainConfig

from test_model import batch_of

T2I = templates.T2I
SQUARE = Scene((Shape("green", "square", "top right"),))
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def cpu_half_kernels_missing() -> str | None:
    """Why fp16 cannot run on this CPU, or None: the ops the tiny model uses, tried once."""
    x = torch.randn(1, 4, 8, 8, dtype=FP16)
    try:
        torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3, dtype=FP16), padding=1)
        torch.nn.functional.group_norm(x, 2)
        torch.nn.functional.layer_norm(x, (8,))
        torch.nn.functional.softmax(x @ x.transpose(-1, -2), -1)
    except RuntimeError as err:
        return f"no CPU fp16 kernels: {err}"
    return None


def floating_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.is_floating_point()}


def cast(model: GenLlava, parts: dict[str, torch.dtype]) -> GenLlava:
    for name, dtype in parts.items():
        getattr(model, name).to(dtype)
    return model


MIXES = {
    "bf16": dict(vision=BF16, projector=BF16, language_model=BF16, generation_head=BF16, decoder=BF16),
    "fp16": dict(vision=FP16, projector=FP16, language_model=FP16, generation_head=FP16, decoder=FP16),
    # The brief's mix: a bf16 LM (Mistral's checkpoint dtype) feeding an fp32 head and an fp16 decoder.
    "mixed": dict(vision=BF16, projector=FP32, language_model=BF16, generation_head=FP32, decoder=FP16),
}


# ---- inference in bf16 / fp16 / mixed ---------------------------------------------------------------

@pytest.mark.parametrize("mix", sorted(MIXES))
def test_generate_in_low_and_mixed_precision_returns_text_and_an_image(tiny_model, mix, monkeypatch):
    if "fp16" in mix or mix == "mixed":
        if (reason := cpu_half_kernels_missing()) is not None:
            pytest.skip(reason)
    model = cast(tiny_model.eval(), MIXES[mix])
    for name, dtype in MIXES[mix].items():
        assert floating_dtypes(getattr(model, name)) == {dtype}, name
    decoded = []  # NaNs would still come out as an image (clamp + byte): check the latents themselves
    decode_latents = model.decoder.decode_latents
    monkeypatch.setattr(model.decoder, "decode_latents",
                        lambda latents: decoded.append(latents) or decode_latents(latents))
    conversations = [[user("Generate an image of a blue square.")], [user("Draw this again.", has_image=True)]]
    replies = model.generate(conversations, [None, render(SQUARE)], task=T2I, max_new_tokens=3, seed=1)
    assert len(replies) == 2
    for reply in replies:
        assert isinstance(reply.text, str) and reply.task == T2I
        assert reply.image is not None and reply.image.mode == "RGB" and reply.image.size == (32, 32)
    assert len(decoded) == 1 and torch.isfinite(decoded[0]).all()
    # SDEdit encodes the starting image through the VAE in its dtype too.
    edited, = model.generate([[user("Draw this again.", has_image=True)]], [render(SQUARE)], task=T2I,
                             max_new_tokens=2, strength=0.5)
    assert edited.image is not None and torch.isfinite(decoded[-1]).all()


def test_to_dtype_casts_all_or_only_the_frozen_parts_and_keeps_rotary_frequencies(tiny_model):
    model = tiny_model
    inv_freq = {name: b.clone() for name, b in model.language_model.named_buffers() if name.endswith("inv_freq")}
    assert inv_freq  # the tiny LM is a Mistral: rotary embeddings
    model.to_dtype(BF16, frozen_only=True)
    assert floating_dtypes(model.vision) == floating_dtypes(model.decoder) == {BF16}
    for part in (model.language_model, model.projector, model.generation_head):
        assert floating_dtypes(part) == {FP32}
    model.to_dtype(BF16)
    assert floating_dtypes(model) == {BF16} and model.negative_conditioning.dtype == BF16
    buffers = dict(model.language_model.named_buffers())
    for name, value in inv_freq.items():  # as from_pretrained(dtype=bf16) leaves them: fp32, exact
        assert buffers[name].dtype == FP32 and torch.equal(buffers[name], value), name


# ---- training with frozen parts in bf16 under autocast ------------------------------------------------------

def test_train_step_under_autocast_with_frozen_parts_in_bf16(tiny_config, tiny_model):
    torch.manual_seed(0)
    model = GenLlava.build(deepcopy(tiny_config), dtype=BF16).train()
    assert floating_dtypes(model.vision) == floating_dtypes(model.decoder) == {BF16}  # loaded so, not cast after
    for part in (model.language_model, model.projector, model.generation_head):
        assert floating_dtypes(part) == {FP32}
    batch = batch_of(model)
    with torch.autocast("cpu", dtype=BF16):
        losses = model(**batch, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"lm_loss", "diffusion_loss", "align_loss", "loss"}
    assert all(v.dtype == FP32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.dtype == FP32 and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    for part in (model.projector, model.generation_head):
        assert any(p.grad.abs().sum() > 0 for p in part.parameters())
    # Same numbers as the fp32 model, up to bf16 rounding (same seed, same initial weights).
    with torch.no_grad():
        reference = tiny_model.train()(**batch_of(tiny_model), generator=torch.Generator().manual_seed(0))
    for key in ("lm_loss", "align_loss"):
        assert torch.isclose(losses[key], reference[key], rtol=0.05), (key, losses[key], reference[key])


# ---- gradient checkpointing ----------------------------------------------------------------------------------

def _saved_tensors(fn) -> tuple[int, object]:
    """How many tensors autograd keeps for backward while fn runs (checkpointed regions keep theirs
    out of sight, under their own saved-tensor hooks), and fn's result."""
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return count, result


def test_gradient_checkpointing_changes_memory_not_losses_or_gradients(tiny_model):
    model = tiny_model.train()
    batch = batch_of(model)

    def step():
        model.zero_grad(set_to_none=True)
        saved, losses = _saved_tensors(lambda: model(**batch, generator=torch.Generator().manual_seed(0)))
        losses["loss"].backward()
        return saved, {k: v.detach() for k, v in losses.items()}, {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def unet_step():  # the frozen UNet alone, in the eval mode DiffusionDecoder.train keeps it in
        assert not model.decoder.training
        unet = model.decoder.unet.config
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(2, unet.in_channels, unet.sample_size, unet.sample_size, generator=generator)
        conditioning = torch.randn(2, 77, unet.cross_attention_dim, generator=generator, requires_grad=True)
        saved, loss = _saved_tensors(lambda: model.decoder.loss(latents, conditioning, generator).sum())
        loss.backward()
        return saved, conditioning.grad

    saved, losses, grads = step()
    unet_saved, unet_grad = unet_step()
    model.enable_gradient_checkpointing()
    saved_ckpt, losses_ckpt, grads_ckpt = step()
    unet_saved_ckpt, unet_grad_ckpt = unet_step()

    assert saved_ckpt < saved / 2, (saved_ckpt, saved)
    assert unet_saved_ckpt < unet_saved / 2, (unet_saved_ckpt, unet_saved)  # effective in the frozen, eval-mode UNet
    assert losses.keys() == losses_ckpt.keys()
    for key in losses:
        assert torch.allclose(losses[key], losses_ckpt[key]), key
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert torch.allclose(grads[name], grads_ckpt[name], atol=1e-6), name
    assert torch.allclose(unet_grad, unet_grad_ckpt, atol=1e-6)

    model.disable_gradient_checkpointing()
    assert _saved_tensors(lambda: model(**batch, generator=torch.Generator().manual_seed(0)))[0] == saved


def test_gradient_checkpointing_is_a_train_setting_on_for_the_7b_recipe():
    assert TrainConfig().gradient_checkpointing is False
    assert genllava_mistral_7b()[1].gradient_checkpointing is True


# ---- every trainable module takes part in every forward ------------------------------------------------------

@pytest.mark.parametrize("tasks, idle", [(("text",), {"projector", "generation_head"}),
                                         (("understanding",), {"generation_head"}),
                                         (("generation",), {"projector"})])
def test_every_trainable_parameter_gets_a_gradient_and_the_loss_is_unchanged(tiny_model, tasks, idle):
    model = tiny_model.train()
    batch = batch_of(model, tasks)
    order = []
    for name in ("projector", "language_model", "generation_head"):
        # ZeRO-3/FSDP gather parameters in forward hooks: each module's own call must run, once, and
        # in the same order on every rank, whatever its batch holds.
        getattr(model, name).register_forward_pre_hook(lambda mod, args, name=name: order.append(name))
    losses = model(**batch, generator=torch.Generator().manual_seed(0))
    assert order == ["projector", "language_model", "generation_head"]
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    for name in idle:  # the idle module's gradients are exactly zero: it learns nothing from this batch
        assert all(not p.grad.any() for p in getattr(model, name).parameters()), name

    # The zero terms change nothing: the LM loss equals one computed straight from the LM, and the
    # total is exactly the weighted sum of the reported losses.
    with torch.no_grad():
        pixels = batch.get("pixel_values")
        embeds = model.embed(batch["input_ids"], pixels if pixels is not None and len(pixels) else None)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
        assert torch.equal(model.lm_loss(logits, batch["labels"]), losses["lm_loss"].detach())
    config = model.config
    expected = losses["lm_loss"] + config.diffusion_loss_weight * losses.get("diffusion_loss", 0.0)
    if "align_loss" in losses:
        expected = expected + config.align_loss_weight * losses["align_loss"]
    assert torch.equal(losses["loss"].detach(), expected.detach())
