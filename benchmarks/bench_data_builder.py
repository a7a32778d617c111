"""Speed of the GVIT-mix builder and of its loader, on the native-format test fixture.

    python benchmarks/bench_data_builder.py [--scale 1] [--image-size 128] [--workers 2] [--steps 40]
    python benchmarks/bench_data_builder.py --full [--scale 1.0] [--build-workers 0] [--keep DIR]

`--full` builds a synthetic corpus shaped like the real one instead: every source in its native
layout with the paper's per-source counts (2,076,000 records from ~2.1M candidates; the paper-sized
config's `fill: resample` sources short as in the real downloads), images tiny (8x8 PNGs) and shared the
way COCO images are, and prints the build's records/s and the peak RSS of the building process
(`--scale 0.01` for a quick look). It checks that memory stays bounded, not image decoding speed.

Prints, each beside a baseline run in the same process:
- builder records/s, against decoding every stored image once (the work no builder can skip);
- loader samples/s (DataLoader over MixtureDataset), against opening the same images as loose files
  with PIL, the way a LLaVA-style JSON dataset does;
- samples/s while training a small conv net fed by the loader, against the same steps on a batch
  already in memory: a ratio near 1.0 means the loader never makes training wait.
The fixture's images are noise at --image-size pixels (JPEG/PNG), so decoding costs are realistic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "data")]

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import native_fixtures  # noqa: E402
from genllava.data.build import build_mixture  # noqa: E402
from genllava.data.dataset import MixtureDataset  # noqa: E402
from genllava.data.records import check_image  # noqa: E402
from genllava.data.shards import iter_raw_shard, shard_paths  # noqa: E402

PIXELS = 64  # what the toy model sees


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.frombuffer(bytearray(image.resize((PIXELS, PIXELS)).tobytes()), dtype=torch.uint8).view(
        PIXELS, PIXELS, 3).permute(2, 0, 1).float() / 255


def collate(records: list[dict]) -> tuple[int, torch.Tensor]:
    """(records, the images a training step would see: inputs and targets as one tensor)."""
    images = [image for r in records for image in ([r["image"]] if r["image"] is not None else [])
              + r.get("target_image", [])]
    return len(records), (torch.stack([to_tensor(image) for image in images]) if images
                          else torch.zeros(1, 3, PIXELS, PIXELS))


def train_step(model, optimizer, batch: torch.Tensor) -> None:
    loss = torch.nn.functional.mse_loss(model(batch), batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def main() -> None:
    if "--full" in sys.argv:
        return full_main()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--steps", type=int, default=40, help="training steps to time")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    size = args.image_size
    original = native_fixtures.Maker.image_bytes
    native_fixtures.Maker.image_bytes = lambda self, fmt="JPEG", s=size: original(self, fmt, max(s, size))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources, _ = native_fixtures.write_fixtures(tmp / "src", seed=0, sizes={
            k: max(1, int(v * args.scale)) for k, v in native_fixtures.SCALED_SIZES.items()})
        config = native_fixtures.write_config(tmp / "mix.yaml", sources, shard_size=200, chunk_size=1000)

        start = time.perf_counter()
        manifest = build_mixture(config, tmp / "out")
        build_s = time.perf_counter() - start
        stored = list({name: data for path in shard_paths(tmp / "out") for _, images in iter_raw_shard(path)
                       for name, data in images.items()}.values())
        start = time.perf_counter()
        for data in stored:
            check_image(data, 89_478_485)
        decode_s = time.perf_counter() - start
        records = manifest["records"]
        print(f"builder: {records} records, {manifest['images']} images in {build_s:.2f} s = "
              f"{records / build_s:.0f} records/s; decode-only baseline {decode_s:.2f} s "
              f"(build/decode time ratio {build_s / decode_s:.2f})")

        dataset = MixtureDataset(tmp / "out", seed=0)
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=list)
        start = time.perf_counter()
        seen = sum(len(batch) for batch in loader)
        load_s = time.perf_counter() - start
        loose = tmp / "loose"
        loose.mkdir()
        files = []
        for i, data in enumerate(stored):
            files.append(loose / f"{i}.img")
            files[-1].write_bytes(data)
        start = time.perf_counter()
        for path in files:
            with Image.open(path) as image:
                image.convert("RGB")
        loose_s = time.perf_counter() - start
        print(f"loader: {seen / load_s:.0f} samples/s ({args.workers} workers, every sample's images decoded); "
              f"loose-file baseline {len(stored) / loose_s:.0f} images/s in one process "
              f"(loader/baseline ratio {(seen / load_s) / (len(stored) / loose_s):.2f})")

        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(16, 3, 3, padding=1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        per_step, fixed = collate(next(iter(loader)))
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step(model, optimizer, fixed)
        memory_s = time.perf_counter() - start
        fed = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate)
        steps, samples = 0, 0
        start = time.perf_counter()
        while steps < args.steps:
            for count, batch in fed:
                train_step(model, optimizer, batch)
                steps += 1
                samples += count
                if steps == args.steps:
                    break
        fed_s = time.perf_counter() - start
        print(f"training: {samples / fed_s:.0f} samples/s fed by the loader; in-memory baseline "
              f"{args.steps * per_step / memory_s:.0f} samples/s (ratio {memory_s / fed_s:.2f}; 1.0 = no waiting)")


# ------------------------------------------------------------------------------- --full: 2.08 M records

PAPER_COUNTS = {"sharegpt": 40_000, "instructpix2pix": 200_000, "llava_pretrain": 558_000, "llava_finetune": 660_000,
                "lvis_instruct4v": 220_000, "lrv_instruction": 80_000, "laion_gpt4v": 15_000, "sharegpt4v": 100_000,
                "docvqa": 50_000, "synthdog": 65_000, "chartqa": 23_000, "dvqa": 50_000, "ai2d": 15_000}
# Rows in the synthetic downloads (the real ones' sizes) and distinct images behind them.
ROWS = {"sharegpt": 94_000, "instructpix2pix": 210_000, "llava_pretrain": 558_128, "llava_finetune": 665_298,
        "lvis_instruct4v": 222_711, "lrv_instruction": 90_000, "laion_gpt4v": 12_600, "sharegpt4v": 102_025,
        "docvqa": 39_463, "synthdog": 70_000, "chartqa": 28_299, "dvqa": 60_000, "ai2d": 12_400}
POOLS = {"coco": 118_000, "llava_pretrain": 558_128, "lrv_instruction": 35_000, "docvqa": 10_194, "chartqa": 18_000,
         "dvqa": 12_000, "ai2d": 3_900}


def tiny_png(number: int) -> bytes:
    """A distinct 8x8 RGB PNG (~90 bytes) for every number, written without PIL (fast)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixel = number.to_bytes(3, "big")
    raw = b"".join(b"\0" + pixel * 8 for _ in range(8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def write_full_corpus(root: Path, scale: float) -> dict:
    """Every source's native layout at `scale` of the real row counts; returns the config's `sources:`."""
    import hashlib
    import json
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    rows = {k: max(20, int(v * scale)) for k, v in ROWS.items()}
    pools = {k: max(10, int(v * scale)) for k, v in POOLS.items()}
    counter = iter(range(1, 1 << 24))

    def images(folder: Path, names: list[str]) -> None:
        for name in names:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tiny_png(next(counter)))

    def dump(path: Path, data) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return str(path)

    def turns(*values):
        return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]

    words = "red blue green cat dog tree house car boat river chart bar value year table".split()
    say = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    sources = {}
    sources["sharegpt"] = {"path": dump(root / "sharegpt.json", [
        {"id": f"s{i}", "conversations": turns(f"{say(12)} {i}?", say(80), f"And {say(6)}?", say(60))}
        for i in range(rows["sharegpt"])])}
    table = []
    for i in range(rows["instructpix2pix"]):
        table.append({"original_image": {"bytes": tiny_png(next(counter)), "path": None}, "edit_prompt": f"make it {say(3)}",
                      "edited_image": {"bytes": tiny_png(next(counter)), "path": None}})
    (root / "ip2p" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(table), root / "ip2p" / "data" / "train-00000-of-00001.parquet", row_group_size=1000)
    del table
    sources["instructpix2pix"] = {"path": str(root / "ip2p")}
    pretrain = [f"{i // 10000:05d}/{i:09d}.png" for i in range(pools["llava_pretrain"])]
    images(root / "pretrain" / "images", pretrain)
    sources["llava_pretrain"] = {"path": dump(root / "pretrain" / "blip_laion_cc_sbu_558k.json", [
        {"id": str(i), "image": pretrain[i % len(pretrain)], "conversations": turns("<image>\nDescribe.", say(12))}
        for i in range(rows["llava_pretrain"])]), "images": str(root / "pretrain" / "images")}
    coco = [f"coco/train2017/{i:012d}.png" for i in range(pools["coco"])]
    images(root / "llava", coco)
    finetune = [{"id": f"f{i}", "image": coco[i % len(coco)], "conversations": turns(
        f"<image>\n{say(8)} {i}?", say(20), f"{say(5)}?", say(10))} if i % 6 else
        {"id": f"f{i}", "conversations": turns(f"{say(8)} {i}?", say(40))} for i in range(rows["llava_finetune"])]
    sources["llava_finetune"] = {"path": dump(root / "llava_v1_5_mix665k.json", finetune), "images": str(root / "llava"),
                                 "dedup_against": "lvis_instruct4v"}
    del finetune
    sources["lvis_instruct4v"] = {"path": dump(root / "lvis_instruct4v_220k.json", [
        {"id": f"l{i}", "image": coco[(i * 7) % len(coco)], "conversations": turns(f"<image>\nWhy {say(8)} {i}?", say(60))}
        for i in range(rows["lvis_instruct4v"])]), "images": str(root / "llava")}
    sources["sharegpt4v"] = {"path": dump(root / "sharegpt4v.json", [
        {"id": f"g{i}", "image": coco[(i * 13) % len(coco)], "conversations": turns("<image>\nDescribe it.", say(150))}
        for i in range(rows["sharegpt4v"])]), "images": str(root / "llava")}
    lrv = [f"{i}.png" for i in range(pools["lrv_instruction"])]
    images(root / "lrv", lrv)
    sources["lrv_instruction"] = {"path": dump(root / "lrv.json", [
        {"image_id": lrv[i % len(lrv)], "question": f"Is there a {say(2)}?", "answer": say(15)}
        for i in range(rows["lrv_instruction"])]), "images": str(root / "lrv")}
    links = [f"https://example.com/{i}.jpg" for i in range(rows["laion_gpt4v"])]
    images(root / "laion", [hashlib.sha1(link.encode()).hexdigest() + ".png" for link in links])
    sources["laion_gpt4v"] = {"path": dump(root / "laion.json", [{"link": link, "caption": say(100)} for link in links]),
                              "images": str(root / "laion"), "fill": "resample"}
    docs = [f"documents/{i}.png" for i in range(pools["docvqa"])]
    images(root / "docvqa", docs)
    sources["docvqa"] = {"path": dump(root / "docvqa" / "train_v1.0_withQT.json", {"dataset_split": "train", "data": [
        {"questionId": i, "question": f"What is {say(3)}?", "image": docs[i % len(docs)], "answers": [say(2)]}
        for i in range(rows["docvqa"])]}), "images": str(root / "docvqa"), "fill": "resample"}
    table = [{"image": {"bytes": tiny_png(next(counter)), "path": None},
              "ground_truth": json.dumps({"gt_parse": {"text_sequence": say(60)}})} for _ in range(rows["synthdog"])]
    (root / "synthdog" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(table), root / "synthdog" / "data" / "train-00000-of-00001.parquet",
                   row_group_size=1000)
    del table
    sources["synthdog"] = {"path": str(root / "synthdog" / "data")}
    charts = [f"{i}.png" for i in range(pools["chartqa"])]
    images(root / "chartqa" / "png", charts)
    half = rows["chartqa"] // 2
    for name, part in (("train_human.json", range(half)), ("train_augmented.json", range(half, rows["chartqa"]))):
        dump(root / "chartqa" / name, [{"imgname": charts[i % len(charts)], "query": f"What is {say(3)}?",
                                        "label": str(i)} for i in part])
    sources["chartqa"] = {"path": str(root / "chartqa")}
    bars = [f"bar_train_{i:08d}.png" for i in range(pools["dvqa"])]
    images(root / "dvqa", bars)
    sources["dvqa"] = {"path": dump(root / "train_qa.json", [
        {"image": bars[i % len(bars)], "question": f"How many {say(1)}?", "answer": str(i % 9), "question_id": i}
        for i in range(rows["dvqa"])]), "images": str(root / "dvqa")}
    diagrams = [f"{i}.png" for i in range(pools["ai2d"])]
    images(root / "ai2d" / "images", diagrams)
    per = max(1, rows["ai2d"] // len(diagrams))
    for d, name in enumerate(diagrams):
        dump(root / "ai2d" / "questions" / f"{name}.json", {"imageName": name, "questions": {
            f"Which {say(2)} {d}.{j}?": {"abcLabel": j == 0 and d % 10 == 0, "answerTexts": ["a", "b", "c", "d"],
                                         "correctAnswer": j % 4, "questionId": f"{name}-{j}"} for j in range(per)}})
        if d % 10 == 0:
            dump(root / "ai2d" / "annotations" / f"{name}.json", {"text": {"T0": {
                "rectangle": [[1, 1], [6, 6]], "replacementText": "A", "value": "leaf"}}})
    (root / "ai2d" / "ai2d_test_ids.csv").write_text("".join(f"{d}\n" for d in range(0, len(diagrams), 5)))
    sources["ai2d"] = {"path": str(root / "ai2d"), "fill": "resample"}
    return sources


def full_main() -> None:
    import json
    import shutil
    import subprocess

    parser = argparse.ArgumentParser(description="the GVIT-mix builder at full size, on a synthetic corpus")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (1.0: 2.08 M records)")
    parser.add_argument("--build-workers", type=int, default=0, help="the config's `workers`")
    parser.add_argument("--keep", default=None, help="a folder to keep corpus and output in (default: a temporary one)")
    args = parser.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="gvit-full-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        sources = write_full_corpus(tmp / "src", args.scale)
        counts = {name: max(1, round(count * args.scale)) for name, count in PAPER_COUNTS.items()}
        config = native_fixtures.write_config(tmp / "mix.yaml", sources, counts, max_skip_rate=0.05,
                                              workers=args.build_workers)
        print(f"corpus: {sum(ROWS.values()) * args.scale / 1e6:.2f} M candidate rows written in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        # The build runs in a fresh process that reports its own peak RSS (VmHWM: the high-water mark of
        # its memory since exec; getrusage of children would also count the corpus writer's pages).
        build = (f"import sys, resource; sys.path.insert(0, {str(ROOT)!r})\n"
                 "from genllava.data.build import build_mixture\n"
                 f"build_mixture({str(config)!r}, {str(tmp / 'out')!r})\n"
                 "try:\n"
                 "    status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
                 "    print(int(status['VmHWM'].split()[0]) // 1024)\n"
                 "except OSError:\n"
                 "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n")
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", build], check=True, stdout=subprocess.PIPE, text=True)
        build_s = time.perf_counter() - start
        peak_mib = int(run.stdout.split()[-1])
        manifest = json.loads((tmp / "out" / "manifest.json").read_text())
        records = manifest["records"]
        resampled = sum(s["resampled"] for s in manifest["sources"].values())
        print(f"full build: {records} records ({resampled} resampled), {manifest['images']} images, "
              f"{len(manifest['shards'])} shards, {manifest['bytes'] / 2**20:.0f} MiB in {build_s:.0f} s = "
              f"{records / build_s:.0f} records/s; peak RSS of the building process {peak_mib:.0f} MiB "
              f"(workers {args.build_workers})")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
