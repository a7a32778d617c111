"""LoRA (peft) on the tiny GenLlava: what trains, lossless save/load, an exact merge, saving from a
gathered state dict (the ZeRO-3 path), the atomic folder write, and accelerate's save/load_state."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from genllava.cli import main
from genllava.data.conversation import user
from genllava.data.templates import T2I
from genllava.model.modeling import LANGUAGE_MODEL_DIR, WEIGHTS_NAME, GenLlava
from genllava.shapes.tasks import make_eval_records
from genllava.train.config import TrainConfig
from genllava.train.examples import Collator, SkipReport, prepare
from genllava.train.lora import ADAPTER_DIR, added_token_ids, apply_lora, is_lora, merge_lora
from genllava.train.trainer import parameter_groups

R, ALPHA = 4, 8
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def batch_of(model: GenLlava, tasks=("understanding", "generation", "editing", "text")) -> dict:
    records = [make_eval_records(task, 1, seed=5)[0] for task in tasks]
    return Collator(model.processor, model.decoder.preprocess)(list(prepare(records, model.processor, SkipReport())))


def lora_model(model: GenLlava, seed: int = 1) -> GenLlava:
    """apply_lora, then every trained tensor made distinctive: B nonzero (peft starts it at 0, where a
    loader that dropped the adapter would still match), new token rows, projector and head moved."""
    apply_lora(model, r=R, alpha=ALPHA, dropout=0.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def logits(model: GenLlava, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["pixel_values"])
        return model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits


def effective_rows(model: GenLlava) -> tuple[torch.Tensor, torch.Tensor]:
    """The input embedding and lm_head matrices as the model uses them (peft's trainable-token
    wrappers substitute their rows on the fly, so read them through the modules' forward)."""
    lm = model.language_model
    with torch.no_grad():
        embed = lm.get_input_embeddings()(torch.arange(lm.get_input_embeddings().weight.shape[0])).clone()
        head = lm.get_output_embeddings()(torch.eye(lm.config.get_text_config().hidden_size)).T.clone()
    return embed, head


def trained_tensors(model: GenLlava) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.startswith(("projector.", "generation_head.")) or "lora_" in k or "trainable_tokens_delta" in k}


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


# ---- what trains ---------------------------------------------------------------------------------------

def test_apply_lora_trains_adapters_new_rows_projector_and_head_only(tiny_model):
    model = apply_lora(tiny_model, r=R, alpha=ALPHA, dropout=0.0)
    assert is_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lm_trainable = {n for n in trainable if n.startswith("language_model.")}
    assert lm_trainable and all(("lora_A" in n or "lora_B" in n or "trainable_tokens_delta" in n) for n in lm_trainable)
    layers = model.language_model.config.num_hidden_layers
    for proj in PROJECTIONS:  # "all-linear": every projection of every layer, never lm_head
        assert sum(f".{proj}.lora_A." in n for n in lm_trainable) == layers, proj
    assert not [n for n in lm_trainable if "lm_head" in n and "lora_" in n]
    rows = [n for n in lm_trainable if "trainable_tokens_delta" in n]
    assert len(rows) == 2 and any("embed_tokens" in n for n in rows) and any("lm_head" in n for n in rows)
    assert all(p.requires_grad for part in (model.projector, model.generation_head) for p in part.parameters())
    assert not any(p.requires_grad for part in (model.vision, model.decoder) for p in part.parameters())

    listed = {id(p) for ps in model.trainable_parameters().values() for p in ps}
    assert listed == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in parameter_groups(model, TrainConfig()) for p in g["params"]} == listed

    # One optimizer step at lr > 0: the base LM and the old token rows stay, the new rows move.
    frozen_before = {n: p.clone() for n, p in model.language_model.named_parameters() if not p.requires_grad}
    embed_before, head_before = effective_rows(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model(**batch_of(model), generator=torch.Generator().manual_seed(0))["loss"].backward()
    optimizer.step()
    for name, p in model.language_model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[name]), name
    embed_after, head_after = effective_rows(model)
    proc = model.processor
    new = torch.tensor(added_token_ids(proc))
    old = torch.ones(embed_before.shape[0], dtype=torch.bool)
    old[new] = False
    assert torch.equal(embed_after[old], embed_before[old]) and torch.equal(head_after[old], head_before[old])
    learned_inputs = [t for t in new.tolist() if t != proc.image_token_id]  # <image> rows are replaced by patches
    assert all(not torch.equal(embed_after[t], embed_before[t]) for t in learned_inputs)
    assert torch.equal(embed_after[proc.image_token_id], embed_before[proc.image_token_id])
    assert all(not torch.equal(head_after[t], head_before[t]) for t in new.tolist())
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero and has learned


# ---- persistence ------------------------------------------------------------------------------------------

def test_lora_save_and_load_round_trip(tiny_model, tiny_config, tmp_path):
    model = lora_model(tiny_model).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)

    assert (folder / ADAPTER_DIR / "adapter_config.json").is_file()
    assert not (folder / LANGUAGE_MODEL_DIR).exists()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert all(p.suffix in (".json", ".safetensors", ".txt", ".model", ".jinja") for p in files), files
    assert json.loads((folder / "config.json").read_text())["language_model"] == tiny_config.language_model
    adapter = tensors_of(folder / ADAPTER_DIR / "adapter_model.safetensors")
    vocab = len(model.processor.tokenizer)
    assert not [k for k, v in adapter.items() if v.shape[0] == vocab]  # no full embedding matrix
    assert sum("lora_A" in k for k in adapter) == len(PROJECTIONS) * model.language_model.config.num_hidden_layers
    rows = {k: v for k, v in adapter.items() if "trainable_tokens_delta" in k}
    assert len(rows) == 2 and all(v.shape[0] == len(added_token_ids(model.processor)) for v in rows.values())
    assert set(tensors_of(folder / WEIGHTS_NAME)) == {k for k in model.state_dict()
                                                      if k.startswith(("projector.", "generation_head."))}

    loaded = GenLlava.from_pretrained(folder)
    assert is_lora(loaded) and not loaded.training
    assert not any(p.requires_grad for p in loaded.language_model.parameters())  # inference: adapter frozen
    ours, theirs = trained_tensors(model), trained_tensors(loaded)
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    for a, b in zip(effective_rows(model), effective_rows(loaded)):
        assert torch.equal(a, b)
    batch = batch_of(model)
    assert torch.equal(logits(model, batch), logits(loaded, batch))
    conversation = [[user("Generate an image of a red circle.")]]
    drawn = [m.generate(conversation, [None], task=T2I, max_new_tokens=3, seed=4)[0] for m in (model, loaded)]
    assert drawn[0].text == drawn[1].text and drawn[0].image.tobytes() == drawn[1].image.tobytes()

    again = GenLlava.from_pretrained(folder, is_trainable=True)  # to go on training it
    assert {n for n, p in again.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad}


def test_merge_lora_folds_the_adapter_exactly(tiny_model, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model = lora_model(tiny_model).eval()
    src, dst = tmp_path / "lora", tmp_path / "merged"
    model.save_pretrained(src)
    assert main(["merge-lora", "--model", str(src), "--out", str(dst)]) == 0
    assert str(dst) in capsys.readouterr().out
    assert (dst / LANGUAGE_MODEL_DIR / "model.safetensors").is_file() and not (dst / ADAPTER_DIR).exists()

    merged = GenLlava.from_pretrained(dst)
    assert not is_lora(merged)
    assert not any(type(m).__module__.startswith("peft") for m in merged.modules())

    # One layer by hand: W + B @ A * alpha / r, from the base LM's weight and the saved adapter.
    base = AutoModelForCausalLM.from_pretrained(model.config.language_model)
    adapter = tensors_of(src / ADAPTER_DIR / "adapter_model.safetensors")
    a = next(v for k, v in adapter.items() if "layers.1.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in adapter.items() if "layers.1.self_attn.q_proj.lora_B" in k)
    w = base.model.layers[1].self_attn.q_proj.weight.detach()
    expected = w + b @ a * (ALPHA / R)
    got = merged.language_model.model.layers[1].self_attn.q_proj.weight.detach()
    assert not torch.allclose(got, w)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    # Token rows: the new ones are the trained rows, the old ones the base LM's.
    new = added_token_ids(model.processor)
    embed, head = effective_rows(model)
    merged_embed = merged.language_model.get_input_embeddings().weight.detach()
    merged_head = merged.language_model.get_output_embeddings().weight.detach()
    assert torch.equal(merged_embed[new], embed[new]) and torch.equal(merged_head[new], head[new])
    old = base.get_input_embeddings().weight.shape[0]
    assert torch.equal(merged_embed[:old], base.get_input_embeddings().weight[:old])

    batch = batch_of(model)
    assert torch.allclose(logits(model, batch), logits(merged, batch), atol=1e-4)
    assert torch.equal(merged.projector[0].weight, model.projector[0].weight)

    assert main(["merge-lora", "--model", str(dst), "--out", str(tmp_path / "again")]) == 2  # not a LoRA folder
    assert "no LoRA adapter" in capsys.readouterr().err


def _folder_contents(folder: Path) -> dict[str, object]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = str(path.relative_to(folder))
        out[key] = tensors_of(path) if path.suffix == ".safetensors" else path.read_bytes()
    return out


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_save_from_a_gathered_state_dict_writes_the_same_folder(tiny_model, tmp_path, lora):
    model = lora_model(tiny_model) if lora else tiny_model
    reference = tmp_path / "reference"
    model.save_pretrained(reference)
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(k.startswith("vision.") for k in gathered) and any(k.startswith("decoder.") for k in gathered)
    # As under ZeRO-3: the module's own trained parameters are empty shards; only the gathered dict is whole.
    for part in (model.language_model, model.projector, model.generation_head):
        for p in part.parameters():
            p.data = torch.empty(0, dtype=p.dtype)
    folder = tmp_path / "from_state_dict"
    model.save_pretrained(folder, state_dict=gathered)

    ours, theirs = _folder_contents(reference), _folder_contents(folder)
    assert ours.keys() == theirs.keys()
    for name in ours:
        if name.endswith(".safetensors"):
            assert ours[name].keys() == theirs[name].keys(), name
            for key in ours[name]:
                assert torch.equal(ours[name][key], theirs[name][key]), (name, key)
        else:
            assert ours[name] == theirs[name], name
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            assert not [k for k in f.keys() if k.startswith(("vision.", "decoder.")) or "unet" in k or "vae" in k]
    assert not model.save_pretrained(tmp_path / "other_rank", state_dict=gathered, is_main_process=False)
    assert not (tmp_path / "other_rank").exists() and not (tmp_path / "other_rank.partial").exists()


def test_save_is_atomic(tiny_model, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    tiny_model.save_pretrained(folder)
    before = _folder_contents(folder)
    with torch.no_grad():
        tiny_model.projector[0].bias.add_(1.0)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tiny_model.processor, "save_pretrained", fail)  # the last file of the folder
    with pytest.raises(RuntimeError, match="disk full"):
        tiny_model.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no model.partial, no model.old
    after = _folder_contents(folder)
    assert after.keys() == before.keys()
    assert torch.equal(after[WEIGHTS_NAME]["projector.0.bias"], before[WEIGHTS_NAME]["projector.0.bias"])

    monkeypatch.undo()
    (tmp_path / "model.partial").mkdir()  # left by a killed save
    tiny_model.save_pretrained(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert torch.equal(tensors_of(folder / WEIGHTS_NAME)["projector.0.bias"], tiny_model.projector[0].bias)


# ---- resuming with accelerate -------------------------------------------------------------------------------

def test_accelerate_save_and_load_state_round_trips_a_lora_model(tiny_model, tiny_config, tmp_path):
    from accelerate import Accelerator

    batch = batch_of(tiny_model, ("generation", "text"))

    def prepared(model):  # one Accelerator per run, as the trainer has: it saves what it prepared
        accelerator = Accelerator(cpu=True)
        optimizer = torch.optim.AdamW(parameter_groups(model, TrainConfig()), lr=1e-3)
        return accelerator, *accelerator.prepare(model.train(), optimizer)

    def step(accelerator, model, optimizer):
        accelerator.backward(model(**batch, generator=torch.Generator().manual_seed(0))["loss"])
        optimizer.step()
        optimizer.zero_grad()

    first = prepared(lora_model(tiny_model))
    step(*first)
    first[0].save_state(str(tmp_path / "state"))
    assert (tmp_path / "state" / "model.safetensors").is_file()
    torch.manual_seed(7)  # the second model starts elsewhere: fresh head, projector, adapters
    second = prepared(lora_model(GenLlava.build(deepcopy(tiny_config)), seed=2))
    assert not torch.equal(first[1].projector[0].weight, second[1].projector[0].weight)
    second[0].load_state(str(tmp_path / "state"))
    ours, theirs = trained_tensors(first[1]), trained_tensors(second[1])
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    step(*first)
    step(*second)  # the optimizer's moments came back too: the next step is the same
    ours, theirs = trained_tensors(first[1]), trained_tensors(second[1])
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    batch_logits = [logits(run[1].eval(), batch) for run in (first, second)]
    assert torch.equal(*batch_logits)
