"""The frozen image decoder: a Stable-Diffusion-layout folder (unet/, vae/, scheduler/, text_encoder/,
tokenizer/) loaded through diffusers and transformers, exactly as CompVis/stable-diffusion-v1-4 is.

The decoder never trains inside GenLLaVA: its weights are frozen, but gradients flow through the
UNet's activations into the conditioning that the generation head produces.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, CLIPTextModel

from ..data.images import to_rgb


class DiffusionDecoder(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler, text_encoder=None, tokenizer=None):
        super().__init__()
        self.unet, self.vae = unet, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.scheduler = scheduler  # sampling (DPM-Solver by default)
        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)  # the training noise schedule

    @classmethod
    def from_pretrained(cls, path: str, text_encoder: bool = True, dtype: torch.dtype | None = None,
                        **kwargs) -> "DiffusionDecoder":
        """`dtype` loads the weights in that dtype (e.g. torch.bfloat16, half the memory). diffusers'
        models take it as `torch_dtype` (its `dtype` alias is newer than diffusers 0.35), transformers 5's
        text encoder as `dtype` (`torch_dtype` is deprecated there); the scheduler and tokenizer take neither."""
        weights = {} if dtype is None else {"torch_dtype": dtype}
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **weights, **kwargs)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **weights, **kwargs)
        scheduler = DPMSolverMultistepScheduler.from_pretrained(path, subfolder="scheduler", **kwargs)
        encoder = tokenizer = None
        if text_encoder:
            encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                    **({} if dtype is None else {"dtype": dtype}), **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **kwargs)
        return cls(unet, vae, scheduler, encoder, tokenizer)

    def freeze(self) -> "DiffusionDecoder":
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> "DiffusionDecoder":
        # Once frozen, always in eval mode, even when the model around it trains.
        return super().train(mode and not getattr(self, "frozen", False))

    @property
    def cross_attention_dim(self) -> int:
        return self.unet.config.cross_attention_dim

    @property
    def resolution(self) -> int:
        return self.vae.config.sample_size

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    # ---- images <-> latents -------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        size = self.resolution
        arrays = [np.asarray(to_rgb(im).resize((size, size), Image.BICUBIC), dtype=np.float32) for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        # The posterior mode, not a sample: the same image always gives the same latent.
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> list[Image.Image]:
        pixels = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(p) for p in pixels]

    # ---- text conditioning (the decoder's own, as SD has CLIP's) ----------------------------
    def _tokens(self, prompts: list[str]):
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        if self.text_encoder is None:
            raise RuntimeError("this decoder was loaded without its text encoder")
        device = self.text_encoder.device
        return self.text_encoder(self._tokens(prompts).input_ids.to(device)).last_hidden_state

    def prompt_word_mask(self, prompts: list[str]) -> torch.Tensor:
        """(batch, L): 1 at the positions of the prompt's own tokens (with its start and end), 0 at padding."""
        return self._tokens(prompts).attention_mask

    # ---- training objective ------------------------------------------------------------------
    def training_timesteps(self, batch: int, generator: torch.Generator | None, device,
                           high_noise_share: float = 0.0) -> torch.Tensor:
        """Uniform timesteps, except that `high_noise_share` of them come from the noisiest tenth.

        Where things go in the image is decided there: at lower noise a small latent still shows
        it, so under uniform sampling a UNet learns to read the layout from the noise rather than
        from its conditioning (docs/findings/2026-11-26-shapes-pretraining.md). 0 keeps SD's
        uniform sampling.
        """
        total = self.noise_scheduler.config.num_train_timesteps
        uniform = torch.randint(0, total, (batch,), generator=generator, device=device)
        if high_noise_share <= 0:
            return uniform
        high = torch.randint(total - total // 10, total, (batch,), generator=generator, device=device)
        pick = torch.rand(batch, generator=generator, device=device) < high_noise_share
        return torch.where(pick, high, uniform)

    def loss(self, latents: torch.Tensor, conditioning: torch.Tensor, generator: torch.Generator | None = None,
             high_noise_share: float = 0.0) -> torch.Tensor:
        """Per-sample diffusion loss; its target follows the scheduler's prediction_type."""
        # Noise, noising and target in fp32 whatever the VAE/UNet hold (as diffusers' training scripts);
        # only the UNet's inputs are cast to its dtype. A no-op for an fp32 decoder.
        latents = latents.float()
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        t = self.training_timesteps(latents.shape[0], generator, latents.device, high_noise_share)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "sample":
            target = latents
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")
        dtype = self.unet.dtype
        predicted = self.unet(noisy.to(dtype), t, encoder_hidden_states=conditioning.to(dtype)).sample
        return F.mse_loss(predicted.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    # ---- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, conditioning: torch.Tensor, negative: torch.Tensor, *, steps: int = 20,
               guidance_scale: float = 3.0, generator: torch.Generator | list[torch.Generator] | None = None,
               init_images: torch.Tensor | None = None, strength: float = 1.0) -> list[Image.Image]:
        """Classifier-free-guided sampling. With init_images and strength in (0, 1) it is SDEdit: start
        from the input's latent noised to `strength` of the schedule; 1 regenerates from noise.

        A decoder that predicts the clean sample (prediction_type "sample", as the shapes world's)
        redraws whatever its conditioning describes at every noise level, even from the clean input,
        so a later start alone keeps nothing of it (measured: 0.3 and 1.0 give the same image). There
        each step's clean-image estimate also keeps (1 - strength) of the input's latent, so lower
        strength keeps more of the input, smoothly. epsilon and v models keep it by construction."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        batch, device = conditioning.shape[0], conditioning.device
        scheduler = DPMSolverMultistepScheduler.from_config(self.scheduler.config)  # fresh state per call
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        size = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, size, size)
        # The latents and the scheduler's step stay fp32 (DPM-Solver upcasts its sample to fp32 anyway);
        # the UNet's inputs are cast to its dtype and its output back. A no-op for an fp32 decoder.
        unet_dtype = self.unet.dtype
        if isinstance(generator, (list, tuple)):  # one generator per row: its noise whatever shares the batch
            latents = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=torch.float32)
                                 for g in generator])
        else:
            latents = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
        init = None
        if init_images is not None and strength < 1.0:
            start = min(int(round(steps * (1.0 - strength))), steps - 1)
            timesteps = timesteps[start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
            init = self.encode_images(init_images.to(device)).float()
            latents = scheduler.add_noise(init, latents, timesteps[:1].repeat(batch))
        else:
            latents = latents * scheduler.init_noise_sigma
        both = torch.cat([negative.expand(batch, -1, -1).to(unet_dtype), conditioning.to(unet_dtype)])
        for t in timesteps:
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t).to(unet_dtype)
            uncond, cond = self.unet(model_input, t, encoder_hidden_states=both).sample.float().chunk(2)
            guided = uncond + guidance_scale * (cond - uncond)
            if init is not None and scheduler.config.prediction_type == "sample":
                guided = init + strength * (guided - init)  # keeps (1 - strength) of the input
            latents = scheduler.step(guided, t, latents).prev_sample
        return self.decode_latents(latents)
