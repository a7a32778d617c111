"""`genllava train` under every engine, as a user launches it: `accelerate launch --config_file
configs/accelerate/<engine>.yaml -m genllava train ...`, 2 processes on the gloo backend (DeepSpeed
with DS_ACCELERATOR=cpu), on the real-classes tiny preset and a built mixture.

Each engine's loss curve, step count and learning rates must equal a single-process run with the
same global batch; a run killed with SIGKILL and resumed must reach an uninterrupted run's weights,
bit for bit (single process, DDP and ZeRO-3 alike: the checkpoint holds the engine's exact state and
the batch plan starts at the step, so nothing differs between the two runs' arithmetic).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "data"))
from native_fixtures import write_config, write_fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
# Engines sum gradients over processes, then over accumulation passes, in another order than one
# process accumulating them all; in fp32 the losses agree to about 1e-7 relative after 3 steps.
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "GENLLAVA_CACHE": str(cache), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    from genllava.data.build import build_mixture

    root = tmp_path_factory.mktemp("engine-mixture")
    sources, _ = write_fixtures(root / "src")
    build_mixture(write_config(root / "mix.yaml", sources, shard_size=8, chunk_size=6), root / "out")
    return root / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(engine: str | None, mixture: Path, out: Path, *extra: str) -> list[str]:
    train = ["-m", "genllava", "train", "--preset", "tiny-mistral", "--data", str(mixture), "--out", str(out), *extra]
    if engine is None:
        return [sys.executable, *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "configs" / "accelerate" / f"{engine}.yaml"),
            "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()), *train]


def run(engine, mixture, out, env, *extra) -> dict:
    done = subprocess.run(command(engine, mixture, out, *extra), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {"stdout": done.stdout, "stderr": done.stderr}


def history(out: Path) -> list[dict]:
    newest = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    return json.loads((newest / "trainer_state.json").read_text())["history"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(folder / "model.safetensors"))
    for name in sorted((folder / "language_model").glob("*.safetensors")):
        tensors |= {f"language_model.{k}": v for k, v in load_file(str(name)).items()}
    return tensors


def expected_learning_rates(train_config, steps: int) -> list[float]:
    """transformers' warmup + cosine, written out: the rate each optimizer step uses."""
    warmup = math.ceil(train_config.warmup_ratio * train_config.max_steps)
    rates = []
    for step in range(steps):
        if step < warmup:
            factor = step / max(1, warmup)
        else:
            progress = (step - warmup) / max(1, train_config.max_steps - warmup)
            factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        rates.append(train_config.learning_rate * factor)
    return rates


@pytest.fixture(scope="module")
def single(mixture, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    logs = run(None, mixture, out, env, "--steps", str(STEPS))
    return {"out": out, "history": history(out), **logs}


@pytest.mark.parametrize("engine", ["ddp", "deepspeed_zero3", "fsdp2"])
def test_engine_matches_a_single_process_run(engine, single, mixture, env, tmp_path):
    from genllava.presets import preset

    out = tmp_path / engine
    logs = run(engine, mixture, out, env, "--steps", str(STEPS))
    first = logs["stdout"] + logs["stderr"]
    name = {"ddp": "ddp", "deepspeed_zero3": "deepspeed-zero3", "fsdp2": "fsdp2"}[engine]
    assert f"engine: {name}; processes: 2; batch: 2 per device x 2 accumulation x 2 devices = global batch 8" in first

    got, want = history(out), single["history"]
    assert [h["step"] for h in got] == list(range(1, STEPS + 1))  # optimizer steps, not micro-batches
    _, train_config = preset("tiny-mistral")
    train_config.max_steps = STEPS  # --steps sets the schedule's length
    assert [h["lr"] for h in got] == pytest.approx(expected_learning_rates(train_config, STEPS), rel=1e-12)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL), (engine, a["step"], key)

    # The consolidated model folder (gathered from the shards) holds the single-process run's weights.
    # atol 1e-5: an attention key bias gets only float noise as gradient (softmax ignores it), which
    # Adam's normalisation turns into steps of a few 1e-6 that differ between summation orders.
    mine, theirs = weights(out / "model"), weights(single["out"] / "model")
    assert mine.keys() == theirs.keys()
    for key in theirs:
        assert torch.allclose(mine[key].float(), theirs[key].float(), rtol=1e-4, atol=1e-5), key


def test_ddp_trains_micro_batches_without_image_answers_or_input_images(mixture, env, tmp_path):
    """Runs DDP for as many steps as it takes the batch plan to give some rank a micro-batch with no
    image answer and one with no input image: the batches DDP refuses when a trainable module is
    left out of the graph."""
    from genllava.model.modeling import GenLlava
    from genllava.presets import preset
    from genllava.train.batches import BatchPlan, MicroBatches, MixtureExamples

    os.environ["GENLLAVA_CACHE"] = env["GENLLAVA_CACHE"]
    model_config, train_config = preset("tiny-mistral")
    source = MixtureExamples(mixture, GenLlava.build(model_config).processor)
    plan = BatchPlan(source, train_config.global_batch_size, train_config.micro_batch_size, 2, 0,
                     train_config.group_by_modality_length)
    seen, steps = set(), 0
    while seen != {"no image answer", "no input image"}:
        assert steps < 40, seen
        for rank in range(2):
            batches = MicroBatches(plan, lambda examples: {"examples": examples}, rank)
            for k in range(steps * plan.accumulation, (steps + 1) * plan.accumulation):
                examples = batches[k]["examples"]
                if not any(e.targets for e in examples):
                    seen.add("no image answer")
                if all(e.image is None for e in examples):
                    seen.add("no input image")
        steps += 1
    out = tmp_path / "ddp"
    run("ddp", mixture, out, env, "--steps", str(steps))
    assert len(history(out)) == steps and all(math.isfinite(h["loss"]) for h in history(out))


@pytest.mark.parametrize("engine", [None, "ddp", "deepspeed_zero3"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(engine, mixture, env, tmp_path):
    steps = ["--steps", "8", "--save-every", "2", "--keep", "2"]
    straight = tmp_path / "straight"
    run(engine, mixture, straight, env, *steps)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(engine, mixture, killed, *steps), env=env, cwd=ROOT, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-2" / "trainer_state.json").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    left = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert "step-8" not in left and not (killed / "model").exists(), left  # killed mid-training

    resumed = run(engine, mixture, killed, env, *steps, "--resume", "latest")
    assert "resumed from" in resumed["stdout"] + resumed["stderr"]
    assert [h["step"] for h in history(killed)] == list(range(1, 9))
    assert history(killed) == history(straight)
    mine, theirs = weights(killed / "model"), weights(straight / "model")
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key
    kept = sorted(p.name for p in (killed / "checkpoints").iterdir())
    assert kept == ["step-6", "step-8"]  # --keep 2


def test_the_zero3_model_folder_loads_on_one_process_and_chats_draws_and_edits(mixture, env, tmp_path):
    from PIL import Image

    from genllava.data.templates import T2I
    from genllava.data.conversation import Message, USER
    from genllava.model.modeling import GenLlava

    out = tmp_path / "zero3"
    run("deepspeed_zero3", mixture, out, env, "--steps", "2")
    model = GenLlava.from_pretrained(out / "model")
    picture = Image.new("RGB", (48, 48), (200, 30, 30))
    text, drawn, edited = model.generate(
        [[Message(USER, "What colour is it?", has_image=True)], [Message(USER, "Draw a red square.")],
         [Message(USER, "Make it blue.", has_image=True)]], [picture, None, picture], max_new_tokens=4)
    assert isinstance(text.text, str)
    forced = model.generate([[Message(USER, "Draw a red square.")], [Message(USER, "Make it blue.", has_image=True)]],
                            [None, picture], task=T2I, max_new_tokens=4)
    assert all(r.image is not None and r.image.size[0] > 0 for r in forced)


def test_real_presets_require_data_before_anything_loads(capsys):
    from genllava.cli import main

    assert main(["train", "--preset", "genllava-mistral-7b", "--out", "/tmp/never"]) == 2
    assert "give --data" in capsys.readouterr().err


def build_tiny(env, lora: bool = False):
    from copy import deepcopy

    from genllava.model.modeling import GenLlava
    from genllava.presets import preset
    from genllava.train.lora import apply_lora

    os.environ["GENLLAVA_CACHE"] = env["GENLLAVA_CACHE"]
    model_config, train_config = preset("tiny-mistral")
    torch.manual_seed(0)
    model = GenLlava.build(deepcopy(model_config))
    model.language_model.float()
    if lora:
        apply_lora(model, r=4, alpha=8)  # LoRA dropout draws from the global RNG: resuming must restore it
    return model, train_config


def test_a_lora_run_resumes_exactly(mixture, env, tmp_path):
    from genllava.train.batches import MixtureExamples
    from genllava.train.trainer import train

    quiet = lambda line: None  # noqa: E731
    straight, config = build_tiny(env, lora=True)
    config.max_steps = 4
    expected = train(straight, MixtureExamples(mixture, straight.processor), config, tmp_path / "straight", log=quiet)

    first, _ = build_tiny(env, lora=True)
    train(first, MixtureExamples(mixture, first.processor), config, tmp_path / "resumed", log=quiet, stop_after=2)
    resumed, _ = build_tiny(env, lora=True)
    got = train(resumed, MixtureExamples(mixture, resumed.processor), config, tmp_path / "resumed", log=quiet,
                resume="latest")
    assert got == expected
    trained = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trained)
    theirs = dict(resumed.named_parameters())
    for name, value in trained.items():
        assert torch.equal(value, theirs[name]), name
    adapter = tmp_path / "resumed" / "model" / "language_model_adapter" / "adapter_model.safetensors"
    reference = tmp_path / "straight" / "model" / "language_model_adapter" / "adapter_model.safetensors"
    mine, want = load_file(str(adapter)), load_file(str(reference))
    assert mine.keys() == want.keys() and all(torch.equal(mine[k], want[k]) for k in want)


def test_bf16_generate_on_the_tiny_preset_returns_text_and_an_image(env):
    from PIL import Image

    from genllava.data.conversation import USER, Message
    from genllava.data.templates import T2I

    model, _ = build_tiny(env)
    model.to_dtype(torch.bfloat16).eval()
    assert model.language_model.dtype == model.decoder.unet.dtype == torch.bfloat16
    picture = Image.new("RGB", (40, 40), (20, 160, 40))
    said, drawn = model.generate([[Message(USER, "What is this?", has_image=True)], [Message(USER, "Draw a cat.")]],
                                 [picture, None], max_new_tokens=4)
    assert isinstance(said.text, str)
    drawn, = model.generate([[Message(USER, "Make it red.", has_image=True)]], [picture], task=T2I, max_new_tokens=4)
    assert drawn.image is not None and drawn.image.mode == "RGB" and drawn.image.size[0] > 0
