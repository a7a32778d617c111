"""Named recipes: which pretrained parts a GenLLaVA is built from, and how it trains.

`genllava-mistral-7b` is the paper's recipe (SigLIP-large/384, Mistral-7B-Instruct, SD v1.4,
AdamW lr 2e-5, wd 0.1, clip 1.0, warmup 3 % + cosine, batch 128, bf16). `shapes` is the same
architecture on the shapes world's tiny pretrained parts, which ship inside the package.
"""

from __future__ import annotations

from pathlib import Path

from .model.config import GenLlavaConfig, HeadConfig
from .train.config import TrainConfig

SHAPES_PRETRAINED = Path(__file__).parent / "shapes" / "pretrained"


def shapes() -> tuple[GenLlavaConfig, TrainConfig]:
    model = GenLlavaConfig(
        vision_tower=str(SHAPES_PRETRAINED / "vision"), language_model=str(SHAPES_PRETRAINED / "language"),
        decoder=str(SHAPES_PRETRAINED / "decoder"), max_length=256,
        head=HeadConfig(width=128, heads=4, encoder_layers=4, decoder_layers=4, num_queries=77),
        # GILL-style auxiliary target: the decoder's own embedding of the target caption. It makes
        # the head usable within a laptop-sized budget; the diffusion loss still trains it end to end.
        align_loss_weight=1.0, guidance_scale=3.0, inference_steps=20,
        # The layout is decided at high noise (see DiffusionDecoder.training_timesteps): train the
        # head's conditioning where it matters most.
        diffusion_high_noise_share=0.5,
        # The diffusion gradient through the frozen UNet is noisy; a small weight lets the head fit
        # the caption's words while the diffusion loss still trains it end to end
        # (docs/findings/2026-11-27-shapes-recipe.md).
        diffusion_loss_weight=0.1)
    # Small batches, many updates: the generation head wants steps more than samples. The new
    # projector learns fastest, the pretrained LLM slowest. The runs behind these values:
    # docs/findings/2026-11-27-shapes-recipe.md (and -seeds.md for how they vary by seed).
    train = TrainConfig(learning_rate=3e-4, new_modules_learning_rate=1e-3, projector_learning_rate=1e-2,
                        weight_decay=0.01, max_grad_norm=1.0,
                        warmup_ratio=0.03, global_batch_size=16, micro_batch_size=16, max_steps=1400, seed=0)
    return model, train


def genllava_mistral_7b() -> tuple[GenLlavaConfig, TrainConfig]:
    model = GenLlavaConfig(
        vision_tower="google/siglip-large-patch16-384", language_model="mistralai/Mistral-7B-Instruct-v0.2",
        decoder="CompVis/stable-diffusion-v1-4", max_length=2048,
        head=HeadConfig(width=512, heads=8, encoder_layers=4, decoder_layers=4, num_queries=77),
        # LLaVA's LM loss: one mean over every labelled token of the batch (docs/paper.md).
        lm_loss_reduction="token")
    train = TrainConfig(learning_rate=2e-5, weight_decay=0.1, max_grad_norm=1.0, warmup_ratio=0.03,
                        global_batch_size=128, micro_batch_size=4, max_steps=16_000, mixed_precision="auto",
                        gradient_checkpointing=True)
    return model, train


def tiny_mistral() -> tuple[GenLlavaConfig, TrainConfig]:
    """The paper's recipe on `tiny-mistral`: SigLIP, Mistral and SD v1.4 with their real classes and layouts,
    scaled down and randomly initialised (genllava.tiny), built once into a cache. For testing training
    and loading paths (multi-GPU included) on a CPU; it learns nothing useful."""
    from dataclasses import replace

    from .tiny import tiny_components

    root = tiny_components()
    model, train = genllava_mistral_7b()
    model = replace(model, vision_tower=str(root / "vision"), language_model=str(root / "language"),
                    decoder=str(root / "decoder"), max_length=256, inference_steps=2,
                    head=HeadConfig(width=32, heads=2, encoder_layers=1, decoder_layers=1, num_queries=77))
    # A learning rate high enough that four steps visibly move the loss.
    train = replace(train, learning_rate=1e-3, global_batch_size=8, micro_batch_size=2, max_steps=4)
    return model, train


PRESETS = {"shapes": shapes, "genllava-mistral-7b": genllava_mistral_7b, "tiny-mistral": tiny_mistral}


def preset(name: str) -> tuple[GenLlavaConfig, TrainConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
