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
    from . import presets
    from .data.collate import SkipReport, prepare
    from .model.modeling import GenLlava
    from .shapes.tasks import make_records
    from .train.sampling import StreamedExamples
    from .train.trainer import train

    model_config, train_config = presets.preset(args.preset)
    if args.steps is not None:
        train_config.max_steps = args.steps
    train_config.seed = args.seed
    model = GenLlava.from_pretrained(Path(args.resume) / "model") if args.resume else GenLlava.build(model_config)
    skipped = SkipReport()
    if args.data:
        from .data.shards import iter_records, read_manifest

        read_manifest(args.data)  # fails early, in one line, on a folder that is not a built mixture
        examples = StreamedExamples(lambda epoch: prepare(iter_records(args.data, seed=args.seed * 1000 + epoch),
                                                          model.processor, skipped))
    else:
        count = train_config.max_steps * train_config.global_batch_size
        examples = list(prepare(make_records(count, args.seed), model.processor, skipped))
    train(model, examples, train_config, args.out, resume=args.resume)
    model.save_pretrained(Path(args.out) / "model")
    print(f"saved {Path(args.out) / 'model'}; skipped records: {skipped.total} {dict(skipped.counts)}")


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

    t = sub.add_parser("train", help="single-stage GenLLaVA training")
    t.add_argument("--preset", default="shapes", help="shapes | genllava-mistral-7b")
    t.add_argument("--data", default=None, help="a mixture built by `genllava data build` (default: shapes world)")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--resume", default=None, help="a checkpoint folder OUT/checkpoints/step-N")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(run=_train)

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
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
