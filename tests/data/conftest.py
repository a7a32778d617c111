"""Fixtures for the data tests: miniature native layouts of every source, written once per session."""

from __future__ import annotations

import sys

import pytest

from native_fixtures import ROOT, SCALED_PROPORTIONS, SCALED_SIZES, SCALED_TOTAL, write_config, write_fixtures

if str(ROOT) not in sys.path:  # `pytest tests/data` without the package installed
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    """(sources, expected outcomes, folder) of the handful-of-records fixture."""
    root = tmp_path_factory.mktemp("mini")
    sources, expected = write_fixtures(root / "src")
    return sources, expected, root


@pytest.fixture
def mini_config(mini, tmp_path):
    """Write a config over the mini fixture: mini_config(counts=None, only=None, **settings) -> path."""
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

    root = tmp_path_factory.mktemp("scaled")
    sources, _ = write_fixtures(root / "src", sizes=SCALED_SIZES, seed=1)
    config = write_config(root / "mix.yaml", sources, {k: {"proportion": p} for k, p in SCALED_PROPORTIONS.items()},
                          total=SCALED_TOTAL, shard_size=100, chunk_size=500, max_skip_rate=0.2)
    manifest = build_mixture(config, root / "out")
    return root / "out", manifest
