"""Fixtures for the data tests: miniature native layouts of every source, written once per session."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `pytest tests/data` without an installed package
    sys.path.insert(0, str(ROOT))

from native_fixtures import write_config, write_fixtures  # noqa: E402

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
SCALED_TOTAL = 3000
SCALED_SIZES = {"sharegpt": 70, "instructpix2pix": 130, "ip2p_parquet": 120, "llava_pretrain": 850,
                "llava_finetune": 700, "sharegpt4v": 170, "lrv_instruction": 200, "laion_gpt4v": 100,
                "docvqa": 130, "synthdog": 100, "chartqa": 130, "dvqa": 170, "ai2d": 115}


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    """(sources, expected outcomes, folder) of the handful-of-records fixture."""
    pytest.importorskip("pyarrow")  # the InstructPix2Pix and SynthDoG fixtures are Parquet, as distributed
    root = tmp_path_factory.mktemp("mini")
    sources, expected = write_fixtures(root / "src")
    return sources, expected, root


@pytest.fixture
def mini_config(mini, tmp_path):
    """Write a config over the mini fixture: mini_config(counts=None, **settings) -> path."""
    sources = mini[0]

    def make(counts=None, only=None, **settings):
        chosen = {k: v for k, v in sources.items() if only is None or k in only}
        settings = {"shard_size": 8, "chunk_size": 6, **settings}
        return write_config(tmp_path / f"mix-{len(list(tmp_path.glob('mix-*')))}.yaml", chosen, counts, **settings)

    return make


@pytest.fixture(scope="session")
def scaled(tmp_path_factory):
    """A mixture built from a fixture of thousands of records, with the paper's task proportions."""
    from genllava.data.build import build_mixture

    pytest.importorskip("pyarrow")
    root = tmp_path_factory.mktemp("scaled")
    sources, _ = write_fixtures(root / "src", sizes=SCALED_SIZES, seed=1)
    config = write_config(root / "mix.yaml", sources, {k: {"proportion": p} for k, p in SCALED_PROPORTIONS.items()},
                          total=SCALED_TOTAL, shard_size=100, chunk_size=500, max_skip_rate=0.2)
    manifest = build_mixture(config, root / "out")
    return root / "out", manifest


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
