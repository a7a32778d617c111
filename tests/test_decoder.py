"""The frozen diffusion decoder: a loss whose target follows the scheduler's prediction_type,
gradients that reach the conditioning only, and SDEdit-style sampling."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from genllava.model.decoder import DiffusionDecoder
from genllava.shapes.world import Scene, Shape, render

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def decoder(tiny_components):
    return DiffusionDecoder.from_pretrained(str(tiny_components / "decoder")).freeze()


def with_prediction_type(decoder: DiffusionDecoder, prediction_type: str) -> DiffusionDecoder:
    scheduler = DPMSolverMultistepScheduler.from_config(decoder.scheduler.config, prediction_type=prediction_type)
    return DiffusionDecoder(decoder.unet, decoder.vae, scheduler, decoder.text_encoder, decoder.tokenizer)


def expected_targets(decoder: DiffusionDecoder, latents: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """Replays loss()'s draws (noise, then timesteps) from the same generator seed."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator)
    steps = decoder.noise_scheduler.config.num_train_timesteps
    t = torch.randint(0, steps, (latents.shape[0],), generator=generator)
    alphas = decoder.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    velocity = alphas.sqrt() * noise - (1 - alphas).sqrt() * latents  # v = sqrt(a) eps - sqrt(1-a) x0
    return {"epsilon": noise, "sample": latents, "v_prediction": velocity}


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_loss_target_follows_prediction_type(decoder, prediction_type, monkeypatch):
    decoder = with_prediction_type(decoder, prediction_type)
    assert decoder.prediction_type == prediction_type
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    conditioning = torch.zeros(3, 77, decoder.cross_attention_dim)
    targets = expected_targets(decoder, latents, seed=7)
    for answer, target in targets.items():
        monkeypatch.setattr(decoder.unet, "forward",
                            lambda sample, t, encoder_hidden_states, _target=target: SimpleNamespace(sample=_target))
        loss = decoder.loss(latents, conditioning, torch.Generator().manual_seed(7))
        assert loss.shape == (3,)
        if answer == prediction_type:
            assert loss.max() < 1e-8, (answer, loss)
        else:
            assert loss.min() > 1e-3, (answer, loss)


def test_unknown_prediction_type_is_refused(decoder, monkeypatch):
    odd = with_prediction_type(decoder, "epsilon")
    monkeypatch.setattr(DiffusionDecoder, "prediction_type", property(lambda self: "flow"))
    with pytest.raises(ValueError, match="prediction_type"):
        odd.loss(torch.zeros(1, 4, 16, 16), torch.zeros(1, 77, decoder.cross_attention_dim))


def test_the_world_decoder_predicts_clean_samples(decoder):
    assert decoder.prediction_type == "sample"  # DESIGN §3: a tiny decoder learns x0 far faster than epsilon


def test_loss_is_deterministic_for_a_generator_and_grads_reach_only_the_conditioning(decoder):
    latents = decoder.encode_images(decoder.preprocess([render(Scene((Shape("red", "circle", "center"),)))]))
    conditioning = torch.randn(1, 77, decoder.cross_attention_dim, requires_grad=True)
    a = decoder.loss(latents, conditioning, torch.Generator().manual_seed(3))
    b = decoder.loss(latents, conditioning, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    c = decoder.loss(latents, conditioning, torch.Generator().manual_seed(4))
    assert not torch.equal(a, c)
    a.mean().backward()
    assert conditioning.grad is not None and conditioning.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in decoder.parameters())


def test_images_latents_round_trip_shapes(decoder):
    image = render(Scene((Shape("blue", "square", "top left"),)), 64)  # resized to the decoder's 32
    pixels = decoder.preprocess([image, image.convert("L")])
    assert pixels.shape == (2, 3, decoder.resolution, decoder.resolution) and decoder.resolution == 32
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert torch.allclose(pixels[0, :, 0, 0], torch.ones(3))  # white corner -> +1
    with torch.no_grad():
        latents = decoder.encode_images(pixels)
        assert torch.equal(latents, decoder.encode_images(pixels))  # posterior mode, no sampling
        assert latents.shape == (2, 4, decoder.unet.config.sample_size, decoder.unet.config.sample_size)
        out = decoder.decode_latents(latents)
    assert [im.size for im in out] == [(32, 32), (32, 32)] and out[0].mode == "RGB"


def test_encode_prompt_needs_the_text_encoder(tiny_components):
    bare = DiffusionDecoder.from_pretrained(str(tiny_components / "decoder"), text_encoder=False)
    with pytest.raises(RuntimeError, match="text encoder"):
        bare.encode_prompt(["a red circle"])


def test_sdedit_strength(decoder):
    with torch.no_grad():
        conditioning = decoder.encode_prompt(["a red circle at the center"])
        negative = decoder.encode_prompt([""])
    source = decoder.preprocess([render(Scene((Shape("yellow", "triangle", "bottom right"),)))])

    def draw(**kwargs):
        images = decoder.sample(conditioning, negative, steps=4, guidance_scale=2.0,
                                generator=torch.Generator().manual_seed(0), **kwargs)
        assert len(images) == 1 and all(im.size == (32, 32) and im.mode == "RGB" for im in images)
        return [png(im) for im in images]

    full = draw()
    assert draw() == full  # deterministic for a fixed generator
    assert draw(init_images=source, strength=1.0) == full  # 1.0 regenerates from noise: the input is unused
    half = draw(init_images=source, strength=0.5)
    assert half == draw(init_images=source, strength=0.5)
    assert half != full
    light = draw(init_images=source, strength=0.25)
    assert light != half and light != full
    other_source = decoder.preprocess([render(Scene((Shape("green", "square", "top left"),)))])
    assert draw(init_images=other_source, strength=0.5) != half  # the start image matters


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.01, 2.0])
def test_strength_out_of_range_raises(decoder, strength):
    conditioning = torch.zeros(1, 77, decoder.cross_attention_dim)
    with pytest.raises(ValueError, match="strength"):
        decoder.sample(conditioning, conditioning, steps=2, strength=strength,
                       init_images=decoder.preprocess([render(Scene(()))]))


def test_guidance_uses_the_negative(decoder):
    with torch.no_grad():
        conditioning = decoder.encode_prompt(["a red circle at the center"])
        negative = decoder.encode_prompt([""])
    kwargs = dict(steps=2, guidance_scale=3.0)
    a = decoder.sample(conditioning, negative, generator=torch.Generator().manual_seed(0), **kwargs)
    b = decoder.sample(conditioning, torch.zeros_like(negative), generator=torch.Generator().manual_seed(0), **kwargs)
    assert png(a[0]) != png(b[0])


def test_training_timesteps_draw_the_requested_share_from_the_noisiest_tenth(decoder):
    total = decoder.noise_scheduler.config.num_train_timesteps
    uniform = decoder.training_timesteps(4000, torch.Generator().manual_seed(0), "cpu")
    assert uniform.min() >= 0 and uniform.max() < total
    assert abs((uniform >= total * 0.9).float().mean().item() - 0.1) < 0.02
    mixed = decoder.training_timesteps(4000, torch.Generator().manual_seed(0), "cpu", high_noise_share=0.5)
    assert abs((mixed >= total * 0.9).float().mean().item() - 0.55) < 0.03
    only_high = decoder.training_timesteps(100, torch.Generator().manual_seed(1), "cpu", high_noise_share=1.0)
    assert only_high.min() >= total * 0.9
    again = decoder.training_timesteps(4000, torch.Generator().manual_seed(0), "cpu", high_noise_share=0.5)
    assert torch.equal(mixed, again)
