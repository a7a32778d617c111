"""Pretrain the shapes world's vision tower: a SigLIP model trained with its sigmoid loss on the
world's image-caption pairs, saved as a standard SigLIP folder with its image processor."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, SiglipConfig, SiglipImageProcessor, SiglipModel

from .world import IMAGE_SIZE, random_scene, render


def tiny_siglip(tokenizer: PreTrainedTokenizerBase, image_size: int = IMAGE_SIZE) -> SiglipModel:
    return SiglipModel(SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=128, intermediate_size=256,
                           num_hidden_layers=4, num_attention_heads=4)))


def image_processor(image_size: int = IMAGE_SIZE) -> SiglipImageProcessor:
    return SiglipImageProcessor(size={"height": image_size, "width": image_size})


def _batch(scenes, processor, tokenizer):
    pixels = processor([render(s) for s in scenes], return_tensors="pt").pixel_values
    text = tokenizer([s.caption() for s in scenes], padding="max_length", max_length=32, truncation=True,
                     return_tensors="pt")
    return pixels, text.input_ids


@torch.no_grad()
def retrieval_accuracy(model: SiglipModel, processor, tokenizer, seed: int = 99, count: int = 64) -> float:
    """Image-to-caption top-1 over `count` fresh scenes (a caption shared by two scenes counts as right)."""
    scenes = [random_scene(random.Random(seed + i)) for i in range(count)]
    pixels, ids = _batch(scenes, processor, tokenizer)
    best = model(input_ids=ids, pixel_values=pixels).logits_per_image.argmax(-1).tolist()
    return sum(scenes[j].caption() == scenes[i].caption() for i, j in enumerate(best)) / count


def pretrain_vision(out: str | Path, tokenizer: PreTrainedTokenizerBase, *, steps: int = 1500, batch: int = 64,
                    lr: float = 5e-4, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, processor = tiny_siglip(tokenizer), image_processor()
    # transformers zero-initialises the logit scale and bias (temperature 1, no bias): the sigmoid loss
    # then cannot separate pairs for thousands of steps. SigLIP's paper starts at temperature 10 and a
    # bias that makes the many negatives cheap; with a small batch that bias is -log(batch).
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-math.log(batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    progress = tqdm(range(steps), desc="pretrain vision tower (sigmoid loss)")
    for _ in progress:
        pixels, ids = _batch([random_scene(rng) for _ in range(batch)], processor, tokenizer)
        loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {"final_loss": loss.item(), "retrieval_accuracy": retrieval_accuracy(model, processor, tokenizer),
              "steps": steps, "batch": batch, "lr": lr, "seed": seed}
    (Path(out) / "pretrain_report.json").write_text(json.dumps(report, indent=2))
    return report
