"""The shapes world's understanding questions as local lmms-eval tasks (a YAML per task and a
local JSON dataset), for `lmms-eval --include_path DIR --tasks shapes_qa,shapes_mc`.

- `shapes_qa` (generate_until): the questions of `genllava eval shapes` (same seed, same records),
  scored by the same exact match after normalising; its score is eval shapes' understanding
  accuracy on the same model.
- `shapes_mc` (multiple_choice, through loglikelihood): the same questions with every possible
  answer of their kind as the choices (colours, shapes, positions, counts, yes/no).

Everything lies in the folder: images as PNG, `shapes.json`, the two YAMLs and `utils.py`, so the
tasks run offline.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.conversation import parse_turn
from ..shapes.tasks import make_eval_records
from ..shapes.world import COLORS, NUMBER_WORDS, POSITIONS, SHAPES

CHOICES = {
    "color_of_shape": list(COLORS), "color_at_position": list(COLORS), "shape_at_position": list(SHAPES),
    "position_of_shape": list(POSITIONS), "count": list(NUMBER_WORDS[1:3]), "is_there": ["yes", "no"],
}

UTILS = '''"""doc_to_* and scoring for the shapes-world tasks (written by genllava.eval.lmms_shapes_tasks)."""
import os

from PIL import Image

from genllava.eval.shapes_eval import normalise

HERE = os.path.dirname(os.path.abspath(__file__))


def doc_to_visual(doc):
    return [Image.open(os.path.join(HERE, doc["image"])).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def doc_to_choice(doc):
    return doc["choices"]


def doc_to_target(doc):
    return doc["label"]


def process_results(doc, results):
    return {"exact_match": float(normalise(results[0]) == normalise(doc["answer"]))}
'''

QA_YAML = """task: shapes_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  until: ["</s>"]  # as eval shapes: an answer ends at the end-of-sequence token
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""

MC_YAML = """task: shapes_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: !function utils.doc_to_choice
doc_to_target: !function utils.doc_to_target
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
"""


def shapes_docs(seed: int, samples: int) -> tuple[list[dict], list[dict]]:
    """(records, docs): `genllava eval shapes`' understanding records and one doc per record."""
    records = make_eval_records("understanding", samples, seed)
    docs = []
    for index, record in enumerate(records):
        kind, answer = record["meta"]["question_kinds"][0], record["meta"]["answers"][0]
        choices = CHOICES[kind]
        docs.append({"id": record["id"], "image": f"images/{index:05d}.png",
                     "question": parse_turn(record["conversations"][0]).text, "answer": answer, "kind": kind,
                     "choices": choices, "label": choices.index(answer)})
    return records, docs


def write_shapes_tasks(folder: str | Path, seed: int = 1, samples: int = 50, max_new_tokens: int = 32) -> list[dict]:
    """Writes the tasks into `folder` (the --include_path); returns the records they ask about."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records, docs = shapes_docs(seed, samples)
    for record, doc in zip(records, docs):
        record["image"].save(folder / doc["image"])
    data = folder / "shapes.json"
    data.write_text(json.dumps(docs, indent=1) + "\n")
    (folder / "utils.py").write_text(UTILS)
    (folder / "shapes_qa.yaml").write_text(QA_YAML.format(data=json.dumps(str(data.resolve())),
                                                          max_new_tokens=max_new_tokens))
    (folder / "shapes_mc.yaml").write_text(MC_YAML.format(data=json.dumps(str(data.resolve()))))
    return records
