"""Pretrain the shapes world's language model: a Mistral-class causal LM trained on the world's
text, saved as a standard transformers folder with its tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerBase

from .corpus import world_text


def tiny_mistral(tokenizer: PreTrainedTokenizerBase, width: int = 256, layers: int = 4) -> MistralForCausalLM:
    return MistralForCausalLM(MistralConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def pretrain_lm(out: str | Path, tokenizer: PreTrainedTokenizerBase, *, steps: int = 800, batch: int = 32,
                lr: float = 2e-3, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = tiny_mistral(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    documents = world_text(steps * batch, seed)
    progress = tqdm(range(steps), desc="pretrain language model")
    for _ in progress:
        texts = [tokenizer.bos_token + next(documents) + tokenizer.eos_token for _ in range(batch)]
        tokens = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
        loss = model(**tokens, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"final_loss": loss.item(), "steps": steps, "batch": batch, "seed": seed}
