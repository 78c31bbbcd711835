"""Shared data of the concept-model tests."""

import anndata
import numpy as np
import pandas as pd
import pytest


def _linear_gaussian_cells(cells: int, genes: int, seed: int) -> anndata.AnnData:
    """Values already on a log scale: a drug (levels a, b, c) moves every gene linearly (b up,
    c down, by ``linspace(-1, 1)`` across genes), a batch (x, y) does nothing, noise sd 0.3."""
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "drug": pd.Categorical(rng.choice(["a", "b", "c"], cells)),
            "batch": pd.Categorical(rng.choice(["x", "y"], cells)),
        },
        index=[f"c{i}" for i in range(cells)],
    )
    effect = obs["drug"].map({"a": 0.0, "b": 1.0, "c": -1.0}).to_numpy(float)
    values = rng.normal(0.0, 0.3, (cells, genes)) + np.outer(effect, np.linspace(-1, 1, genes))
    return anndata.AnnData(values.astype(np.float32), obs=obs)


@pytest.fixture(scope="module")
def linear_gaussian_cells():
    """``make(cells, genes, seed)``: cells of :func:`_linear_gaussian_cells`."""
    return _linear_gaussian_cells
