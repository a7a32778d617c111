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
        # The diffusion gradient through the frozen UNet is noisy: at weight 1 it kept the head
        # from fitting the position words (align loss 0.72 after 700 steps, generation 0.46);
        # at 0.1 the align loss fell to 0.01 and generation reached 1.00. It still trains end to end.
        diffusion_loss_weight=0.1)
    # Batch 16 for 1,400 steps sees the same samples as 32 for 700 in the same time, with twice
    # the updates: generation 1.00 and editing 1.00 against 0.66 and 0.48 (same mix, one run each).
    # The projector at 1e-2: at 1e-3 the model read colour and position but not shape ("What shape is
    # at ...?" 0.39, "How many ...?" 0.41 on 200 questions); at 1e-2 those were 0.61 and 1.00 and
    # understanding went from 0.675 to 0.79, generation and editing from 0.765 and 0.71 to 1.00 (one run each,
    # seed 0). On training seed 1 it did not help (understanding 0.645 -> 0.615, editing 0.775 -> 0.555).
    train = TrainConfig(learning_rate=3e-4, new_modules_learning_rate=1e-3, projector_learning_rate=1e-2,
                        weight_decay=0.01, max_grad_norm=1.0,
                        warmup_ratio=0.03, global_batch_size=16, micro_batch_size=16, max_steps=1400, seed=0)
    return model, train


def genllava_mistral_7b() -> tuple[GenLlavaConfig, TrainConfig]:
    model = GenLlavaConfig(
        vision_tower="google/siglip-large-patch16-384", language_model="mistralai/Mistral-7B-Instruct-v0.2",
        decoder="CompVis/stable-diffusion-v1-4", max_length=2048,
        head=HeadConfig(width=512, heads=8, encoder_layers=4, decoder_layers=4, num_queries=77))
    train = TrainConfig(learning_rate=2e-5, weight_decay=0.1, max_grad_norm=1.0, warmup_ratio=0.03,
                        global_batch_size=128, micro_batch_size=4, max_steps=16_000, mixed_precision="auto")
    return model, train


PRESETS = {"shapes": shapes, "genllava-mistral-7b": genllava_mistral_7b}


def preset(name: str) -> tuple[GenLlavaConfig, TrainConfig]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
