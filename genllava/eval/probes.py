"""`genllava eval probe`: where an answer about an image gets lost on its way through the model.

For one kind of question (shapes.tasks.QUESTION_KINDS) about images of one or two shapes, it
puts the model's own accuracy beside what a linear probe reads, on held-out questions, from the
frozen tower's patches, from the projected patches, and from the LLM's hidden state at the
position that predicts the answer's first word, layer by layer. A probe far above the model's
accuracy means the answer got that far and was lost after it, or is still too faint there for
the model to use (the probe standardises each dimension, which the model cannot); a probe near
chance means it never got there.
"""

from __future__ import annotations

import random
from collections import Counter

import torch

from ..model.modeling import GenLlava
from ..model.processor import IGNORE
from ..shapes.tasks import QUESTION_KINDS, understanding
from ..train.examples import Collator, SkipReport, prepare

TRAIN_SHARE = 0.75  # of the questions, for fitting the probes; the rest are held out


def check_request(kind: str, shapes: int, samples: int = 8) -> None:
    """A one-line ValueError for a question kind, shape count or sample count the probe cannot use."""
    if kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; choose one of {list(QUESTION_KINDS)}")
    if shapes not in (1, 2):
        raise ValueError(f"the shapes world draws 1 or 2 shapes per image, not {shapes}")
    if samples < 8:
        raise ValueError(f"--samples {samples} is too few to fit and check a probe; give at least 8 (800 by default)")


def question_records(kind: str, shapes: int, count: int, seed: int) -> list[dict]:
    """`count` one-question understanding records of one kind about images of `shapes` shapes."""
    check_request(kind, shapes)
    rng, records = random.Random(seed), []
    while len(records) < count:
        record = understanding(rng, f"probe-{seed}-{len(records)}", long_answers=0.0, max_questions=1)
        if record["meta"]["question_kinds"][0] == kind and record["meta"]["image_shapes"] == shapes:
            records.append(record)
    return records


@torch.no_grad()
def answer_states(model: GenLlava, records: list[dict], batch_size: int = 100) -> dict[str, torch.Tensor]:
    """Per record: mean tower and projected patch features, the LLM's hidden states (every layer)
    at the position predicting the answer's first word, and whether the model's teacher-forced
    answer is right in every token (what greedy decoding then says)."""
    model.eval()
    examples = list(prepare(records, model.processor, SkipReport()))
    collate = Collator(model.processor, model.decoder.preprocess)
    parts: dict[str, list[torch.Tensor]] = {"tower": [], "projected": [], "llm": [], "right": []}
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        ids, labels = batch["input_ids"].to(model.device), batch["labels"].to(model.device)
        tower = model.vision(batch["pixel_values"].to(model.device))
        projected = model.projector(tower)
        embeds = model.embed_features(ids, projected)
        out = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(model.device),
                                   output_hidden_states=True)
        rows = torch.arange(len(ids), device=ids.device)
        # The first label is the task token [I2T]; the position holding it predicts the first word.
        at = (labels != IGNORE).int().argmax(1)
        parts["llm"].append(torch.stack([h[rows, at] for h in out.hidden_states], 1).float().cpu())
        parts["tower"].append(tower.mean(1).float().cpu())
        parts["projected"].append(projected.mean(1).float().cpu())
        target, predicted = labels[:, 1:], out.logits[:, :-1].argmax(-1)
        parts["right"].append(((predicted == target) | (target == IGNORE)).all(1).cpu())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def linear_probe(features: torch.Tensor, labels: list[str], train_share: float = TRAIN_SHARE, steps: int = 300,
                 lr: float = 1e-2, weight_decay: float = 1e-3) -> float:
    """Held-out accuracy of a softmax-regression probe on standardised features (full batch, Adam,
    zero start: deterministic)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    cut = int(train_share * len(labels))
    if cut < 2 or cut >= len(labels):
        raise ValueError(f"{len(labels)} samples leave no held-out part at train share {train_share}")
    x = features.float()
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-5)
    weight = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(x[:cut] @ weight + bias, y[:cut]) + weight_decay * weight.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return ((x[cut:] @ weight + bias).argmax(1) == y[cut:]).float().mean().item()


def probe_model(model: GenLlava, kind: str, shapes: int = 1, samples: int = 800, seed: int = 3) -> dict:
    check_request(kind, shapes, samples)
    records = question_records(kind, shapes, samples, seed)
    answers = [r["meta"]["answers"][0] for r in records]
    states = answer_states(model, records)
    held_out = answers[int(TRAIN_SHARE * samples):]
    return {
        "kind": kind, "shapes": shapes, "samples": samples, "seed": seed,
        "model_accuracy": states["right"].float().mean().item(),
        "chance": Counter(held_out).most_common(1)[0][1] / len(held_out),
        "probe_tower": linear_probe(states["tower"], answers),
        "probe_projected": linear_probe(states["projected"], answers),
        "probe_llm_layers": [linear_probe(states["llm"][:, layer], answers) for layer in range(states["llm"].shape[1])],
    }
