"""The `genllava` command. User mistakes end with exit code 2 and one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .data.conversation import RecordError

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, RecordError, RuntimeError)


def _quickstart(args) -> None:
    from .quickstart import quickstart

    quickstart(args.out, mix=args.mix, steps=args.steps, eval_samples=args.samples, seed=args.seed)


def _eval_shapes(args) -> None:
    from .eval.shapes_eval import evaluate_shapes
    from .model.modeling import GenLlava
    from .quickstart import flat_metrics

    results, _ = evaluate_shapes(GenLlava.from_pretrained(args.model), args.seed, args.samples)
    payload = {**results, "metrics": flat_metrics(results), "seed": args.seed, "samples": args.samples}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    for key, value in payload["metrics"].items():
        print(f"{key:32s} {value:.3f}")


def _eval_probe(args) -> None:
    from .eval.probes import check_request, probe_model
    from .model.modeling import GenLlava

    check_request(args.kind, args.shapes, args.samples)  # before loading a model
    result = probe_model(GenLlava.from_pretrained(args.model), args.kind, args.shapes, args.samples, args.seed)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.kind}, {args.shapes} shape(s), {args.samples} questions (a quarter held out for the probes)")
    print(f"model's answer right        {result['model_accuracy']:.3f}   (most common answer: {result['chance']:.3f})")
    print(f"probe: tower patches        {result['probe_tower']:.3f}")
    print(f"probe: projected patches    {result['probe_projected']:.3f}")
    for layer, accuracy in enumerate(result["probe_llm_layers"]):
        print(f"probe: LLM layer {layer:<2d} state   {accuracy:.3f}   (at the position that predicts the answer)")


def _chat(args) -> None:
    from .chat import ChatSession
    from .data.images import load_image

    if args.image:
        load_image(args.image)  # check the user's input before loading a model
    if args.message is not None and not args.message.strip():
        raise ValueError("empty message; give --message some text, or leave it out for a chat")
    session = ChatSession.open(args.model, args.out_dir, seed=args.seed, strength=args.strength)
    if args.image:
        session.attach(args.image)
    if args.message is not None:
        print(session.say(args.message))
    else:
        session.repl()


def _one_image(args, instruction: str, image_path: str | None) -> None:
    from .chat import ChatSession
    from .data.images import load_image
    from .data.templates import T2I

    if image_path:
        load_image(image_path)  # check the user's input before loading a model
    if not instruction.strip():
        raise ValueError("empty prompt or instruction; say what the image should show")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    session = ChatSession.open(args.model, str(Path(args.out).parent), seed=args.seed, strength=getattr(args, "strength", 1.0))
    if image_path:
        session.attach(image_path)
    reply = session.reply(instruction, task=T2I)
    reply.image.save(args.out)
    print(f"saved {args.out}")


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
    model_config, train_config = presets.preset(args.preset)
    if args.data:
        from .data.shards import read_manifest

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
    # Frozen parts in bf16 when training in bf16; FSDP shards them with the fp32 trainable ones and
    # wants one dtype per unit, so there they stay fp32 (its mixed-precision policy casts them).
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    bf16 = mixed_precision(train_config.mixed_precision) == "bf16" and not fsdp
    model = GenLlava.build(model_config, dtype=torch.bfloat16 if bf16 else None)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        # fp32 master weights for what trains (autocast computes in bf16); DeepSpeed keeps its own
        # fp32 copy of a bf16 LM, as loaded from Mistral's bf16 checkpoint.
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


def presets_names() -> list[str]:
    from .presets import PRESETS

    return list(PRESETS)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genllava", description="Generative visual instruction tuning: one model "
                                "that understands, generates and edits images.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train and evaluate on the embedded shapes world")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--mix", default="full", help="full | understanding-only (ablation)")
    q.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the shapes preset's)")
    q.add_argument("--samples", type=int, default=50, help="evaluation samples per task")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(run=_quickstart)

    t = sub.add_parser("train", help="single-stage GenLLaVA training (under `accelerate launch` for many GPUs)")
    t.add_argument("--preset", default="shapes", choices=sorted(presets_names()),
                   help="the recipe: model parts and optimisation (genllava-mistral-7b is the paper's)")
    t.add_argument("--data", default=None, help="a mixture built by `genllava data build` (required but for shapes)")
    t.add_argument("--out", required=True, help="run folder: checkpoints/step-N and the final model/")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    t.add_argument("--resume", default=None, help="`latest` (newest complete checkpoint under --out) or OUT/checkpoints/step-N")
    t.add_argument("--save-every", type=int, default=None, help="checkpoint every N optimizer steps (and at the end)")
    t.add_argument("--keep", type=int, default=None, help="keep the newest K checkpoints (0: all; default 3)")
    t.add_argument("--lora", action="store_true", help="LoRA on the LM (r=128, alpha=256, dropout 0.05); "
                   "projector, head and new token rows train fully")
    t.add_argument("--workers", type=int, default=None, help="data loader worker processes (default: the preset's)")
    t.add_argument("--micro-batch", type=int, default=None, help="samples per device per forward")
    t.add_argument("--global-batch", type=int, default=None, help="samples per optimizer step, over all devices")
    t.add_argument("--seed", type=int, default=0, help="seeds the new modules, the data order and the noise")
    t.set_defaults(run=_train)

    ml = sub.add_parser("merge-lora", help="fold a LoRA model's adapter into its LM: a plain model folder")
    ml.add_argument("--model", required=True, help="a model folder saved after apply_lora (language_model_adapter/)")
    ml.add_argument("--out", required=True)
    ml.set_defaults(run=_merge_lora)

    data = sub.add_parser("data", help="build and check training mixtures (GVIT-mix)")
    dsub = data.add_subparsers(dest="data_command", required=True)
    db = dsub.add_parser("build", help="build a mixture from local copies of the public datasets")
    db.add_argument("--config", required=True)
    db.add_argument("--out", required=True)
    db.set_defaults(run=_data_build)
    dv = dsub.add_parser("validate", help="re-check a built mixture")
    dv.add_argument("dir")
    dv.add_argument("--decode-images", action="store_true")
    dv.set_defaults(run=_data_validate)

    e = sub.add_parser("eval", help="evaluate a trained model")
    esub = e.add_subparsers(dest="suite", required=True)
    es = esub.add_parser("shapes", help="every capability on a fresh seed of the shapes world")
    es.add_argument("--model", required=True)
    es.add_argument("--seed", type=int, default=1)
    es.add_argument("--samples", type=int, default=50)
    es.add_argument("--out", required=True)
    es.set_defaults(run=_eval_shapes)
    ep = esub.add_parser("probe", help="where answers about images get lost: linear probes along the model")
    ep.add_argument("--model", required=True)
    ep.add_argument("--kind", required=True, help="a question kind of the shapes world, e.g. shape_at_position")
    ep.add_argument("--shapes", type=int, default=1, help="shapes per image: 1 or 2")
    ep.add_argument("--samples", type=int, default=800)
    ep.add_argument("--seed", type=int, default=3)
    ep.add_argument("--out", default=None, help="also write the figures to this JSON file")
    ep.set_defaults(run=_eval_probe)

    c = sub.add_parser("chat", help="talk with a model (a REPL without --message)")
    c.add_argument("--model", required=True)
    c.add_argument("--image", default=None)
    c.add_argument("--message", default=None)
    c.add_argument("--out-dir", default="runs/chat", help="where generated images are saved")
    c.add_argument("--strength", type=float, default=1.0, help="edit strength: < 1 keeps more of the input (SDEdit)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(run=_chat)

    g = sub.add_parser("generate", help="draw one image from a prompt")
    g.add_argument("--model", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(run=lambda a: _one_image(a, a.prompt, None))

    d = sub.add_parser("edit", help="edit one image by an instruction")
    d.add_argument("--model", required=True)
    d.add_argument("--image", required=True)
    d.add_argument("--instruction", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--strength", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(run=lambda a: _one_image(a, a.instruction, a.image))

    s = sub.add_parser("shapes", help="the shapes world's own tools")
    ssub = s.add_subparsers(dest="shapes_command", required=True)
    pre = ssub.add_parser("pretrain", help="pretrain one of the world's components (shipped pretrained)")
    pre.add_argument("component", choices=["tokenizer", "vision", "language", "decoder"])
    pre.add_argument("--out", default=None, help="default: the package's shipped folder")
    pre.add_argument("--tokenizer", default=None)
    pre.add_argument("--steps", type=int, default=None, help="training steps (the decoder's UNet steps)")
    pre.add_argument("--batch", type=int, default=None)
    pre.add_argument("--vae-steps", type=int, default=None, help="decoder only: autoencoder steps")
    pre.add_argument("--no-eval", action="store_true", help="decoder, language: skip the final scoring")
    pre.add_argument("--workers", type=int, default=0, help="language only: processes that build batches")
    pre.add_argument("--init-from", default=None, help="decoder, language: continue training a saved one")
    pre.add_argument("--lr", type=float, default=None, help="decoder, language: peak learning rate")
    pre.add_argument("--corpus", default="chats", choices=["chats", "reading"], help="language only: chats (first stage) | reading (second)")
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(run=_pretrain)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading bars are noise around a one-line answer or error
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if type(err).__name__ == "OutOfMemoryError":  # not the user's mistake: keep the cause, add a hint
            print("error: out of device memory; lower --micro-batch (accumulation keeps the global batch), "
                  "or launch with configs/accelerate/deepspeed_zero3.yaml (docs/training.md)", file=sys.stderr)
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
