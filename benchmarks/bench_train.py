"""Speed of GenLLaVA training: the real trainer (genllava.train.trainer.train) on a preset, under an engine.

    python benchmarks/bench_train.py --preset tiny-mistral --engine single --steps 6
    python benchmarks/bench_train.py --preset tiny-mistral --engine deepspeed_zero3 --steps 6
    python benchmarks/bench_train.py --preset genllava-mistral-7b --random-init --lm-layers 8 \\
        --engine deepspeed_zero3 --steps 5 --micro-batch 4 --global-batch 32        # GPUs

Engines: single | ddp | deepspeed_zero3 | deepspeed_zero2 | fsdp2. A multi-process engine re-launches
this script with `accelerate launch --config_file configs/accelerate/<engine>.yaml --num_processes N`
(N: --processes, default the GPU count, or 2 on CPU, where it adds `--mixed_precision no` and
DS_ACCELERATOR=cpu, and the processes talk over gloo).

Data: --data DIR (a built mixture), else a small mixture built from the test fixtures into a temp
folder (the shapes preset makes shapes-world records in memory instead). --random-init (with the
genllava-mistral-7b preset) builds the 7B preset's parts from their public configs (SigLIP-L/16-384,
Mistral-7B with --lm-layers decoder layers, SD v1.4's UNet, VAE and CLIP-L text encoder) with random
weights into a temp folder: the paper's shapes without a hub download.

Prints, from the steps after the first (a warm-up, not counted):
- samples/s and tokens/s (non-pad tokens of the batches, from their attention masks, all processes);
- the step time split into data wait / forward-backward / optimizer / other (process 0's), each with
  its share of the step;
- data wait with --workers loader workers against the same run with workers=0 in this process (the
  baseline; --no-baseline skips it). Target: data wait <= 5 % of the step with workers on;
- peak memory: torch.cuda.max_memory_allocated on a GPU, the process's max RSS on CPU (both the
  largest over processes);
- model FLOPs utilisation, MFU = model FLOPs per step / step time / (processes x peak FLOP/s per device).
  Peak: --peak-tflops, else a table by torch.cuda.get_device_name (H100/H200 989, A100 312 bf16 dense
  TFLOP/s); "MFU n/a on CPU" without --peak-tflops.

Model FLOPs of a step (forward + backward, without the recomputation gradient checkpointing adds,
as MFU is defined), summed over its micro-batches:
- language model, per non-pad token: 6 N_train + 4 N_frozen + 12 L d T. N: the LM's non-embedding
  parameters (lm_head included; the input embedding is a lookup), split into what trains (6: forward,
  input gradients, weight gradients) and what does not (the LoRA base: 4, no weight gradients);
  12 L d T: attention scores and values (2 matmuls x 2 T d per token per layer, x3 for the backward),
  with L layers, width d and T the mean sequence length of the micro-batch (PaLM's MFU convention);
- projector, per image patch: 6 N_projector;
- vision tower (frozen, forward only), per input image: 2 N_vision P + 4 L_v d_v P^2 with P patches;
- generation head, per image answer: 6 N_head Q (Q = its learnable queries; an upper estimate: the
  encoder sees the 16 [IMG] states only);
- image decoder, per image answer: the VAE encoder's forward plus 2 x the UNet's forward (the diffusion
  loss backpropagates through the frozen UNet into its conditioning: input gradients, no weight
  gradients, about one more forward), each counted by torch.utils.flop_counter on a meta-device copy
  built from the component's config at its training resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
for _fixtures in (ROOT / "tests" / "fixtures", ROOT / "tests" / "data"):  # native_fixtures.py is moving
    if (_fixtures / "native_fixtures.py").is_file():
        sys.path.insert(1, str(_fixtures))
        break

import torch  # noqa: E402

ENGINES = ("single", "ddp", "deepspeed_zero3", "deepspeed_zero2", "fsdp2")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # bf16 dense, per GPU
CHILD_FLAG = "GENLLAVA_BENCH_CHILD"

# ---- the 7B preset's parts, from their public configs ----------------------------------------------------
# google/siglip-large-patch16-384 (vision half), mistralai/Mistral-7B-Instruct-v0.2, CompVis/stable-diffusion-v1-4.
SIGLIP_L_384 = {"model_type": "siglip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
                "num_attention_heads": 16, "num_hidden_layers": 24, "num_channels": 3, "image_size": 384,
                "patch_size": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}
MISTRAL_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
              "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1e6, "sliding_window": None,
              "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
SD14_UNET = {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
             "center_input_sample": False, "cross_attention_dim": 768,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
             "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
             "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": 32, "out_channels": 4,
             "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SD14_VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
            "sample_size": 512, "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4}
CLIP_L_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "projection_dim": 768,
               "num_attention_heads": 12, "num_hidden_layers": 12, "max_position_embeddings": 77,
               "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
DONE = "bench_components.json"


def build_7b_shaped(root: Path, lm_layers: int) -> Path:
    """vision/, language/, decoder/ in the 7B preset's layouts, randomly initialised. The tokenizers are the
    tiny preset's (trained here); the LM keeps Mistral's 32000-row vocabulary (see pad_vocabulary)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, MistralConfig, MistralForCausalLM, SiglipVisionConfig
    from transformers import SiglipVisionModel

    from genllava.tiny import build as tiny

    marker = {"lm_layers": lm_layers, "version": tiny.TINY_VERSION}
    if (root / DONE).is_file() and json.loads((root / DONE).read_text()) == marker:
        return root
    shutil.rmtree(root, ignore_errors=True)
    init = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")  # random init is faster there
    torch.manual_seed(0)
    with init:
        vision = SiglipVisionModel(SiglipVisionConfig(**SIGLIP_L_384))
    vision.save_pretrained(root / "vision")
    preprocessor = json.loads((tiny.CONFIGS / "preprocessor.json").read_text())
    preprocessor["size"] = {"height": SIGLIP_L_384["image_size"], "width": SIGLIP_L_384["image_size"]}
    (root / "vision" / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    del vision

    tokenizer = tiny.build_mistral_tokenizer(1024)
    with init:
        language = MistralForCausalLM(MistralConfig(**{**MISTRAL_7B, "num_hidden_layers": lm_layers}))
    language.to(torch.bfloat16).save_pretrained(root / "language")  # as Mistral ships it
    tiny.save_mistral_tokenizer(tokenizer, root / "language")
    del language

    decoder = root / "decoder"
    with init:
        UNet2DConditionModel.from_config(SD14_UNET).save_pretrained(decoder / "unet")
        AutoencoderKL.from_config(SD14_VAE).save_pretrained(decoder / "vae")
    clip_tokenizer = tiny.build_clip_tokenizer(512)
    text = {**CLIP_L_TEXT, "bos_token_id": clip_tokenizer.bos_token_id, "eos_token_id": clip_tokenizer.eos_token_id,
            "pad_token_id": clip_tokenizer.pad_token_id}
    with init:
        CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(decoder / "text_encoder")
    clip_tokenizer.save_pretrained(decoder / "tokenizer")
    from diffusers import PNDMScheduler

    PNDMScheduler.from_config(json.loads((tiny.CONFIGS / "scheduler.json").read_text())).save_pretrained(
        decoder / "scheduler")
    shutil.copyfile(tiny.CONFIGS / "model_index.json", decoder / "model_index.json")
    (root / DONE).write_text(json.dumps(marker))
    return root


def pad_vocabulary(model, base_tokenizer_size: int) -> None:
    """GenLlava.build resizes the LM's embeddings to its tokenizer; the stand-in tokenizer is smaller than
    Mistral's, so give back Mistral's 32000 rows (plus genllava's added tokens): the real shapes and FLOPs."""
    added = len(model.processor.tokenizer) - base_tokenizer_size
    model.language_model.resize_token_embeddings(MISTRAL_7B["vocab_size"] + added, mean_resizing=False)


# ---- data ------------------------------------------------------------------------------------------------

def fixture_mixture(folder: Path) -> Path:
    """A small built mixture from the test fixtures (every source the builder reads)."""
    import native_fixtures

    from genllava.data.build import build_mixture

    sources, _ = native_fixtures.write_fixtures(folder / "src", scale=2)
    config = native_fixtures.write_config(folder / "mix.yaml", sources, shard_size=16, chunk_size=16)
    build_mixture(config, folder / "out")
    return folder / "out"


# ---- the model, as `genllava train` builds it -------------------------------------------------------------

def configs(args, components: Path | None):
    from genllava import presets

    model_config, train_config = presets.preset(args.preset)
    if components is not None:
        model_config = replace(model_config, vision_tower=str(components / "vision"),
                               language_model=str(components / "language"), decoder=str(components / "decoder"))
    train_config = replace(train_config, max_steps=args.steps, checkpoint_every=0, keep_checkpoints=1)
    if args.micro_batch:
        train_config.micro_batch_size = args.micro_batch
    if args.global_batch:
        train_config.global_batch_size = args.global_batch
    return model_config, train_config


def build_model(args, model_config, train_config, components: Path | None):
    """The precision plan of genllava.cli._train: frozen parts in bf16 when training in bf16 (fp32 under FSDP),
    fp32 master weights for the LM outside DeepSpeed, LoRA on request."""
    from copy import deepcopy

    from genllava.model.modeling import GenLlava
    from genllava.train.engine import mixed_precision

    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # A previous run's DeepSpeed ZeRO-3 plugin leaves transformers building every model partitioned (zero.Init);
    # `genllava train` builds its model before the engine exists, and so does each run here.
    unset_hf_deepspeed_config()
    torch.manual_seed(0)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    bf16 = mixed_precision(train_config.mixed_precision) == "bf16" and not fsdp
    model = GenLlava.build(deepcopy(model_config), dtype=torch.bfloat16 if bf16 else None)
    if components is not None:
        from transformers import AutoTokenizer

        pad_vocabulary(model, len(AutoTokenizer.from_pretrained(components / "language")))
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        model.language_model.float()
    if args.lora:
        from genllava.train.lora import apply_lora

        apply_lora(model)
    return model


def examples_for(args, model, train_config, data: Path | None):
    if data is not None:
        from genllava.train.batches import MixtureExamples

        return MixtureExamples(data, model.processor)
    try:
        from genllava.train.examples import SkipReport, prepare
    except ImportError:  # before the move from genllava.data.collate
        from genllava.data.collate import SkipReport, prepare
    from genllava.shapes.tasks import make_records

    count = min(args.steps * train_config.global_batch_size, 4096)
    return list(prepare(make_records(count, 0), model.processor, SkipReport()))


# ---- FLOPs -----------------------------------------------------------------------------------------------

def flop_model(model) -> dict:
    """Per-unit FLOP counts of this model (see the module docstring); taken before the engine shards it."""
    from torch.utils.flop_counter import FlopCounterMode

    lm = model.language_model
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    config = base.config
    trained = frozen = 0
    for name, p in lm.named_parameters():
        if "embed_tokens" in name:
            continue  # a lookup, no matmul
        if p.requires_grad:
            trained += p.numel()
        else:
            frozen += p.numel()
    attention_width = config.num_attention_heads * (getattr(config, "head_dim", None)
                                                    or config.hidden_size // config.num_attention_heads)
    vision = model.vision.model.config
    patches = model.vision.num_patches
    vision_params = sum(p.numel() for p in model.vision.parameters())
    unet, vae = model.decoder.unet, model.decoder.vae
    latent = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    with torch.device("meta"):
        unet_meta = type(unet).from_config(unet.config)
        vae_meta = type(vae).from_config(vae.config)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device("meta"):
        unet_meta(torch.zeros(1, unet.config.in_channels, latent, latent), torch.tensor([500]),
                  encoder_hidden_states=torch.zeros(1, model.config.head.num_queries, unet.config.cross_attention_dim))
    unet_forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.device("meta"):
        vae_meta.encode(torch.zeros(1, vae.config.in_channels, vae.config.sample_size, vae.config.sample_size))
    vae_forward = counter.get_total_flops()
    return {
        "lm_per_token": 6 * trained + 4 * frozen,
        "lm_attention_per_token_per_position": 12 * config.num_hidden_layers * attention_width,
        "per_image": 6 * sum(p.numel() for p in model.projector.parameters()) * patches
            + 2 * vision_params * patches + 4 * vision.num_hidden_layers * vision.hidden_size * patches ** 2,
        "per_target": 6 * sum(p.numel() for p in model.generation_head.parameters()) * model.config.head.num_queries
            + vae_forward + 2 * unet_forward,
        "unet_forward": unet_forward, "vae_forward": vae_forward,
        "params": {"lm_trained": trained, "lm_frozen": frozen, "vision": vision_params,
                   "unet": sum(p.numel() for p in unet.parameters())},
    }


def step_flops(flops: dict, step: dict) -> dict:
    """Model FLOPs of one optimizer step from its counts (summed over micro-batches and processes)."""
    tokens, sequences = step["tokens"], max(step["sequences"], 1)
    mean_length = tokens / sequences
    lm = tokens * (flops["lm_per_token"] + flops["lm_attention_per_token_per_position"] * mean_length)
    return {"lm": lm, "vision+projector": step["pixel_values"] * flops["per_image"],
            "head+decoder": step["target_pixels"] * flops["per_target"]}


def device_peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


# ---- one timed run -----------------------------------------------------------------------------------------

def timed_run(args, workers: int, out: Path, components: Path | None, data: Path | None) -> dict:
    import torch.distributed as dist

    from genllava.train.trainer import train

    model_config, train_config = configs(args, components)
    train_config.dataloader_workers = workers
    model = build_model(args, model_config, train_config, components)
    flops = flop_model(model)
    examples = examples_for(args, model, train_config, data)
    steps: list[dict] = []

    def all_processes(values: torch.Tensor, op=None) -> torch.Tensor:
        """Reduced over the processes (the trainer's process group is up once train() has started)."""
        if not (dist.is_available() and dist.is_initialized()):
            return values
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        values = values.to(device)
        dist.all_reduce(values, op=op or dist.ReduceOp.SUM)
        return values.cpu()

    def on_step(timing: dict) -> None:
        counts = torch.tensor([timing.get("tokens", 0), timing.get("pixel_values", 0), timing.get("target_pixels", 0)],
                              dtype=torch.float64)
        counts = all_processes(counts)
        steps.append({**timing, "tokens": float(counts[0]), "pixel_values": float(counts[1]),
                      "target_pixels": float(counts[2]), "sequences": train_config.global_batch_size})

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    quiet = (lambda line: None) if not args.verbose else print
    start = time.perf_counter()
    train(model, examples, train_config, out, log=quiet, on_step=on_step)
    wall = time.perf_counter() - start
    peak = torch.tensor([float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available()
                         else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0], dtype=torch.float64)
    peak = all_processes(peak, dist.ReduceOp.MAX) if dist.is_available() and dist.is_initialized() else peak
    processes = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    del model
    return {"steps": steps, "flops": flops, "train": train_config, "wall": wall, "peak_bytes": float(peak[0]),
            "processes": processes, "workers": workers}


def summary(run: dict) -> dict:
    counted = run["steps"][1:] or run["steps"]  # the first step warms up
    mean = {k: sum(s.get(k, 0.0) for s in counted) / len(counted)
            for k in ("seconds", "data_wait", "forward_backward", "optimizer", "tokens", "pixel_values",
                      "target_pixels", "sequences")}
    mean["other"] = mean["seconds"] - mean["data_wait"] - mean["forward_backward"] - mean["optimizer"]
    parts = step_flops(run["flops"], mean)
    return {**mean, "flops": parts, "samples_per_s": run["train"].global_batch_size / mean["seconds"],
            "tokens_per_s": mean["tokens"] / mean["seconds"], "counted": len(counted)}


def report(args, main: dict, baseline: dict | None) -> None:
    s, train_config = summary(main), main["train"]
    processes = main["processes"]
    accumulation = train_config.global_batch_size // (train_config.micro_batch_size * processes)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"preset {args.preset}{' (random init, ' + str(args.lm_layers) + ' LM layers)' if args.random_init else ''}"
          f"{' + LoRA' if args.lora else ''}, engine {args.engine}, {processes} process(es) on {device}; "
          f"batch {train_config.micro_batch_size} x {accumulation} accumulation x {processes} = "
          f"{train_config.global_batch_size}; {args.steps} steps, the first a warm-up ({s['counted']} counted)")
    print(f"throughput: {s['samples_per_s']:.2f} samples/s, {s['tokens_per_s']:.0f} tokens/s "
          f"(non-pad; {s['tokens'] / train_config.global_batch_size:.0f} tokens/sample)")

    def ms(key: str) -> str:
        return f"{1000 * s[key]:.1f} ms ({100 * s[key] / s['seconds']:.1f} %)"

    print(f"step: {1000 * s['seconds']:.1f} ms = data wait {ms('data_wait')} + forward-backward {ms('forward_backward')}"
          f" + optimizer {ms('optimizer')} + other {ms('other')} (process 0, {torch.get_num_threads()} torch threads)")
    if args.engine.startswith("deepspeed"):
        print("  (under DeepSpeed the engine steps its optimizer inside accelerator.backward: optimizer time is "
              "part of forward-backward)")
    if baseline is not None:
        b = summary(baseline)
        ratio = s["data_wait"] / b["data_wait"] if b["data_wait"] > 0 else float("nan")
        share = 100 * s["data_wait"] / s["seconds"]
        print(f"data wait: {main['workers']} workers {1000 * s['data_wait']:.1f} ms/step ({share:.1f} % of step, "
              f"target <= 5 %: {'met' if share <= 5 else 'NOT met'}); baseline workers=0 in this process "
              f"{1000 * b['data_wait']:.1f} ms/step ({100 * b['data_wait'] / b['seconds']:.1f} %); "
              f"ratio {ratio:.2f}; samples/s ratio {s['samples_per_s'] / b['samples_per_s']:.2f}")
    kind = "torch.cuda.max_memory_allocated" if torch.cuda.is_available() else "max RSS"
    print(f"peak memory: {main['peak_bytes'] / 2 ** 30:.2f} GiB ({kind}, largest process)")
    f = main["flops"]
    total = sum(s["flops"].values())
    shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in s["flops"].items()) if total else ""
    print(f"model FLOPs: {total / 1e9:.2f} GFLOP/step = {total / train_config.global_batch_size / 1e9:.2f} GFLOP/sample "
          f"({shares}); LM {f['params']['lm_trained'] / 1e6:.1f}M trained + {f['params']['lm_frozen'] / 1e6:.1f}M "
          f"frozen non-embedding params; UNet forward {f['unet_forward'] / 1e9:.2f} GFLOP, VAE encode "
          f"{f['vae_forward'] / 1e9:.2f} GFLOP per image")
    achieved = total / s["seconds"]
    peak = device_peak_tflops(args)
    if peak is None:
        where = "on CPU" if not torch.cuda.is_available() else f"for {device} (give --peak-tflops)"
        print(f"MFU n/a {where}; achieved {achieved / 1e9:.2f} GFLOP/s over {processes} process(es)")
    else:
        mfu = achieved / (processes * peak * 1e12)
        print(f"MFU {100 * mfu:.1f} % ({achieved / 1e12:.2f} TFLOP/s over {processes} x {peak:g} TFLOP/s peak; "
              f"paper's ~20 %: {'above' if mfu > 0.20 else 'below'})")


# ---- entry ---------------------------------------------------------------------------------------------------

def launch(args, scratch: Path, data: Path | None, components: Path | None) -> int:
    """Re-runs this script under `accelerate launch` with the engine's config."""
    processes = args.processes or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / f"{args.engine}.yaml"), "--num_processes", str(processes)]
    env = {**os.environ, CHILD_FLAG: str(scratch)}
    if not torch.cuda.is_available():
        command += ["--mixed_precision", "no"]
        env |= {"DS_ACCELERATOR": "cpu"}
    command += [str(Path(__file__).resolve()), *sys.argv[1:]]
    if data is not None and not args.data:
        command += ["--data", str(data)]
    if components is not None:
        command += ["--components", str(components)]
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command, env=env).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-mistral")
    parser.add_argument("--engine", default="single", choices=ENGINES)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run; the first is a warm-up")
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the measured run (baseline: 0)")
    parser.add_argument("--data", default=None, help="a built mixture (default: one built from the test fixtures)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s per device, in TFLOP/s")
    parser.add_argument("--processes", type=int, default=None, help="multi-process engines (default: GPUs, or 2 on CPU)")
    parser.add_argument("--micro-batch", type=int, default=None)
    parser.add_argument("--global-batch", type=int, default=None)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--random-init", action="store_true",
                        help="genllava-mistral-7b only: its parts' shapes with random weights (no download)")
    parser.add_argument("--lm-layers", type=int, default=32, help="with --random-init: Mistral decoder layers")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per process (default: 1 on CPU, where more threads beside loader workers "
                             "oversubscribe the cores; torch's default on a GPU)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the workers=0 run")
    parser.add_argument("--verbose", action="store_true", help="the trainer's own lines")
    parser.add_argument("--components", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.random_init and args.preset != "genllava-mistral-7b":
        parser.error("--random-init builds the genllava-mistral-7b preset's parts; use --preset genllava-mistral-7b")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.verbose:  # the report is the output: no loading chatter
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        import warnings

        warnings.filterwarnings("ignore")
    child = os.environ.get(CHILD_FLAG)
    threads = args.threads or (None if torch.cuda.is_available() else 1)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the processes `accelerate launch` starts, too
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        scratch = Path(child) if child else Path(tmp)
        data = Path(args.data) if args.data else None
        components = Path(args.components) if args.components else None
        if not child:
            if args.random_init and components is None:
                start = time.perf_counter()
                components = build_7b_shaped(scratch / "components", args.lm_layers)
                print(f"built 7B-shaped random components in {time.perf_counter() - start:.0f} s", flush=True)
            if data is None and args.preset != "shapes":
                data = fixture_mixture(scratch / "mixture")
            if args.preset == "tiny-mistral":
                from genllava.tiny import tiny_components

                tiny_components()  # built once, before several processes would race for it
            if args.engine != "single":
                return launch(args, scratch, data, components)
        main_run = timed_run(args, args.workers, scratch / f"run-workers{args.workers}", components, data)
        baseline = None
        if not args.no_baseline:
            baseline = timed_run(args, 0, scratch / "run-workers0", components, data)
        if int(os.environ.get("RANK", "0")) == 0:
            report(args, main_run, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
