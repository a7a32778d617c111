"""Pretrain the shapes world's language model: a Mistral-class causal LM instruction-tuned on the
world's chats in words, saved as a standard transformers folder with its tokenizer."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerBase

from ..data import templates
from .corpus import chat_corpus, chat_in_words, reading_corpus
from .tasks import TASKS, make_eval_records

EVAL_SEED = 777  # the LM's own check; GenLLaVA's evaluation uses other seeds


def tiny_mistral(tokenizer: PreTrainedTokenizerBase, width: int = 256, layers: int = 4) -> MistralForCausalLM:
    return MistralForCausalLM(MistralConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def encode_pieces(tokenizer: PreTrainedTokenizerBase, pieces: list[str]) -> list[int]:
    """Each piece tokenized on its own, as GenLlavaProcessor does, so the ids match GenLLaVA's."""
    return [i for piece in pieces for i in tokenizer(piece, add_special_tokens=False).input_ids]


def batch_of(tokenizer: PreTrainedTokenizerBase, chats: list[list[str]], answers_only: bool = False) -> dict[str, torch.Tensor]:
    """Padded ids and labels; with `answers_only` only the assistant's answers (and their </s>)
    carry labels, so every gradient goes to what the reading stage teaches."""
    rows, labels = [], []
    for pieces in chats:
        ids, labs = [tokenizer.bos_token_id], [-100]
        for i, piece in enumerate(pieces):
            piece_ids = tokenizer(piece, add_special_tokens=False).input_ids
            answer = piece == "</s>" or (i > 0 and pieces[i - 1] == templates.ASSISTANT_PREFIX)
            ids += piece_ids
            labs += piece_ids if answer or not answers_only else [-100] * len(piece_ids)
        rows.append(ids)
        labels.append(labs)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labs = torch.full((len(rows), width), -100)
    mask = torch.zeros_like(ids)
    for r, (row, lab) in enumerate(zip(rows, labels)):
        ids[r, :len(row)], labs[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), torch.tensor(lab), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labs}


@torch.no_grad()
def score_lm(model: MistralForCausalLM, tokenizer: PreTrainedTokenizerBase, samples: int = 200,
             seed: int = EVAL_SEED) -> dict[str, float]:
    """Exact-match accuracy of the LM's last answer in each task's chats, in words, with the
    earlier turns given as the truth: what it brings to GenLLaVA before seeing a single image.

    Understanding is also split by the number of shapes in the scene: a two-shape question asks
    the LM to select one shape by an attribute and report another, the skill that bounds what
    GenLLaVA learns to read from two-shape images."""
    model.eval()
    scores = {}
    for task in TASKS:
        records = make_eval_records(task, samples, seed)
        prompts, truths = [], []
        for record in records:
            pieces = chat_in_words(record)
            cut = max(i for i, p in enumerate(pieces) if p == templates.ASSISTANT_PREFIX) + 1
            prompts.append([tokenizer.bos_token_id] + encode_pieces(tokenizer, pieces[:cut]))
            truths.append(pieces[cut].strip())
        right = []
        for start in range(0, len(prompts), 50):
            chunk = prompts[start:start + 50]
            width = max(map(len, chunk))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=24, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            right += [tokenizer.decode(row, skip_special_tokens=True).strip() == truth
                      for row, truth in zip(out[:, width:], truths[start:start + 50])]
        scores[task] = sum(right) / len(right)
        if task == "understanding":
            for count, key in ((1, "understanding_one_shape"), (2, "understanding_two_shapes")):
                chosen = [ok for ok, r in zip(right, records) if r["meta"]["image_shapes"] == count]
                scores[key] = sum(chosen) / max(len(chosen), 1)
    model.train()
    return scores


# "chats": the first stage, every token of the world's chats; "reading": a second stage from a saved
# LM, on two-shape-rich chats with the loss on the answers (corpus.READING_MIX).
CORPORA = {"chats": chat_corpus, "reading": reading_corpus}


class StepBatches:
    """Step i's batch depends only on (seed, i), so worker processes can build batches in any order
    and the run stays the same whatever their number."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, batch: int, seed: int, corpus: str = "chats"):
        self.tokenizer, self.batch, self.seed, self.corpus = tokenizer, batch, seed, corpus

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        chats = CORPORA[self.corpus](self.batch, self.seed * 1_000_003 + step)
        return batch_of(self.tokenizer, list(chats), answers_only=self.corpus == "reading")


def pretrain_lm(out: str | Path, tokenizer: PreTrainedTokenizerBase, *, steps: int = 800, batch: int = 32,
                lr: float = 2e-3, seed: int = 0, evaluate: bool = True, workers: int = 0,
                corpus: str = "chats", init_from: str | Path | None = None) -> dict:
    """Trains on the GPU when there is one; `workers` processes build the batches. `init_from`
    continues a saved LM (e.g. the first stage, for the reading stage) instead of a fresh one."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {sorted(CORPORA)}")
    # The platform's default start method (fork on Linux), before CUDA starts: spawned workers
    # re-import __main__, which a script piped to python cannot give them.
    pool = multiprocessing.Pool(workers) if workers else None
    make_batch = StepBatches(tokenizer, batch, seed, corpus)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = (MistralForCausalLM.from_pretrained(init_from) if init_from else tiny_mistral(tokenizer)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    batches = pool.imap(make_batch, range(steps), chunksize=8) if pool else map(make_batch, range(steps))
    progress = tqdm(batches, total=steps, desc="pretrain language model")
    for tensors in progress:
        loss = model(**{k: v.to(device) for k, v in tensors.items()}).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    if pool:
        pool.close()
    report = {"final_loss": loss.item(), "steps": steps, "batch": batch, "lr": lr, "seed": seed, "device": device,
              "corpus": corpus}
    if init_from:  # the stage it continues, so the shipped report tells the whole history
        earlier = Path(init_from) / "pretrain_report.json"
        report["init_from"] = json.loads(earlier.read_text()) if earlier.exists() else str(init_from)
    if evaluate:
        report["accuracy_in_words"] = score_lm(model, tokenizer)
    model.cpu().save_pretrained(out)
    tokenizer.save_pretrained(out)
    (Path(out) / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
