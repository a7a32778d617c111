"""Miniature copies of every GVIT-mix source in its native layout, with broken records of every kind.

`write_fixtures(root, scale)` writes the layouts under `root` (images generated here, tiny noise
images so every one is distinct; the InstructPix2Pix folders also get the real samples from
tests/fixtures/ipr2pr) and returns `(sources, expected)`: the `sources:` mapping for a mixture
config, and per source how many records must be accepted, skipped and filtered by reason when the
config takes `count: all`. `scale` multiplies the good records; the broken ones are written once.

Besides broken records, the fixture carries the defects the real downloads are known to have, each
with its expected outcome: text with lone UTF-16 surrogates and bytes that are not UTF-8 (kept, with
U+FFFD, and counted in `EXPECTED_TEXT_REPLACED`), images with transparency (RGBA, LA, P), files of
other splits planted beside the training files (every planted row holds `OTHER_SPLIT`, which must
never reach a record), AI2D `abcLabel` questions, and a LLaVA conversation opening with a gpt turn.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import random
import shutil
import struct
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
REAL_IP2P = ROOT / "tests" / "fixtures" / "ipr2pr"
# The Hugging Face forms (InstructPix2Pix's Parquet, SynthDoG-EN) need pyarrow; without it they are left out.
HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None

# The paper's task shares (GenLLaVA, Table 1): natural language, editing, generation, understanding.
PAPER_TASKS = {"text": 0.0193, "editing": 0.0963, "generation": 0.2688, "understanding": 0.6156}
# How the scaled fixture splits each task over its sources (understanding's split is ours).
SCALED_PROPORTIONS = {
    "sharegpt": 0.0193,
    "instructpix2pix": 0.06, "ip2p_parquet": 0.0363,
    "llava_pretrain": 0.2688,
    "llava_finetune": 0.20, "lvis_instruct4v": 0.08, "sharegpt4v": 0.05, "lrv_instruction": 0.06,
    "laion_gpt4v": 0.03, "docvqa": 0.04, "synthdog": 0.03, "chartqa": 0.04, "dvqa": 0.05, "ai2d": 0.0356,
}
if not HAVE_PYARROW:  # their shares go to the same task's other sources
    SCALED_PROPORTIONS["instructpix2pix"] += SCALED_PROPORTIONS.pop("ip2p_parquet")
    SCALED_PROPORTIONS["docvqa"] += SCALED_PROPORTIONS.pop("synthdog")
SCALED_TOTAL = 3000
SCALED_SIZES = {"sharegpt": 70, "instructpix2pix": 200, "ip2p_parquet": 120, "llava_pretrain": 850,
                "llava_finetune": 700, "sharegpt4v": 170, "lrv_instruction": 200, "laion_gpt4v": 100,
                "docvqa": 230, "synthdog": 100, "chartqa": 130, "dvqa": 170, "ai2d": 115}
OTHER_SPLIT = "PLANTEDOTHERSPLIT"  # in every row of a planted validation/test file: never read
# Characters each source's accepted records get replaced by U+FFFD (lone surrogates, bad bytes).
EXPECTED_TEXT_REPLACED = {"sharegpt": 2, "lvis_instruct4v": 1, "instructpix2pix": 1, "synthdog": 1,
                          "llava_finetune": 1}
WORDS = ("red blue green small large wooden metal old new bright dark round square cat dog tree house car "
         "boat river mountain street chart bar value year table document receipt letter form").split()


class Maker:
    def __init__(self, root: Path, seed: int):
        self.root, self.rng = root, random.Random(seed)
        self.expected = defaultdict(lambda: {"accepted": 0, "skipped": Counter(), "filtered": Counter()})

    def expect(self, source: str, outcome: str = "accepted") -> None:
        entry = self.expected[source]
        if outcome == "accepted":
            entry["accepted"] += 1
        elif outcome in ("duplicate", "blocked_words", "too_short", "test_split", "other_split", "abc_label"):
            entry["filtered"][outcome] += 1
        else:
            entry["skipped"][outcome] += 1

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def image_bytes(self, fmt: str = "JPEG", size: int = 12) -> bytes:
        buffer = io.BytesIO()
        Image.frombytes("RGB", (size, size), self.rng.randbytes(size * size * 3)).save(buffer, fmt)
        return buffer.getvalue()

    def image(self, path: Path, fmt: str = "JPEG") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.image_bytes(fmt))
        return path

    def truncated(self, path: Path) -> Path:
        data = self.image_bytes("JPEG", 64)  # big enough that half of it still holds the whole header
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[: len(data) // 2])
        return path

    def corrupt(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"this is not an image " * 8)
        return path

    def bomb(self, path: Path) -> Path:
        """A 60-byte PNG whose header claims 40000 x 40000 pixels."""
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.new("L", (8, 8)).save(buffer, "PNG")
        data = bytearray(buffer.getvalue())
        data[16:24] = struct.pack(">II", 40000, 40000)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        path.write_bytes(bytes(data))
        return path


def _dump(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def _jsonl(path: Path, rows: list, bad_lines: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row) for row in rows]
    for i in range(bad_lines):
        lines.insert(1 + i, '{"id": "broken", "conversations": [')
    path.write_text("\n".join(lines) + "\n")
    return path


INVALID_UTF8 = object()  # a cell value: ground truth whose bytes are not UTF-8 (written unchecked)
INVALID_UTF8_BYTES = b'{"gt_parse": {"text_sequence": "caf\xe9 menu"}}'


def _parquet(path: Path, rows: list[dict], row_group_size: int = 4) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: ("" if v is INVALID_UTF8 else v) for k, v in row.items()} for row in rows])
    if any(row.get("ground_truth") is INVALID_UTF8 for row in rows):
        # pyarrow refuses invalid UTF-8 in a str, but a Parquet writer need not check: build the column raw
        values = [INVALID_UTF8_BYTES if row["ground_truth"] is INVALID_UTF8 else row["ground_truth"].encode()
                  for row in rows]
        offsets = [0]
        for value in values:
            offsets.append(offsets[-1] + len(value))
        array = pa.Array.from_buffers(pa.string(), len(values), [None, pa.array(offsets, pa.int32()).buffers()[1],
                                                                 pa.py_buffer(b"".join(values))])
        table = table.set_column(table.column_names.index("ground_truth"), "ground_truth", array)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _plant(path: Path, data) -> Path:
    """A file of another split beside the training files: JSON whose every row holds OTHER_SPLIT."""
    return _dump(path, data)


def transparent_png(path: Path, mode: str = "RGBA") -> Path:
    """A PNG whose corners are fully transparent (black underneath) with an opaque red square inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    image.paste((200, 0, 0, 255), (4, 4, 12, 12))
    if mode == "LA":
        image.convert("LA").save(path, "PNG")
    elif mode == "P":  # palette entry 0 (black) is the transparent one
        image = Image.new("P", (16, 16), 0)
        image.putpalette([0, 0, 0, 200, 0, 0])
        image.paste(1, (4, 4, 12, 12))
        image.save(path, "PNG", transparency=0)
    else:
        image.save(path, "PNG")
    return path


def _turns(*values) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


# ----------------------------------------------------------------------------------------- sources

def sharegpt(m: Maker, n: int) -> dict:
    rows = []
    for i in range(n):
        pairs = 1 + i % 3
        rows.append({"id": f"sg{i}", "conversations": _turns(*[
            f"{m.words(6)} question {i}.{j}?" if k == 0 else f"Answer {i}.{j}: {m.words(12)}."
            for j in range(pairs) for k in range(2)])})
        m.expect("sharegpt")
    rows.append({"id": "lead", "conversations": [{"from": "gpt", "value": "Hello! How can I help?"}]
                 + _turns("Tell me about rivers and mountains.", "Rivers flow down from mountains.")})
    m.expect("sharegpt")  # a leading assistant turn is dropped, Vicuna-style
    rows.append({"id": "long", "conversations": _turns("Write a long essay please.", "word " * 6000,
                                                       "And another one?", "more " * 100)})
    m.expect("sharegpt")  # truncated inside the first answer
    # lone surrogates, as ShareGPT dumps carry them (json.dumps writes the "\ud83d" escapes): kept, 2 x U+FFFD
    rows.append({"id": "emoji", "conversations": _turns("Tell me a joke \ud83d about rivers.",
                                                        "Here it is \udc00: rivers run, mountains stay.")})
    m.expect("sharegpt")
    broken = [
        ({"id": "b1", "conversations": "not a list"}, "bad_record"),
        ({"id": "b2", "conversations": [{"from": "human", "value": "Where is the river?"}] * 2
          + [{"from": "gpt", "value": "It is over there."}] * 2}, "not_alternating"),
        ({"id": "b3", "conversations": _turns("Please answer this question.", "")}, "empty_answer"),
        ({"id": "b4", "conversations": _turns("Are you ChatGPT by OpenAI?", "I am a large language model.")},
         "blocked_words"),
        ({"id": "b5", "conversations": _turns("hi", "ok")}, "too_short"),
        ({"id": "b6", "conversations": rows[0]["conversations"]}, "duplicate"),
    ]
    for row, reason in broken:
        rows.append(row)
        m.expect("sharegpt", reason)
    half = len(rows) // 2
    part1 = _dump(m.root / "sharegpt" / "sg_90k_part1.json", rows[:half])
    part2 = _dump(m.root / "sharegpt" / "sg_90k_part2.json", rows[half:])
    _plant(m.root / "sharegpt" / "sg_90k_test.json", [{"id": "p", "conversations": _turns(
        f"{OTHER_SPLIT} question here?", f"{OTHER_SPLIT} answer here.")}])
    return {"path": [str(part1), str(part2)]}


def instructpix2pix(m: Maker, n: int) -> dict:
    root = m.root / "instructpix2pix" / "clip-filtered-dataset"
    for i in range(n):
        folder = root / f"shard-{i % 2:02d}" / f"{i:07d}"
        _dump(folder / "prompt.json", {"input": m.words(5), "edit": f"make it {m.words(3)}", "output": m.words(5)})
        for seed in range(1 + i % 2):
            m.image(folder / f"{1000 + seed}_0.jpg")
            m.image(folder / f"{1000 + seed}_1.jpg")
            m.expect("instructpix2pix")
    for real in sorted(REAL_IP2P.iterdir()):  # the real redistributed samples, exactly as they are
        shutil.copytree(real, root / "shard-09" / real.name)
        for _ in real.glob("*_0.jpg"):
            m.expect("instructpix2pix")
    latin = root / "shard-11" / "latin1"  # a prompt.json with a byte that is not UTF-8: kept, 1 x U+FFFD
    latin.mkdir(parents=True)
    (latin / "prompt.json").write_bytes(b'{"edit": "make it caf\xe9 coloured"}')
    m.image(latin / "5_0.jpg"), m.image(latin / "5_1.jpg")
    m.expect("instructpix2pix")
    bad = root / "shard-10"
    (bad / "b1").mkdir(parents=True)
    (bad / "b1" / "prompt.json").write_text("{not json")
    m.image(bad / "b1" / "7_0.jpg"), m.image(bad / "b1" / "7_1.jpg")
    m.expect("instructpix2pix", "bad_json")
    _dump(bad / "b2" / "prompt.json", {"edit": "add a hat"})
    m.image(bad / "b2" / "7_0.jpg")
    m.expect("instructpix2pix", "missing_image")
    _dump(bad / "b3" / "prompt.json", {"edit": "add a boat"})
    m.truncated(bad / "b3" / "7_0.jpg"), m.image(bad / "b3" / "7_1.jpg")
    m.expect("instructpix2pix", "truncated_image")
    _dump(bad / "b4" / "prompt.json", {"edit": "  "})
    m.image(bad / "b4" / "7_0.jpg"), m.image(bad / "b4" / "7_1.jpg")
    m.expect("instructpix2pix", "empty_question")
    return {"path": str(root)}


def instructpix2pix_parquet(m: Maker, n: int) -> dict:
    rows = []
    for i in range(n):
        rows.append({"original_prompt": m.words(4), "original_image": {"bytes": m.image_bytes(), "path": None},
                     "edit_prompt": f"turn it {m.words(2)}", "edited_prompt": m.words(4),
                     "edited_image": {"bytes": m.image_bytes(), "path": None}})
        m.expect("ip2p_parquet")
    rows.append({**rows[0], "edit_prompt": "remove the sky", "edited_image": None})
    m.expect("ip2p_parquet", "missing_image")
    rows.append({**rows[0], "edit_prompt": "paint it", "original_image": {"bytes": b"garbage" * 9, "path": None}})
    m.expect("ip2p_parquet", "corrupt_image")
    path = _parquet(m.root / "ip2p-hf" / "data" / "train-00000-of-00001.parquet", rows)
    _parquet(m.root / "ip2p-hf" / "data" / "test-00000-of-00001.parquet",
             [{**rows[0], "edit_prompt": f"{OTHER_SPLIT} edit"}])
    return {"reader": "instructpix2pix", "path": str(path.parent)}


def llava_pretrain(m: Maker, n: int) -> dict:
    root = m.root / "LLaVA-Pretrain"
    rows = []
    for i in range(n):
        name = f"{i // 100:05d}/{i:09d}.jpg"
        m.image(root / "images" / name)
        rows.append({"id": f"{i:09d}", "image": name, "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": f"a {m.words(4)} in the {m.words(1)} {i}"}]})
        m.expect("llava_pretrain")
    m.corrupt(root / "images" / "99999" / "corrupt.jpg")
    broken = [({"id": "m", "image": "99999/absent.jpg"}, "missing_image", "a red boat"),
              ({"id": "e", "image": "00000/000000000.jpg"}, "empty_answer", "  "),
              ({"id": "c", "image": "99999/corrupt.jpg"}, "corrupt_image", "a blue car"),
              ({"id": "n"}, "bad_record", "a green tree")]
    for row, reason, caption in broken:
        row["conversations"] = _turns("<image>\nDescribe.", caption)
        rows.append(row)
        m.expect("llava_pretrain", reason)
    _plant(root / "blip_laion_cc_sbu_558k_val.json", [{"id": "p", "image": "00000/000000000.jpg",
                                                       "conversations": _turns("<image>\nDescribe.", OTHER_SPLIT)}])
    return {"path": str(_dump(root / "blip_laion_cc_sbu_558k.json", rows)), "images": str(root / "images")}


def _coco(m: Maker, n: int) -> list[str]:
    names = [f"coco/train2017/{i:012d}.jpg" for i in range(n)]
    for name in names:
        if not (m.root / "llava-data" / name).exists():
            m.image(m.root / "llava-data" / name)
    return names


def llava_finetune_and_lvis(m: Maker, n: int) -> tuple[dict, dict]:
    data = m.root / "llava-data"
    coco = _coco(m, max(4, n // 3))
    lvis_rows = []
    for i in range(n):
        lvis_rows.append({"id": f"lvis{i}", "image": coco[i % len(coco)], "conversations": _turns(
            f"<image>\nWhat is special about {m.words(2)} {i}?", f"It shows {m.words(8)}.")})
        m.expect("lvis_instruct4v")
    m.expect("lvis_instruct4v", "bad_json")
    lvis = _jsonl(m.root / "LVIS-Instruct4V" / "lvis_instruct4v_220k.jsonl", lvis_rows, bad_lines=1)
    with lvis.open("ab") as f:  # a line with a byte that is not UTF-8: kept, 1 x U+FFFD
        f.write(b'{"id": "lvis-latin", "image": "' + coco[0].encode() + b'", "conversations": [{"from": "human", '
                b'"value": "<image>\\nWhat is on the caf\xe9 table?"}, {"from": "gpt", "value": "A cup."}]}\n')
    m.expect("lvis_instruct4v")
    _plant(m.root / "LVIS-Instruct4V" / "lvis_instruct4v_val.json", [{"id": "p", "image": coco[0], "conversations":
                                                                      _turns("<image>\nWhat?", OTHER_SPLIT)}])

    rows = []
    for i in range(n):
        kind = i % 4
        if kind == 3:  # mix665k's text-only ShareGPT rows
            rows.append({"id": f"t{i}", "model": "", "conversations": _turns(f"Explain {m.words(3)}.", m.words(10))})
        else:
            questions = [f"<image>\nWhat color is the {m.words(1)} {i}?\nAnswer the question using a single word "
                         "or phrase.", "Red", f"How many {m.words(1)}s?", "Two"][: 2 + 2 * (kind == 1)]
            rows.append({"id": f"v{i}", "image": coco[(i * 7) % len(coco)], "conversations": _turns(*questions)})
        m.expect("llava_finetune")
    # a text-only conversation opening with a gpt turn: LLaVA's loader trims that turn, so do we
    rows.append({"id": "lead-gpt", "conversations": [{"from": "gpt", "value": "Hello! Ask me anything."}]
                 + _turns("Explain rivers to me.", "Rivers carry water to the sea.")})
    m.expect("llava_finetune")
    m.image(data / "coco" / "val2017" / "000000000139.jpg")  # LVIS-Instruct4V also asks about val2017 images
    rows.append({"id": "val2017", "image": "coco/val2017/000000000139.jpg", "conversations": _turns(
        "<image>\nWhat is in the room \ud800?", "A television.")})  # and a lone surrogate: 1 x U+FFFD
    m.expect("llava_finetune")
    for mode in ("RGBA", "LA", "P"):  # transparency must come out on white, not black
        transparent_png(data / "coco" / "train2017" / f"transparent-{mode}.png", mode)
        rows.append({"id": f"alpha-{mode}", "image": f"coco/train2017/transparent-{mode}.png",
                     "conversations": _turns("<image>\nWhat is drawn?", "A red square.")})
        m.expect("llava_finetune")
    for row in lvis_rows[:2]:  # the same samples as in LVIS-Instruct4V: removed by dedup_against
        rows.append({"id": "dup", "image": row["image"], "conversations": _turns(
            row["conversations"][0]["value"].replace("<image>\n", "") + "\n<image>", "An older answer.")})
        m.expect("llava_finetune", "duplicate")
    m.corrupt(data / "coco" / "train2017" / "corrupt.jpg")
    m.truncated(data / "coco" / "train2017" / "truncated.jpg")
    m.bomb(data / "coco" / "train2017" / "bomb.png")
    good = coco[0]
    broken = [
        ({"image": "coco/train2017/absent.jpg"}, ("<image>\nWhat is it?", "A cat."), "missing_image"),
        ({"image": "coco/train2017/corrupt.jpg"}, ("<image>\nWhat is it?", "A cat."), "corrupt_image"),
        ({"image": "coco/train2017/truncated.jpg"}, ("<image>\nWhat is it?", "A cat."), "truncated_image"),
        ({"image": "coco/train2017/bomb.png"}, ("<image>\nWhat is it?", "A cat."), "image_too_large"),
        ({"image": good}, ("What is it?", "A cat."), "image_token_mismatch"),
        ({"image": good}, ("<image>\nWhat is <image> it?", "A cat."), "image_token_mismatch"),
        ({}, ("<image>\nWhat is it?", "A cat."), "image_token_mismatch"),
        ({"image": good}, ("<image>\nWhat is it?", "   "), "empty_answer"),
        ({"image": [good, good]}, ("<image>\nWhat is it?", "A cat."), "multiple_images"),
        ({"image": "../../etc/passwd"}, ("<image>\nWhat is it?", "A cat."), "bad_record"),
        ({"image": good}, ("<image>\nWhat is [IMG3] here?", "A cat."), "special_token_in_text"),
    ]
    for extra, turns, reason in broken:
        rows.append({"id": f"bad-{reason}", **extra, "conversations": _turns(*turns)})
        m.expect("llava_finetune", reason)
    rows.append({"id": "order", "image": good, "conversations": _turns("<image>\nWhat is it?", "A cat.")
                 + [{"from": "gpt", "value": "A dog."}]})
    m.expect("llava_finetune", "not_alternating")
    rows.append({"id": "role", "image": good, "conversations": [{"from": "robot", "value": "<image>\nHi"},
                                                                {"from": "gpt", "value": "Hello"}]})
    m.expect("llava_finetune", "bad_record")
    finetune = _dump(m.root / "LLaVA-Finetune" / "llava_v1_5_mix665k.json", rows)
    _plant(m.root / "LLaVA-Finetune" / "llava_v1_5_mix665k_val.json", [{"id": "p", "conversations": _turns(
        "Question?", OTHER_SPLIT)}])
    return ({"path": str(finetune), "images": str(data), "dedup_against": "lvis_instruct4v"},
            {"path": str(lvis), "images": str(data)})


def sharegpt4v(m: Maker, n: int) -> dict:
    data = m.root / "llava-data"
    coco = _coco(m, max(4, n // 3))
    rows = []
    for i in range(n):
        image = coco[i % len(coco)] if i % 2 else f"sam/images/sa_{i}.jpg"
        if i % 2 == 0:
            m.image(data / image)
        rows.append({"id": f"s4v{i}", "image": image, "conversations": _turns(
            "<image>\nWhat do you see happening in this image?", f"The image shows {m.words(20)}.")})
        m.expect("sharegpt4v")
    _plant(m.root / "ShareGPT4V" / "sharegpt4v_val.json", [{"id": "p", "image": coco[0], "conversations": _turns(
        "<image>\nWhat?", OTHER_SPLIT)}])
    return {"path": str(_dump(m.root / "ShareGPT4V" / "sharegpt4v_instruct_gpt4-vision_cap100k.json", rows)),
            "images": str(data)}


def lrv_instruction(m: Maker, n: int) -> dict:
    root = m.root / "LRV-Instruction"
    rows = []
    images = max(2, n // 3)
    for i in range(images):
        m.image(root / "image" / f"{2390000 + i}.jpg")
    m.image(root / "image" / "chart_1.png", "PNG")
    for i in range(n):
        image_id = "chart_1.png" if i == 0 else str(2390000 + i % images)
        rows.append({"image_id": image_id, "question": f"Is there a {m.words(2)} in the image?",
                     "answer": f"No, there is no {m.words(2)}; there is {m.words(3)}.", "task": "negative"})
        m.expect("lrv_instruction")
    rows.append({"image_id": "1", "question": "Is it blue?", "answer": "Yes."})
    m.expect("lrv_instruction", "missing_image")
    rows.append({"image_id": str(2390000), "question": "Is it red?", "answer": ""})
    m.expect("lrv_instruction", "empty_answer")
    _plant(root / "filter_cap_test.json", [{"image_id": str(2390000), "question": "Is it?", "answer": OTHER_SPLIT}])
    return {"path": str(_dump(root / "filter_cap1.json", rows)), "images": str(root / "image")}


def laion_gpt4v(m: Maker, n: int) -> dict:
    root = m.root / "laion-gpt4v"
    rows = []
    for i in range(n):
        link = f"https://example.com/images/{i}.jpg?size=large"
        m.image(root / "images" / f"{hashlib.sha1(link.encode()).hexdigest()}.jpg")
        rows.append({"link": link, "caption": f"The image shows {m.words(15)}."})
        m.expect("laion_gpt4v")
    m.image(root / "images" / "extra" / "mine.png", "PNG")
    rows.append({"link": "https://example.com/x.png", "caption": "A chart of sales.", "image": "extra/mine.png"})
    m.expect("laion_gpt4v")
    rows.append({"link": "https://example.com/not-downloaded.jpg", "caption": "A mountain."})
    m.expect("laion_gpt4v", "missing_image")
    rows.append({"link": "https://example.com/images/0.jpg?size=large", "caption": ""})
    m.expect("laion_gpt4v", "empty_answer")
    _jsonl(root / "gpt4v-dataset-test.jsonl", [{"link": rows[0]["link"], "caption": OTHER_SPLIT}])
    return {"path": str(_jsonl(root / "gpt4v-dataset.jsonl", rows)), "images": str(root / "images")}


def docvqa(m: Maker, n: int) -> dict:
    root = m.root / "DocVQA"
    docs = max(2, n // 3)
    for i in range(docs):
        m.image(root / "documents" / f"doc{i}_1.png", "PNG")
    data = [{"questionId": i, "question": f"What is the {m.words(2)} on the form?",
             "image": f"documents/doc{i % docs}_1.png", "docId": i % docs, "answers": [m.words(2), "x"],
             "data_split": "train"} for i in range(n)]
    for _ in data:
        m.expect("docvqa")
    data.append({"questionId": 900, "question": "What date?", "image": "documents/doc0_1.png", "answers": []})
    m.expect("docvqa", "empty_answer")
    data.append({"questionId": 901, "question": "What date?", "image": "documents/absent.png", "answers": ["1999"]})
    m.expect("docvqa", "missing_image")
    data.append({"questionId": 902, "question": f"{OTHER_SPLIT}?", "image": "documents/doc0_1.png",
                 "answers": ["x"], "data_split": "val"})
    m.expect("docvqa", "other_split")
    path = _dump(root / "train_v1.0_withQT.json", {"dataset_name": "docvqa", "dataset_split": "train",
                                                   "dataset_version": "1.0", "data": data})
    for split in ("val", "test"):
        _plant(root / f"{split}_v1.0_withQT.json", {"dataset_name": "docvqa", "dataset_split": split, "data": [
            {"questionId": 1, "question": f"{OTHER_SPLIT}?", "image": "documents/doc0_1.png", "answers": ["x"],
             "data_split": split}]})
    return {"path": str(path), "images": str(root)}


def synthdog(m: Maker, n: int) -> dict:
    rows = []
    for i in range(n):
        text = m.words(10)
        rows.append({"image": {"bytes": m.image_bytes("JPEG", 16), "path": f"{i}.jpg"},
                     "ground_truth": json.dumps({"gt_parse": {"text_sequence": text}})})
        m.expect("synthdog")
    rows.append({"image": {"bytes": m.image_bytes(), "path": None}, "ground_truth": "{broken"})
    m.expect("synthdog", "bad_json")
    rows.append({"image": {"bytes": m.image_bytes("JPEG", 16), "path": None}, "ground_truth": INVALID_UTF8})
    m.expect("synthdog")  # a Parquet string that is not UTF-8: kept, 1 x U+FFFD
    data = m.image_bytes("JPEG", 64)
    rows.append({"image": {"bytes": data[: len(data) // 2], "path": None},
                 "ground_truth": json.dumps({"gt_parse": {"text_sequence": "half"}})})
    m.expect("synthdog", "truncated_image")
    _parquet(m.root / "synthdog-en" / "data" / "validation-00000-of-00001.parquet", [
        {"image": {"bytes": m.image_bytes("JPEG", 16), "path": None},
         "ground_truth": json.dumps({"gt_parse": {"text_sequence": OTHER_SPLIT}})}])
    return {"path": str(_parquet(m.root / "synthdog-en" / "data" / "train-00000-of-00001.parquet", rows).parent)}


def chartqa(m: Maker, n: int) -> dict:
    root = m.root / "ChartQA Dataset" / "train"
    charts = max(2, n // 3)
    for i in range(charts):
        m.image(root / "png" / f"{41699051005 + i}.png", "PNG")
    human = [{"imgname": f"{41699051005 + i % charts}.png", "query": f"What is the value of {m.words(2)}?",
              "label": str(10 + i)} for i in range(n // 2)]
    augmented = [{"imgname": f"{41699051005 + i % charts}.png", "query": f"Which {m.words(1)} is highest?",
                  "label": m.words(1)} for i in range(n - n // 2)]
    for _ in human + augmented:
        m.expect("chartqa")
    human.append({"imgname": f"{41699051005}.png", "query": "What is the total?", "label": ""})
    m.expect("chartqa", "empty_answer")
    transparent_png(root / "png" / "transparent.png")
    human.append({"imgname": "transparent.png", "query": "What colour is the square?", "label": "red"})
    m.expect("chartqa")
    _dump(root / "train_human.json", human)
    _dump(root / "train_augmented.json", augmented)
    _plant(root / "val_human.json", [{"imgname": f"{41699051005}.png", "query": "Q?", "label": OTHER_SPLIT}])
    _plant(root / "test_augmented.json", [{"imgname": f"{41699051005}.png", "query": "Q?", "label": OTHER_SPLIT}])
    return {"path": str(root)}


def dvqa(m: Maker, n: int) -> dict:
    root = m.root / "DVQA"
    charts = max(2, n // 3)
    for i in range(charts):
        m.image(root / "images" / f"bar_train_{i:08d}.png", "PNG")
    rows = [{"image": f"bar_train_{i % charts:08d}.png", "question": f"How many bars have {m.words(1)}?",
             "answer": i % 7 if i % 2 else m.words(1), "question_id": i, "template_id": "data"}
            for i in range(n)]
    for _ in rows:
        m.expect("dvqa")
    rows.append({"image": "bar_train_99999999.png", "question": "Is it?", "answer": "no", "question_id": 99})
    m.expect("dvqa", "missing_image")
    m.image(root / "images" / "bar_val_easy_00000000.png", "PNG")
    rows.append({"image": "bar_val_easy_00000000.png", "question": "Is it?", "answer": OTHER_SPLIT, "question_id": 98})
    m.expect("dvqa", "other_split")
    for split in ("val_easy", "val_hard"):
        _plant(root / "qa" / f"{split}_qa.json", [{"image": f"bar_{split}_00000000.png", "question": "Is it?",
                                                  "answer": OTHER_SPLIT, "question_id": 1}])
    return {"path": str(_dump(root / "qa" / "train_qa.json", rows)), "images": str(root / "images")}


def ai2d(m: Maker, n: int) -> dict:
    root = m.root / "ai2d"
    diagrams = (n + 1) // 2  # two questions each; one more diagram, in the test split
    for i in range(diagrams + 1):
        m.image(root / "images" / f"{i}.png", "PNG")
        questions = {}
        for j in range(2 if i == diagrams else min(2, n - 2 * i)):
            marker = f" {OTHER_SPLIT}" if i == diagrams else ""
            questions[f"Which {m.words(1)} is shown {i}.{j}?{marker}"] = {
                "abcLabel": False, "answerTexts": [m.words(1), m.words(1), m.words(1), m.words(1)],
                "correctAnswer": (i + j) % 4, "questionId": f"{i}.png-{j}"}
            m.expect("ai2d", "accepted" if i < diagrams else "test_split")
        _dump(root / "questions" / f"{i}.png.json", {"imageName": f"{i}.png", "questions": questions})
    (root / "ai2d_test_ids.csv").write_text(f"{diagrams}\n")
    # abcLabel questions: the diagram's word labels become the letters the question asks about
    image = Image.new("RGB", (64, 48), (40, 120, 40))
    labels = root / "images" / "labels.png"
    image.save(labels)
    _dump(root / "annotations" / "labels.png.json", {"text": {
        "T0": {"id": "T0", "rectangle": [[4, 4], [28, 20]], "replacementText": "A", "value": "leaf"},
        "T1": {"id": "T1", "rectangle": [[36, 26], [60, 44]], "replacementText": "B", "value": "stem"}}})
    _dump(root / "questions" / "labels.png.json", {"imageName": "labels.png", "questions": {
        "Which label shows the leaf?": {"abcLabel": True, "answerTexts": ["A", "B"], "correctAnswer": 0,
                                        "questionId": "labels.png-0"}}})
    m.expect("ai2d")
    image.save(root / "images" / "unlabelled.png")
    _dump(root / "questions" / "unlabelled.png.json", {"imageName": "unlabelled.png", "questions": {
        "Which label shows the stem?": {"abcLabel": True, "answerTexts": ["A", "B"], "correctAnswer": 1,
                                        "questionId": "unlabelled.png-0"}}})
    m.expect("ai2d", "abc_label")  # no annotations/unlabelled.png.json: the letters cannot be drawn
    (root / "questions" / "broken.png.json").write_text("{")
    m.expect("ai2d", "bad_json")
    _dump(root / "questions" / "odd.png.json", {"imageName": "0.png", "questions": {
        "Which is it?": {"answerTexts": ["a", "b"], "correctAnswer": 5, "abcLabel": False, "questionId": "odd"}}})
    m.expect("ai2d", "bad_record")
    return {"path": str(root)}


def write_fixtures(root: Path, scale: int = 1, seed: int = 0, sizes: dict | None = None) -> tuple[dict, dict]:
    """Write every source's native layout under `root`; return (config `sources:`, expected outcomes)."""
    m = Maker(Path(root), seed)
    n = {"sharegpt": 4, "instructpix2pix": 4, "ip2p_parquet": 5, "llava_pretrain": 5, "llava_finetune": 8,
         "sharegpt4v": 4, "lrv_instruction": 4, "laion_gpt4v": 3, "docvqa": 4, "synthdog": 3, "chartqa": 4,
         "dvqa": 4, "ai2d": 4}
    n = {k: v * scale for k, v in n.items()} | (sizes or {})
    finetune, lvis = llava_finetune_and_lvis(m, n["llava_finetune"])
    sources = {
        "sharegpt": sharegpt(m, n["sharegpt"]),
        "instructpix2pix": instructpix2pix(m, n["instructpix2pix"]),
        "ip2p_parquet": instructpix2pix_parquet(m, n["ip2p_parquet"]) if HAVE_PYARROW else None,
        "llava_pretrain": llava_pretrain(m, n["llava_pretrain"]),
        "llava_finetune": finetune,
        "lvis_instruct4v": lvis,
        "sharegpt4v": sharegpt4v(m, n["sharegpt4v"]),
        "lrv_instruction": lrv_instruction(m, n["lrv_instruction"]),
        "laion_gpt4v": laion_gpt4v(m, n["laion_gpt4v"]),
        "docvqa": docvqa(m, n["docvqa"]),
        "synthdog": synthdog(m, n["synthdog"]) if HAVE_PYARROW else None,
        "chartqa": chartqa(m, n["chartqa"]),
        "dvqa": dvqa(m, n["dvqa"]),
        "ai2d": ai2d(m, n["ai2d"]),
    }
    sources = {name: source for name, source in sources.items() if source is not None}
    expected = {name: {"accepted": e["accepted"], "skipped": dict(e["skipped"]), "filtered": dict(e["filtered"])}
                for name, e in m.expected.items()}
    return sources, expected


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_config(path: Path, sources: dict, counts: dict | None = None, **settings) -> Path:
    """A mixture config over fixture sources; `counts` maps a source to `count` or `{"proportion": p}`."""
    spec = {}
    for name, source in sources.items():
        entry = dict(source)
        target = (counts or {}).get(name, "all")
        if isinstance(target, dict):
            entry.update(target)
        else:
            entry["count"] = target
        spec[name] = entry
    path.write_text(yaml.safe_dump({"seed": 0, "max_skip_rate": 0.9, **settings, "sources": spec}, sort_keys=False))
    return path
