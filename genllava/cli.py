"""The `genllava` command. User mistakes end with exit code 2 and one line on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from .data.conversation import RecordError

# User mistakes: bad files, paths, numbers, corrupt model files. A RuntimeError counts only when
# genllava raised it (ComponentError, a missing extra); one from inside torch is a bug.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
               RecordError, RuntimeError)
IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def user_error_line(err: BaseException) -> str | None:
    """The single place where an error becomes what the user reads: one line for a user mistake,
    None for a bug (which keeps its traceback)."""
    from safetensors import SafetensorError

    if type(err).__name__ == "OutOfMemoryError" or not isinstance(err, (*USER_ERRORS, SafetensorError)):
        return None
    if type(err) is RuntimeError or (isinstance(err, RuntimeError) and type(err).__module__.startswith("torch")):
        frames = traceback.extract_tb(err.__traceback__)
        if not frames or not frames[-1].filename.startswith(str(Path(__file__).resolve().parent) + os.sep):
            return None  # raised inside a library: a bug, not the user's mistake
    if isinstance(err, SafetensorError):
        text = f"a weights file is corrupt or truncated ({err}); save or download it again"
    elif isinstance(err, json.JSONDecodeError):
        text = f"invalid JSON ({err.msg}, line {err.lineno} column {err.colno}); fix or re-create the file"
    elif isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}; choose another path"
    else:
        text = str(err) or type(err).__name__
    from .chat import safe_text

    return "error: " + safe_text(" ".join(line.strip() for line in text.splitlines() if line.strip()))


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line too (exit code 2), naming the command's --help."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _at_least(low: int):
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return count


def _strength(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (1 redraws from noise; lower keeps more of the input), got {value}")
    return value


def _writable_folder(folder: str | Path, what: str) -> None:
    """Checks, before any model loads, that `folder` is or can become a folder we may write into."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what}: {existing} is a file, not a folder; choose another path")
    import tempfile

    try:
        handle, probe = tempfile.mkstemp(prefix=".genllava-write-check-", dir=existing)
    except OSError as err:
        raise ValueError(f"{what}: cannot write into {existing} ({err.strerror or err}); choose another path") from None
    os.close(handle)
    os.unlink(probe)


def _output_file(path: str, what: str, image: bool = False) -> Path:
    """An output file that can be written: a known image type (for images), not a folder, in a folder
    that can be made and written; checked before any model loads."""
    path = Path(path)
    if image and path.suffix.lower() not in IMAGE_TYPES:
        raise ValueError(f"{what} {path}: not an image file name ({path.suffix or 'no extension'}); "
                         f"end it in one of {', '.join(IMAGE_TYPES)}")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file path")
    _writable_folder(path.parent, what)
    return path


def _write_atomic(path: str | Path, write) -> None:
    """write(temporary_path), then a rename: the file appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _model_options(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --quantize: where and how every command that loads a model runs it."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: the GPU when there is one)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="auto: bfloat16 on a GPU that has it, float16 on other GPUs, float32 on the CPU")
    parser.add_argument("--quantize", default=None, choices=["8bit", "4bit"],
                        help="low memory: load the LM in 8 or 4 bits (bitsandbytes, CUDA only)")


def _load_model(args):
    from .model.modeling import GenLlava

    return GenLlava.from_pretrained(args.model, device=args.device, dtype=args.dtype, quantization=args.quantize)


def _quiet_deepspeed() -> None:
    """accelerate imports DeepSpeed where it is installed, which, finding no GPU, warns on stdout that it
    is "setting the accelerator to CPU": on a machine without one, say so first."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def _run_folder(out: str) -> None:
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; give a folder for the run (checkpoints/ and model/ go in it)")
    _writable_folder(out, "--out")


def _quickstart(args) -> None:
    _run_folder(args.out)
    _quiet_deepspeed()
    from .quickstart import quickstart

    quickstart(args.out, mix=args.mix, steps=args.steps, eval_samples=args.samples, seed=args.seed)


def _eval_shapes(args) -> None:
    """One model's scores; with --compare, a second model's on the same questions and the difference."""
    from .eval.shapes_eval import evaluate_shapes
    from .model.config import CONFIG_NAME
    from .model.loading import check_complete
    from .quickstart import flat_metrics

    _output_file(args.out, "--out")  # before an evaluation that may take long
    if args.compare:
        check_complete(args.compare, [CONFIG_NAME])
    results, _ = evaluate_shapes(_load_model(args), args.seed, args.samples)
    payload = {**results, "metrics": flat_metrics(results), "seed": args.seed, "samples": args.samples}
    if not args.compare:
        _write_atomic(args.out, lambda path: path.write_text(json.dumps(payload, indent=2) + "\n"))
        for key, value in payload["metrics"].items():
            print(f"{key:32s} {value:.3f}")
        return
    other, _ = evaluate_shapes(_load_model(argparse.Namespace(**{**vars(args), "model": args.compare})),
                               args.seed, args.samples)
    theirs = flat_metrics(other)
    payload.update(model=args.model, compare={**other, "model": args.compare, "metrics": theirs},
                   difference={key: value - theirs[key] for key, value in payload["metrics"].items()})
    _write_atomic(args.out, lambda path: path.write_text(json.dumps(payload, indent=2) + "\n"))
    names = (Path(args.model).parent.name or args.model, Path(args.compare).parent.name or args.compare)
    print(f"{'':32s} {names[0][:12]:>12s} {names[1][:12]:>12s} {'difference':>12s}")
    for key, value in payload["metrics"].items():
        print(f"{key:32s} {value:12.3f} {theirs[key]:12.3f} {value - theirs[key]:+12.3f}")


def _eval_probe(args) -> None:
    from .eval.probes import check_request, probe_model

    check_request(args.kind, args.shapes, args.samples)  # before loading a model
    if args.out:
        _output_file(args.out, "--out")
    result = probe_model(_load_model(args), args.kind, args.shapes, args.samples, args.seed)
    if args.out:
        _write_atomic(args.out, lambda path: path.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"{args.kind}, {args.shapes} shape(s), {args.samples} questions (a quarter held out for the probes)")
    print(f"model's answer right        {result['model_accuracy']:.3f}   (most common answer: {result['chance']:.3f})")
    print(f"probe: tower patches        {result['probe_tower']:.3f}")
    print(f"probe: projected patches    {result['probe_projected']:.3f}")
    for layer, accuracy in enumerate(result["probe_llm_layers"]):
        print(f"probe: LLM layer {layer:<2d} state   {accuracy:.3f}   (at the position that predicts the answer)")


def _eval_paper_commands(esub) -> None:
    """eval generation | editing | bench: the paper's metrics (genllava/eval/commands.py)."""
    from .eval.commands import add_eval_commands

    add_eval_commands(esub, _model_options, _load_model, _at_least)


def _chat(args) -> None:
    from .chat import ChatSession
    from .data.images import load_image

    if args.image:
        load_image(args.image)  # check the user's input before loading a model
    if args.message is not None and not args.message.strip():
        raise ValueError("empty message; give --message some text, or leave it out for a chat")
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise ValueError(f"--out-dir {args.out_dir} is a file; give a folder for the generated images")
    _writable_folder(args.out_dir, "--out-dir")
    session = ChatSession(_load_model(args), args.out_dir, seed=args.seed, strength=args.strength)
    if args.image:
        session.attach(args.image)
    if args.message is not None:
        print(session.say(args.message))
    else:
        session.repl()


def _one_image(args, instruction: str, image_path: str | None) -> None:
    from .chat import ChatSession, safe_text
    from .data.images import load_image
    from .data.templates import T2I

    if image_path:
        load_image(image_path)  # check the user's input before loading a model
    if not instruction.strip():
        raise ValueError("empty prompt or instruction; say what the image should show")
    _output_file(args.out, "--out", image=True)
    session = ChatSession(_load_model(args), str(Path(args.out).parent), seed=args.seed, strength=getattr(args, "strength", 1.0))
    if image_path:
        session.attach(image_path)
    reply = session.reply(instruction, task=T2I)
    _write_atomic(args.out, lambda path: reply.image.save(path))
    print(f"saved {safe_text(str(args.out))}")


def _web(args) -> None:
    try:
        from .serve.web import serve_web
    except ImportError as err:
        raise RuntimeError(f"the web app needs gradio ({err}); pip install 'genllava[serve]'") from None
    if not Path(args.model).is_dir():
        raise ValueError(f"model folder {args.model} does not exist; give a folder saved by genllava train")
    serve_web(_load_model(args), host=args.host, port=args.port, share=args.share == "on")


def _serve(args) -> None:
    import os

    try:
        from .serve.api import served_name
        from .serve.limits import limits_from_args
        from .serve.server import serve
    except ImportError as err:
        raise RuntimeError(f"genllava serve needs FastAPI and uvicorn ({err}); pip install 'genllava[serve]'") from None
    limits = limits_from_args(args)  # bad flags fail before a model loads
    if not Path(args.model).is_dir():
        raise ValueError(f"model folder {args.model} does not exist; give a folder saved by genllava train")
    serve(_load_model(args), host=args.host, port=args.port, api_key=args.api_key or os.environ.get("GENLLAVA_API_KEY"),
          limits=limits, model_name=args.model_name or served_name(args.model), log_level=args.log_level)


def _train(args) -> None:
    import os

    import torch

    from . import presets
    from .train.examples import SkipReport, prepare
    from .model.modeling import GenLlava
    from .train.engine import mixed_precision
    from .train.trainer import train

    if args.preset != "shapes" and not args.data:
        raise ValueError(f"--preset {args.preset} trains on a built mixture: give --data DIR "
                         "(`genllava data build`); only the shapes preset makes its own data")
    _run_folder(args.out)
    _quiet_deepspeed()
    model_config, train_config = presets.preset(args.preset)
    if args.data:
        from .data.shards import read_manifest

        if not Path(args.data).exists():
            raise FileNotFoundError(f"--data {args.data} does not exist; give a folder built by `genllava data build`")
        read_manifest(args.data)  # fails early, in one line, on a folder that is not a built mixture
    for field, value in (("max_steps", args.steps), ("checkpoint_every", args.save_every),
                         ("keep_checkpoints", args.keep), ("dataloader_workers", args.workers),
                         ("micro_batch_size", args.micro_batch), ("global_batch_size", args.global_batch)):
        if value is not None:
            if value < (0 if field in ("checkpoint_every", "keep_checkpoints", "dataloader_workers") else 1):
                raise ValueError(f"--{field.replace('_', '-')} must be positive, got {value}")
            setattr(train_config, field, value)
    train_config.seed = args.seed
    torch.manual_seed(args.seed)  # before the build: the new modules' first weights follow --seed
    # Frozen parts in bf16 when training in bf16: they stay outside the engine, whole on every device.
    bf16 = mixed_precision(train_config.mixed_precision) == "bf16"
    model = GenLlava.build(model_config, dtype=torch.bfloat16 if bf16 else None)
    if not args.lora and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        # fp32 master weights for what trains (autocast computes in bf16). DeepSpeed keeps its own
        # fp32 copy of a bf16 LM, as loaded from Mistral's bf16 checkpoint; under LoRA the base stays
        # as loaded and frozen, and peft holds the adapters and token rows in fp32.
        model.language_model.float()
    if args.lora:
        from .train.lora import apply_lora

        apply_lora(model)
    skipped = SkipReport()
    if args.data:
        from .train.batches import MixtureExamples

        examples = MixtureExamples(args.data, model.processor)
    else:
        from .shapes.tasks import make_records

        count = train_config.max_steps * train_config.global_batch_size
        examples = list(prepare(make_records(count, args.seed), model.processor, skipped))
    history = train(model, examples, train_config, args.out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0 and history:
        print(f"saved {Path(args.out) / 'model'}; final loss {history[-1]['loss']:.4f}")


def _merge_lora(args) -> None:
    from .train.lora import merge_lora

    print(f"saved {merge_lora(args.model, args.out)}")


def _data_build(args) -> None:
    from .data.build import build_mixture

    manifest = build_mixture(args.config, args.out)
    print(json.dumps({k: manifest[k] for k in ("records", "tasks", "sources", "skipped")}, indent=2))


def _data_validate(args) -> None:
    from .data.build import validate_mixture

    print(json.dumps(validate_mixture(args.dir, decode_images=args.decode_images), indent=2, default=str))


def _pretrain(args) -> None:
    from transformers import AutoTokenizer

    from . import presets

    out = Path(args.out or presets.SHAPES_PRETRAINED / args.component)
    if args.component == "tokenizer":
        from .shapes.tokenizer import build_tokenizer

        build_tokenizer(seed=args.seed).save_pretrained(out)
        print(f"saved {out}")
        return
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or presets.SHAPES_PRETRAINED / "tokenizer")
    if args.component == "vision":
        from .shapes.pretrain_vision import pretrain_vision as run
    elif args.component == "language":
        from .shapes.pretrain_lm import pretrain_lm as run
    else:
        from .shapes.pretrain_decoder import pretrain_decoder as run
    options = {"unet_steps" if args.component == "decoder" else "steps": args.steps, "batch": args.batch}
    if args.component == "decoder":
        options.update(vae_steps=args.vae_steps, init_from=args.init_from, lr=args.lr)
    if args.component in ("decoder", "language"):
        options.update(evaluate=not args.no_eval)
    if args.component == "language":
        options.update(workers=args.workers, corpus=args.corpus, init_from=args.init_from, lr=args.lr)
    print(run(out, tokenizer, seed=args.seed, **{k: v for k, v in options.items() if v is not None}))


STRENGTH_HELP = ("edit strength in (0, 1]: 1 redraws the image from noise; lower keeps more of the input image "
                 "(SDEdit: the drawing starts from the input noised that far); values near 0 return about the input")


def _mixes() -> list[str]:
    from .shapes.tasks import MIXES

    return list(MIXES)


def _question_kinds() -> list[str]:
    from .shapes.tasks import QUESTION_KINDS

    return list(QUESTION_KINDS)


def presets_names() -> list[str]:
    from .presets import PRESETS

    return list(PRESETS)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="genllava", description="Generative visual instruction tuning: one model "
                                "that understands, generates and edits images.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train and evaluate on the embedded shapes world")
    q.add_argument("--out", default="runs/quickstart", help="run folder: model/, report.md, report.json, image grids")
    q.add_argument("--mix", default="full", choices=_mixes(),
                   help="the training mixture (understanding-only: the ablation)")
    q.add_argument("--steps", type=_at_least(1), default=None, help="optimizer steps (default: the shapes preset's)")
    q.add_argument("--samples", type=_at_least(1), default=50, help="evaluation samples per task")
    q.add_argument("--seed", type=int, default=0, help="seeds the model's new parts, the data and the noise")
    q.set_defaults(run=_quickstart)

    t = sub.add_parser("train", help="single-stage GenLLaVA training (under `accelerate launch` for many GPUs)")
    t.add_argument("--preset", default="shapes", choices=sorted(presets_names()),
                   help="the recipe: model parts and optimisation (genllava-mistral-7b is the paper's)")
    t.add_argument("--data", default=None, help="a mixture built by `genllava data build` (required but for shapes)")
    t.add_argument("--out", required=True, help="run folder: checkpoints/step-N and the final model/")
    t.add_argument("--steps", type=_at_least(1), default=None, help="optimizer steps (default: the preset's)")
    t.add_argument("--resume", default=None, help="`latest` (newest complete checkpoint under --out) or OUT/checkpoints/step-N")
    t.add_argument("--save-every", type=_at_least(0), default=None, help="checkpoint every N optimizer steps (and at the end)")
    t.add_argument("--keep", type=_at_least(0), default=None, help="keep the newest K checkpoints (0: all; default 3)")
    t.add_argument("--lora", action="store_true", help="LoRA on the LM (r=128, alpha=256, dropout 0.05); "
                   "projector, head and new token rows train fully")
    t.add_argument("--workers", type=_at_least(0), default=None, help="data loader worker processes (default: the preset's)")
    t.add_argument("--micro-batch", type=_at_least(1), default=None, help="samples per device per forward")
    t.add_argument("--global-batch", type=_at_least(1), default=None, help="samples per optimizer step, over all devices")
    t.add_argument("--seed", type=int, default=0, help="seeds the new modules, the data order and the noise")
    t.set_defaults(run=_train)

    ml = sub.add_parser("merge-lora", help="fold a LoRA model's adapter into its LM: a plain model folder")
    ml.add_argument("--model", required=True, help="a model folder saved after apply_lora (language_model_adapter/)")
    ml.add_argument("--out", required=True, help="the merged model folder to write")
    ml.set_defaults(run=_merge_lora)

    data = sub.add_parser("data", help="build and check training mixtures (GVIT-mix)")
    dsub = data.add_subparsers(dest="data_command", required=True)
    db = dsub.add_parser("build", help="build a mixture from local copies of the public datasets")
    db.add_argument("--config", required=True, help="the mixture's YAML (configs/gvit-mix.yaml): sources and shares")
    db.add_argument("--out", required=True, help="folder for the shards and manifest.json (a killed build resumes)")
    db.set_defaults(run=_data_build)
    dv = dsub.add_parser("validate", help="re-check a built mixture")
    dv.add_argument("dir", help="a folder built by `genllava data build`")
    dv.add_argument("--decode-images", action="store_true", help="also decode every image (slower)")
    dv.set_defaults(run=_data_validate)

    e = sub.add_parser("eval", help="evaluate a trained model")
    esub = e.add_subparsers(dest="suite", required=True)
    es = esub.add_parser("shapes", help="every capability on a fresh seed of the shapes world")
    es.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    es.add_argument("--seed", type=int, default=1, help="the shapes world's seed for the test questions and images")
    es.add_argument("--samples", type=_at_least(1), default=50, help="samples per task")
    es.add_argument("--out", required=True, help="JSON file for the results")
    es.add_argument("--compare", default=None, help="a second model folder (e.g. `quickstart --mix "
                    "understanding-only`'s): scored on the same questions, with the difference per metric")
    _model_options(es)
    es.set_defaults(run=_eval_shapes)
    ep = esub.add_parser("probe", help="where answers about images get lost: linear probes along the model")
    ep.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    ep.add_argument("--kind", required=True, choices=_question_kinds(), help="the kind of question to follow")
    ep.add_argument("--shapes", type=int, default=1, choices=[1, 2], help="shapes per image")
    ep.add_argument("--samples", type=_at_least(8), default=800, help="questions (a quarter held out for the probes)")
    ep.add_argument("--seed", type=int, default=3, help="the shapes world's seed for the questions")
    ep.add_argument("--out", default=None, help="also write the figures to this JSON file")
    _model_options(ep)
    ep.set_defaults(run=_eval_probe)
    _eval_paper_commands(esub)

    c = sub.add_parser("chat", help="talk with a model (a REPL without --message)")
    c.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    c.add_argument("--image", default=None, help="an image to talk about (PNG, JPEG, WebP, ...)")
    c.add_argument("--message", default=None, help="one message, answered and done (without it: a REPL)")
    c.add_argument("--out-dir", default="runs/chat", help="where generated images are saved, as image-NNN.png "
                   "under a number no other file has (never overwritten)")
    c.add_argument("--strength", type=_strength, default=1.0, help=STRENGTH_HELP)
    c.add_argument("--seed", type=int, default=0, help="seeds the image noise (the same seed draws the same image)")
    _model_options(c)
    c.set_defaults(run=_chat)

    g = sub.add_parser("generate", help="draw one image from a prompt")
    g.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    g.add_argument("--prompt", required=True, help="what the image should show")
    g.add_argument("--out", required=True, help=f"the image file to write ({', '.join(IMAGE_TYPES)})")
    g.add_argument("--seed", type=int, default=0, help="seeds the image noise (the same seed draws the same image)")
    _model_options(g)
    g.set_defaults(run=lambda a: _one_image(a, a.prompt, None))

    d = sub.add_parser("edit", help="edit one image by an instruction")
    d.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    d.add_argument("--image", required=True, help="the image to edit (PNG, JPEG, WebP, ...)")
    d.add_argument("--instruction", required=True, help="what to change, e.g. \"Make the circle blue.\"")
    d.add_argument("--out", required=True, help=f"the image file to write ({', '.join(IMAGE_TYPES)})")
    d.add_argument("--strength", type=_strength, default=1.0, help=STRENGTH_HELP)
    d.add_argument("--seed", type=int, default=0, help="seeds the image noise (the same seed draws the same image)")
    _model_options(d)
    d.set_defaults(run=lambda a: _one_image(a, a.instruction, a.image))

    w = sub.add_parser("web", help="a chat page in the browser: ask about images, draw and edit them")
    w.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    w.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to reach it from other machines")
    w.add_argument("--port", type=int, default=7860)
    w.add_argument("--share", choices=["off", "on"], default="off",
                   help="on: also a public gradio.live link (needs the internet)")
    _model_options(w)
    w.set_defaults(run=_web)

    sv = sub.add_parser("serve", help="an OpenAI-compatible API: chat with images, image generation and edits")
    sv.add_argument("--model", required=True)
    sv.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $GENLLAVA_API_KEY, "
                    "else none)")
    sv.add_argument("--model-name", default=None, help="the id clients send as `model` (default: the folder's name)")
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    _model_options(sv)
    from .serve.limits import add_limit_flags

    add_limit_flags(sv)
    sv.set_defaults(run=_serve)

    s = sub.add_parser("shapes", help="the shapes world's own tools")
    ssub = s.add_subparsers(dest="shapes_command", required=True)
    pre = ssub.add_parser("pretrain", help="pretrain one of the world's components (shipped pretrained)")
    pre.add_argument("component", choices=["tokenizer", "vision", "language", "decoder"], help="the part to pretrain")
    pre.add_argument("--out", default=None, help="default: the package's shipped folder")
    pre.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shipped one)")
    pre.add_argument("--steps", type=_at_least(1), default=None, help="training steps (the decoder's UNet steps)")
    pre.add_argument("--batch", type=_at_least(1), default=None, help="samples per step")
    pre.add_argument("--vae-steps", type=_at_least(0), default=None, help="decoder only: autoencoder steps")
    pre.add_argument("--no-eval", action="store_true", help="decoder, language: skip the final scoring")
    pre.add_argument("--workers", type=_at_least(0), default=0, help="language only: processes that build batches")
    pre.add_argument("--init-from", default=None, help="decoder, language: continue training a saved one")
    pre.add_argument("--lr", type=float, default=None, help="decoder, language: peak learning rate")
    pre.add_argument("--corpus", default="chats", choices=["chats", "reading"], help="language only: chats (first stage) | reading (second)")
    pre.add_argument("--seed", type=int, default=0, help="seeds the weights, the data and the noise")
    pre.set_defaults(run=_pretrain)
    return p


def main(argv: list[str] | None = None) -> int:
    import warnings

    # Library notes a user cannot act on: torch's about the generation head's odd head count.
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading bars are noise around a one-line answer or error
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        hf_logging.set_verbosity_error()  # e.g. "sequence longer than the model's maximum" before our own line
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        line = user_error_line(err)
        if line is None:
            if type(err).__name__ == "OutOfMemoryError":  # not the user's mistake: keep the cause, add a hint
                print("error: out of device memory; lower --micro-batch (accumulation keeps the global batch), "
                      "or launch with configs/accelerate/deepspeed_zero3.yaml (docs/training.md)", file=sys.stderr)
            raise
        print(line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
