"""Speed of the GVIT-mix builder and of its loader, on the native-format test fixture.

    python benchmarks/bench_data_builder.py [--scale 1] [--image-size 128] [--workers 2] [--steps 40]

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


if __name__ == "__main__":
    main()
