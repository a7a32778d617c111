"""Inference speed: genllava's answers against the libraries it is built on, and `genllava serve` under load.

    python benchmarks/bench_serve.py                      # the shapes model (fresh glue), CPU
    python benchmarks/bench_serve.py --model runs/quickstart/model --repeats 20 --requests 64
    python benchmarks/bench_serve.py --no-server          # the in-process overheads only

--model: a saved model folder; by default the shapes preset's GenLLaVA (its shipped pretrained parts,
a fresh projector and head: GenLlava.build) saved to a temporary folder. Timings are medians of
--repeats calls, genllava's and the baseline's interleaved so that a busy machine slows both alike,
after a warm-up of each.

Prints, each beside a baseline run in the same process (ratio = genllava / baseline, of the median wall
time, of the median CPU time, and of the FLOPs counted by torch's FlopCounterMode; target <= 1.05):
- text answer: GenLlava.generate(task="[I2T]") against the LM's own Hugging Face `generate` on the same
  prompt token ids (greedy, the same max_new_tokens, stop and banned tokens); the answers' tokens are compared;
- image sampling: DiffusionDecoder.sample against diffusers' StableDiffusionPipeline(prompt_embeds=…,
  negative_prompt_embeds=…) built from the decoder's own UNet, VAE, CLIP text encoder, tokenizer and
  DPM-Solver scheduler, with the same conditioning, steps, guidance and seed; the images are compared;
- image answer: GenLlava.generate(task="[T2I]") against the same work done by hand with the two
  libraries: HF `generate` of the words up to [SOI], one LM forward over [SOI][IMG0..15][EOI], the
  generation head on e + h at the [IMG] positions, then the pipeline;
- server: `genllava serve` started as a subprocess on 127.0.0.1, /v1/chat/completions with text
  answers and with image answers (each request its own seed): requests/s and p50/p95 latency at
  concurrency 1, 4 and 16 (--requests requests each), against the same requests answered one after
  another by GenLlava.generate in this process (sequential calls, no HTTP), and in batches of 16 (the
  most batching can gain on this machine, compute-bound on a CPU). Target: concurrency 16 >= 3x the
  requests/s of concurrency 1 (the server batches requests that arrive together).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from copy import deepcopy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from genllava.data.conversation import user  # noqa: E402
from genllava.data.templates import I2T, T2I  # noqa: E402
from genllava.model.modeling import GenLlava  # noqa: E402
from genllava.shapes.world import Scene, Shape, render  # noqa: E402
from serving import free_port, stop_process  # noqa: E402  (the serving tests' helpers)

TEXT_PROMPT = "Write a short story about a red circle."  # the shapes LM answers it in 13 tokens
IMAGE_QUESTION = "Describe the image."
IMAGE_PROMPT = "Generate an image of a blue square at the center."


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict[str, tuple[float, float, int]]:
    """Median (wall, CPU) seconds per call of each function, calls taken in turn, and the FLOPs of one
    call (torch's FlopCounterMode). CPU time is the process's, all threads: on a machine shared with
    other jobs it moves less than wall time; the FLOPs say whether both sides do the same work."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {name: (*(statistics.median(x[i] for x in t) for i in (0, 1)), flops[name]) for name, t in times.items()}


def show(label: str, ours: tuple, base: tuple, base_name: str, note: str = "") -> None:
    print(f"{label}: genllava {ours[0] * 1000:.1f} ms, {base_name} {base[0] * 1000:.1f} ms: ratio {ours[0] / base[0]:.3f} "
          f"(overhead {100 * (ours[0] / base[0] - 1):+.1f} %); CPU time ratio {ours[1] / base[1]:.3f}; "
          f"FLOPs ratio {ours[2] / max(base[2], 1):.4f}{note}")


# ---- text answer -------------------------------------------------------------------------------------
def stops(model: GenLlava) -> list[int]:
    return [model.processor.eos_id, model.processor.soi_id]


def hf_generate(model: GenLlava, ids: list[int], max_new_tokens: int, pixels: torch.Tensor | None = None) -> list[int]:
    """The LM's own `generate` on the prompt's token ids (or, with an image, on its embeddings: the word
    embeddings with the projected patches in the image slots): the answer's tokens up to a stop token."""
    proc, lm = model.processor, model.language_model
    x = torch.tensor([ids], device=model.device)
    prompt = {"input_ids": x} if pixels is None else {"inputs_embeds": model.embed(x, pixels)}
    # The tokens a text answer may not write, as genllava's generate bans them: the control tokens only
    # the code places, and [SOI].
    banned = [proc.image_token_id, *proc.img_token_ids, proc.eoi_id, *proc.task_ids.values(), proc.soi_id]
    out = lm.generate(**prompt, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                      eos_token_id=stops(model), pad_token_id=proc.pad_id,
                      suppress_tokens=banned)[0, len(ids) if pixels is None else 0:].tolist()
    return out[:next((i for i, t in enumerate(out) if t in stops(model)), len(out))]


def bench_text(model: GenLlava, repeats: int, max_new_tokens: int) -> None:
    proc = model.processor
    image = render(Scene((Shape("red", "circle", "center"), Shape("blue", "square", "top left"))))
    for label, messages, images in (("text answer", [user(TEXT_PROMPT)], [None]),
                                     ("text answer about an image", [user(IMAGE_QUESTION, has_image=True)], [image])):
        ids = proc.encode_prompt(messages, I2T)  # the prompt genllava builds, ending in the task token

        def ours():
            return model.generate([messages], images, task=I2T, max_new_tokens=max_new_tokens)[0]

        def base():
            pixels = None if images[0] is None else proc.pixel_values(images).to(model.device)
            return hf_generate(model, ids, max_new_tokens, pixels)

        with torch.no_grad():
            words = base()
            same = ours().text == proc.decode([proc.task_ids[I2T], *words])
            t = interleaved({"ours": ours, "hf": base}, repeats)
        show(label, t["ours"], t["hf"], "HF generate" + ("" if images[0] is None else " (+ tower, projector)"),
             f"; {len(words)} new tokens, prompt {len(ids)} tokens, same answer: {same}")


# ---- image answer -----------------------------------------------------------------------------------
def sd_pipeline(model: GenLlava):
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    decoder = model.decoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its note on the scheduler's steps_offset, which "trailing" spacing ignores
        pipe = StableDiffusionPipeline(vae=decoder.vae, text_encoder=decoder.text_encoder, tokenizer=decoder.tokenizer,
                                       unet=decoder.unet, scheduler=DPMSolverMultistepScheduler.from_config(decoder.scheduler.config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_image(model: GenLlava, pipe, conditioning: torch.Tensor, steps: int, guidance: float, seed: int):
    size = model.decoder.resolution
    return pipe(prompt_embeds=conditioning, negative_prompt_embeds=model.negative_conditioning, height=size, width=size,
                num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator(model.device).manual_seed(seed)).images[0]


def conditioning_by_hand(model: GenLlava, ids: list[int], max_new_tokens: int) -> torch.Tensor:
    """The words up to [SOI] (HF generate), one forward over the image block, the head on e + h."""
    proc, lm = model.processor, model.language_model
    words = hf_generate(model, ids, max_new_tokens)
    seq = torch.tensor([ids + words + [proc.soi_id, *proc.img_token_ids, proc.eoi_id]], device=model.device)
    embeds = lm.get_input_embeddings()(seq)
    hidden = lm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1]
    at = torch.isin(seq, torch.tensor(proc.img_token_ids, device=seq.device))
    return model.generation_head((embeds[at] + hidden[at]).view(1, len(proc.img_token_ids), -1))


def max_pixel_difference(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def bench_image(model: GenLlava, repeats: int, steps: int, guidance: float, max_new_tokens: int) -> None:
    pipe = sd_pipeline(model)
    messages = [user(IMAGE_PROMPT)]
    ids = model.processor.encode_prompt(messages, T2I)
    with torch.no_grad():
        conditioning = conditioning_by_hand(model, ids, max_new_tokens)

        def ours_sample():
            return model.decoder.sample(conditioning, model.negative_conditioning, steps=steps, guidance_scale=guidance,
                                        generator=torch.Generator(model.device).manual_seed(0))[0]

        diff = max_pixel_difference(ours_sample(), pipeline_image(model, pipe, conditioning, steps, guidance, 0))
        t = interleaved({"ours": ours_sample,
                         "pipe": lambda: pipeline_image(model, pipe, conditioning, steps, guidance, 0)}, repeats)
        show("image sampling", t["ours"], t["pipe"], "StableDiffusionPipeline",
             f"; {steps} steps, guidance {guidance}, {model.decoder.resolution}px, max pixel difference {diff}")

        def ours_answer():
            return model.generate([messages], [None], task=T2I, max_new_tokens=max_new_tokens, steps=steps,
                                  guidance_scale=guidance, seed=0)[0].image

        def by_hand():
            return pipeline_image(model, pipe, conditioning_by_hand(model, ids, max_new_tokens), steps, guidance, 0)

        diff = max_pixel_difference(ours_answer(), by_hand())
        t = interleaved({"ours": ours_answer, "hand": by_hand}, repeats)
        show("image answer", t["ours"], t["hand"], "HF generate + forward + head + pipeline",
             f"; max pixel difference {diff}")


# ---- server -----------------------------------------------------------------------------------------
def start_server(model_dir: Path, max_batch: int, log: Path):
    import httpx


    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "genllava", "serve", "--model", str(model_dir), "--port", str(port),
               "--model-name", "bench", "--log-level", "warning", "--device", "cpu", "--max-batch", str(max_batch),
               "--max-queue", "256"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"genllava serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=5).status_code == 200:
                return process, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"genllava serve did not answer within 300 s: {log.read_text()[-2000:]}")


def request_body(kind: str, seed: int, steps: int, max_tokens: int) -> dict:
    prompt = TEXT_PROMPT if kind == "text" else IMAGE_PROMPT
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "seed": seed, "max_tokens": max_tokens,
            "task": kind}
    if kind == "image":
        body["num_inference_steps"] = steps
    return body


def load(base: str, kind: str, concurrency: int, requests: int, steps: int, max_tokens: int) -> dict:
    """`requests` chat completions, `concurrency` in flight at a time: req/s, p50/p95 latency, failures."""
    import httpx

    def one(client: httpx.Client, seed: int) -> float:
        start = time.perf_counter()
        response = client.post(f"{base}/v1/chat/completions", json=request_body(kind, seed, steps, max_tokens))
        if response.status_code != 200 or (kind == "image" and not response.json()["choices"][0]["message"].get("images")):
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        return time.perf_counter() - start

    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(one, client, seed) for seed in range(requests)]
            latencies, failures = [], 0
            for future in futures:
                try:
                    latencies.append(future.result())
                except Exception as err:  # noqa: BLE001 (counted and shown)
                    failures += 1
                    print(f"  failed: {err}")
        wall = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")  # noqa: E731
    return {"rps": len(latencies) / wall, "p50": pick(0.5), "p95": pick(0.95), "failures": failures}


def batch_stats(base: str) -> dict:
    """The server's count of generate calls and the rows they held (GET /health)."""
    import httpx

    return httpx.get(f"{base}/health", timeout=30).json()["generate_calls"]


def sequential(model: GenLlava, kind: str, requests: int, steps: int, max_tokens: int, batch: int = 1) -> float:
    """Requests/s of the same requests answered by GenLlava.generate in this process, `batch` per call
    (1: one after another; more: what batching alone can gain on this machine, with no HTTP)."""
    task, prompt = (I2T, TEXT_PROMPT) if kind == "text" else (T2I, IMAGE_PROMPT)
    start = time.perf_counter()
    for first in range(0, requests, batch):
        seeds = list(range(first, min(first + batch, requests)))
        model.generate([[user(prompt)]] * len(seeds), [None] * len(seeds), task=task, max_new_tokens=max_tokens,
                       steps=steps, seed=seeds)
    return requests / (time.perf_counter() - start)


def bench_server(model: GenLlava, model_dir: Path, requests: int, steps: int, max_tokens: int, kinds: list[str],
                 levels: list[int]) -> None:
    if not (ROOT / "genllava" / "serve" / "api.py").is_file():
        print("server: skipped (genllava/serve/api.py is not there)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        process, base = start_server(model_dir, max(levels), log)
        try:
            for kind in kinds:
                load(base, kind, 2, 4, steps, max_tokens)  # warm-up
                baseline = sequential(model, kind, requests, steps, max_tokens)
                ceiling = sequential(model, kind, requests, steps, max_tokens, batch=max(levels))
                print(f"server, {kind} answers ({requests} requests per level"
                      f"{f', {steps} steps' if kind == 'image' else f', max_tokens {max_tokens}'}): "
                      f"sequential GenLlava.generate in-process {baseline:.2f} req/s; in batches of {max(levels)} "
                      f"{ceiling:.2f} req/s (x{ceiling / baseline:.2f}: what batching can gain here)")
                first = None
                for concurrency in levels:
                    before = batch_stats(base)
                    r = load(base, kind, concurrency, requests, steps, max_tokens)
                    after = batch_stats(base)
                    rows_per_call = (after["rows"] - before["rows"]) / max(1, after["calls"] - before["calls"])
                    first = first or r["rps"]
                    print(f"  concurrency {concurrency:>2}: {r['rps']:6.2f} req/s, p50 {r['p50'] * 1000:7.0f} ms, "
                          f"p95 {r['p95'] * 1000:7.0f} ms, failures {r['failures']}, {rows_per_call:.1f} rows per "
                          f"generate call; x{r['rps'] / first:.2f} concurrency {levels[0]}, "
                          f"x{r['rps'] / baseline:.2f} sequential")
        finally:
            stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved model folder (default: the shapes preset, fresh glue)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of each side")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    parser.add_argument("--requests", type=int, default=48, help="server: requests per concurrency level")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--server-kinds", default="text,image", help="server: text, image or both")
    parser.add_argument("--server-max-tokens", type=int, default=16, help="server: max_tokens of each request")
    parser.add_argument("--no-server", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else None
        if model_dir is None:
            from genllava import presets

            config, _ = presets.preset("shapes")
            torch.manual_seed(0)
            model_dir = Path(tmp) / "model"
            GenLlava.build(deepcopy(config)).save_pretrained(model_dir)
        model = GenLlava.from_pretrained(model_dir).requires_grad_(False)  # inference only
        steps = args.steps or model.config.inference_steps
        guidance = model.config.guidance_scale if args.guidance is None else args.guidance
        print(f"model {args.model or 'shapes preset (fresh glue)'}, device {model.device}, {torch.get_num_threads()} "
              f"threads, median of {args.repeats} interleaved calls")
        bench_text(model, args.repeats, args.max_new_tokens)
        bench_image(model, args.repeats, steps, guidance, args.max_new_tokens)
        if not args.no_server:
            bench_server(model, model_dir, args.requests, steps, args.server_max_tokens, args.server_kinds.split(","),
                         [int(c) for c in args.concurrency.split(",")])


if __name__ == "__main__":
    main()
