"""`genllava eval generation | editing | bench`: the paper's evaluations from one command each.

Kept apart from cli.py, which adds them with `add_eval_commands`; importing this module is cheap
(the work imports inside the handlers).
"""

from __future__ import annotations

from pathlib import Path


def _clip(args):
    if not args.clip:
        return None
    from .clip_similarity import ClipSimilarity

    return ClipSimilarity(args.clip, device=_metric_device(args))


def _metric_device(args) -> str:
    import torch

    device = getattr(args, "device", "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else device


def _print_metrics(metrics: dict, prefix: str = "") -> None:
    for key, value in metrics.items():
        if isinstance(value, dict):
            _print_metrics(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            print(f"{prefix + key:32s} {value:.4f}")
        else:
            print(f"{prefix + key:32s} {value}")


def eval_generation(args, load_model) -> None:
    from .fid import load_fid_extractor
    from .generation import evaluate_generation, read_captions

    read_captions(args.captions)  # the user's input, checked before any model loads
    if not Path(args.references).is_dir():
        raise NotADirectoryError(f"--references {args.references}: not a folder of reference images")
    fid_extractor = load_fid_extractor(args.inception, _metric_device(args)) if args.inception else None
    clip = _clip(args)
    payload = evaluate_generation(load_model(args), args.captions, args.references, args.out,
                                  fid_extractor=fid_extractor, clip=clip, batch_size=args.batch_size, seed=args.seed,
                                  limit=args.limit, prompt=args.prompt)
    _print_metrics(payload["metrics"])
    print(f"saved {Path(args.out) / 'metrics.json'}")


def eval_editing(args, load_model) -> None:
    from .editing import evaluate_editing, read_edits

    read_edits(args.data)
    dino = None
    if args.dino:
        from .dino import DinoSimilarity

        dino = DinoSimilarity(args.dino, device=_metric_device(args))
    payload = evaluate_editing(load_model(args), args.data, args.out, dino=dino, clip=_clip(args),
                               batch_size=args.batch_size, seed=args.seed, strength=args.strength, limit=args.limit)
    _print_metrics(payload["metrics"])
    print(f"saved {Path(args.out) / 'metrics.json'}")


def eval_bench(args, load_model) -> None:
    from .bench import run_bench

    result = run_bench(args.model, args.out, compare=args.compare, tasks=args.tasks, include_path=args.include_path,
                       judge=args.judge, limit=args.limit, batch_size=args.batch_size, device=args.device,
                       dtype=args.dtype, names=args.names)
    print(result["markdown"])
    print(f"saved {Path(args.out) / 'bench.json'} and {Path(args.out) / 'bench.md'}")


def add_eval_commands(esub, model_options, load_model, at_least) -> None:
    g = esub.add_parser("generation", help="draw an image per caption; FID, CLIP-I (GILL) and CLIPScore")
    g.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    g.add_argument("--captions", required=True, help="JSONL of {id, caption, reference?} or one caption per line")
    g.add_argument("--references", required=True, help="folder of reference images (ID.png/.jpg or the JSONL's names)")
    g.add_argument("--out", required=True, help="folder: images/ (written as made; a rerun resumes) and metrics.json")
    g.add_argument("--inception", default=None, help="FID: torch-fidelity's Inception weights (.pth) or a "
                   "TorchScript extractor (.pt); without it no FID")
    g.add_argument("--clip", default=None, help="CLIP-I and CLIPScore: a CLIPModel folder or cached hub id "
                   "(the paper: openai/clip-vit-large-patch14); without it none")
    g.add_argument("--batch-size", type=at_least(1), default=8, help="images drawn per forward")
    g.add_argument("--seed", type=int, default=0, help="caption n draws with seed + n")
    g.add_argument("--limit", type=at_least(1), default=None, help="only the first N captions")
    g.add_argument("--prompt", default="Generate an image of {caption}.", help="the instruction around each caption")
    model_options(g)
    g.set_defaults(run=lambda a: eval_generation(a, load_model))

    e = esub.add_parser("editing", help="MagicBrush/EVR-style editing: DINO, CLIP-I, CLIP-T, L1, per turn")
    e.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    e.add_argument("--data", required=True, help="a folder with edits.jsonl (docs/evaluation.md)")
    e.add_argument("--out", required=True, help="folder: images/ (written as made; a rerun resumes) and metrics.json")
    e.add_argument("--dino", default=None, help="DINO: a ViTModel folder or cached hub id (facebook/dino-vits16)")
    e.add_argument("--clip", default=None, help="CLIP-I/CLIP-T: a CLIPModel folder or cached hub id")
    e.add_argument("--batch-size", type=at_least(1), default=8, help="edits per forward")
    e.add_argument("--seed", type=int, default=0, help="edit n of a turn draws with seed + n")
    e.add_argument("--strength", type=float, default=1.0, help="< 1 starts from the noised input image (SDEdit)")
    e.add_argument("--limit", type=at_least(1), default=None, help="only the first N sessions")
    model_options(e)
    e.set_defaults(run=lambda a: eval_editing(a, load_model))

    b = esub.add_parser("bench", help="the paper's understanding suite through lmms-eval, as its Table 1")
    b.add_argument("--model", required=True, help="a model folder (genllava train's OUT/model)")
    b.add_argument("--compare", default=None, help="a second model folder (e.g. --mix understanding-only): "
                   "both are scored and the table shows the difference per benchmark")
    b.add_argument("--names", nargs=2, default=None, metavar=("MODEL", "COMPARE"), help="column names for the two")
    b.add_argument("--out", required=True, help="folder: bench.json, bench.md and lmms-eval's own outputs")
    b.add_argument("--tasks", default=None, help="comma-separated lmms-eval tasks (default: Table 1's and the ablations')")
    b.add_argument("--include-path", default=None, help="extra lmms-eval task folder (--include_path)")
    b.add_argument("--judge", default=None, help="judge model for MM-Vet / MathVista / MMBench's fallback "
                   "(e.g. gpt-4o-2024-08-06; needs OPENAI_API_KEY); without one, judged tasks are skipped")
    b.add_argument("--limit", type=at_least(1), default=None, help="documents per task (a quick look)")
    b.add_argument("--batch-size", type=at_least(1), default=8, help="lmms-eval requests per forward")
    b.add_argument("--device", default="auto", help="auto | cpu | cuda")
    b.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    b.set_defaults(run=lambda a: eval_bench(a, load_model))
