"""Pretrain the shapes world's text-to-image decoder: the world's stand-in for Stable Diffusion.

Stage 1 trains a small AutoencoderKL on world images; stage 2 trains a CLIP-class text encoder
and a UNet2DConditionModel on its latents (10 % empty captions, so classifier-free guidance has
an unconditional branch). The result is saved in Stable Diffusion's folder layout and loaded
back with `DiffusionDecoder.from_pretrained`, the same call that loads CompVis/stable-diffusion-v1-4.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from ..model.decoder import DiffusionDecoder
from .detector import matches
from .world import COLORS, IMAGE_SIZE, POSITIONS, SHAPES, Scene, Shape, random_scene, random_shape, render


def tiny_vae(image_size: int = IMAGE_SIZE) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                         sample_size=image_size, mid_block_add_attention=False)


def tiny_unet(latent_size: int, cross_attention_dim: int = 64) -> UNet2DConditionModel:
    # No attention at the highest resolution: on a CPU it costs several times the rest. The
    # 2x2 bottom level is where "top left" becomes a place: each cell sees the border differently.
    return UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(64, 128, 128, 128),
                                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
                                up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=16)


def tiny_text_encoder(tokenizer: PreTrainedTokenizerBase, width: int = 64) -> CLIPTextModel:
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    return CLIPTextModel(config)


def world_scheduler() -> DPMSolverMultistepScheduler:
    # SD v1's noise schedule, rescaled to zero terminal SNR and sampled from the last timestep
    # ("trailing"): sampling starts from pure noise, as training's last step does, so the layout
    # must come from the text. A tiny decoder learns clean-sample prediction far faster than epsilon.
    return DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type="sample",
                                       rescale_betas_zero_snr=True, timestep_spacing="trailing")


def _images(decoder: DiffusionDecoder, scenes: list[Scene]) -> torch.Tensor:
    return decoder.preprocess([render(s, decoder.resolution) for s in scenes])


def train_vae(vae: AutoencoderKL, steps: int, batch: int, seed: int) -> None:
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    probe = DiffusionDecoder(tiny_unet(8), vae, world_scheduler())
    for _ in tqdm(range(steps), desc="pretrain decoder: autoencoder"):
        pixels = _images(probe, [random_scene(rng) for _ in range(batch)])
        posterior = vae.encode(pixels).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(posterior.sample()).sample, pixels) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        latents = vae.encode(_images(probe, [random_scene(rng) for _ in range(256)])).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))


def one_shape_scenes() -> list[Scene]:
    return [Scene((Shape(c, s, p),)) for c, s, p in itertools.product(COLORS, SHAPES, POSITIONS)]


@torch.no_grad()
def evaluate_decoder(decoder: DiffusionDecoder, seed: int = 0, steps: int = 20, guidance_scale: float = 3.0) -> float:
    """Fraction of all one-shape captions the decoder draws correctly from its own text encoder:
    the ceiling that GenLLaVA's generation head can reach through this decoder."""
    scenes = one_shape_scenes()
    conditioning = decoder.encode_prompt([s.caption() for s in scenes])
    negative = decoder.encode_prompt([""])
    images = decoder.sample(conditioning, negative, steps=steps, guidance_scale=guidance_scale,
                            generator=torch.Generator().manual_seed(seed))
    return sum(matches(im, s) for im, s in zip(images, scenes)) / len(scenes)


def pretrain_decoder(out: str | Path, tokenizer: PreTrainedTokenizerBase, *, vae_steps: int = 600,
                     unet_steps: int = 3000, batch: int = 32, lr: float = 1e-3, seed: int = 0,
                     evaluate: bool = True, init_from: str | Path | None = None) -> dict:
    """Trains from scratch, or continues a decoder saved earlier (init_from: its autoencoder is kept)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    if init_from is not None:
        decoder = DiffusionDecoder.from_pretrained(str(init_from))
        vae_steps = 0
    else:
        vae = tiny_vae()
        train_vae(vae, vae_steps, batch, seed)
        latent_size = IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1)
        decoder = DiffusionDecoder(tiny_unet(latent_size), vae, world_scheduler(), tiny_text_encoder(tokenizer), tokenizer)
    decoder.vae.requires_grad_(False)
    params = [*decoder.unet.parameters(), *decoder.text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(unet_steps, 1), pct_start=0.05)
    generator = torch.Generator().manual_seed(seed)
    progress = tqdm(range(unet_steps), desc="pretrain decoder: text-to-image")
    for _ in progress:
        scenes = [Scene((random_shape(rng),)) for _ in range(batch)]
        captions = ["" if rng.random() < 0.1 else s.caption() for s in scenes]
        with torch.no_grad():
            latents = decoder.encode_images(_images(decoder, scenes))
        loss = decoder.loss(latents, decoder.encode_prompt(captions), generator, high_noise_share=0.5).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    decoder.freeze()
    accuracy = evaluate_decoder(decoder, seed) if evaluate else None
    save_decoder(decoder, out)
    report = {"accuracy_own_text_encoder": accuracy, "vae_steps": vae_steps, "unet_steps": unet_steps,
              "batch": batch, "lr": lr, "seed": seed, "init_from": None if init_from is None else str(init_from)}
    (Path(out) / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    return report


def save_decoder(decoder: DiffusionDecoder, out: str | Path) -> None:
    out = Path(out)
    # Stored in half precision to keep the shipped files small; diffusers loads them as float32.
    decoder.unet.to(torch.float16).save_pretrained(out / "unet")
    decoder.unet.to(torch.float32)
    decoder.vae.save_pretrained(out / "vae")
    decoder.scheduler.save_pretrained(out / "scheduler")
    decoder.text_encoder.save_pretrained(out / "text_encoder")
    decoder.tokenizer.save_pretrained(out / "tokenizer")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
