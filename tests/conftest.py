"""Shared fixtures: small prepared graphs written to temporary folders."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from distgnn.core.config import PrepareConfig, SyntheticConfig
from distgnn.data.prepare import prepare

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY_SYNTHETIC = SyntheticConfig(
    num_users=800, num_items=600, mean_interactions=25, num_factors=8, taste_strength=4.0, seed=3
)


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory) -> Path:
    """800 users x 600 items of planted-taste synthetic data, random 80/10/10 split."""
    out = tmp_path_factory.mktemp("graphs") / "tiny"
    return prepare(PrepareConfig(output=str(out), synthetic=TINY_SYNTHETIC))


def shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path
