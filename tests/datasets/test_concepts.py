"""``simulate_concepts``: concept-labelled counts from a known concept SCM, whose every
counterfactual is known (the cells' own noise, new concept values)."""

import anndata
import networkx as nx
import numpy as np
import pandas as pd
import pytest

from causalcell.datasets import DEFAULT_CONCEPTS, concept_truth, simulate_concepts
from causalcell.graph import CyclicGraphError

#: The truth is recomputed in float64 from the stored noise; layers["log_rate"] is float32.
FLOAT32 = 1e-5


@pytest.fixture(scope="module")
def cells():
    return simulate_concepts(3000, 60, key=1)


def test_cells_carry_every_concept_their_counts_and_their_noise(cells):
    assert list(cells.obs.columns) == [*DEFAULT_CONCEPTS, "size_factor"]
    for concept, levels in DEFAULT_CONCEPTS.items():
        assert list(cells.obs[concept].cat.categories) == list(levels)
        assert cells.obsm[f"gumbel_{concept}"].shape == (3000, len(levels))
    counts = cells.X.toarray()
    assert (counts >= 0).all() and np.array_equal(counts, np.round(counts))
    again = simulate_concepts(3000, 60, key=1)
    np.testing.assert_array_equal(again.X.toarray(), counts)  # same key, same data


def test_parents_shape_their_children(cells):
    # age -> cell_type: the law of cell type differs between ages (by more than sampling noise
    # of ~1,500 cells per age, whose standard error on a frequency is at most 0.013).
    table = pd.crosstab(cells.obs["age"], cells.obs["cell_type"], normalize="index")
    assert np.abs(table.iloc[0] - table.iloc[1]).max() > 0.1


def test_no_intervention_gives_back_the_factual_cells(cells):
    truth = concept_truth(cells)
    world = truth.counterfactual(cells, {})
    np.testing.assert_allclose(world["log_rate"], cells.layers["log_rate"], atol=FLOAT32)
    for concept in DEFAULT_CONCEPTS:
        assert (world["concepts"][concept] == cells.obs[concept]).all()


def test_an_intervention_moves_descendants_only(cells):
    truth = concept_truth(cells)
    world = truth.counterfactual(cells, {"age": "90w"})
    moved = world["concepts"]
    assert (moved["age"] == "90w").all()
    for concept in ("region", "donor", "batch"):  # not descendants of age
        assert (moved[concept] == cells.obs[concept]).all()
    changed = moved["cell_type"] != cells.obs["cell_type"]
    assert changed.any()  # the child follows its parent for some cells
    assert not changed[cells.obs["age"] == "90w"].any()  # already 90 weeks: nothing moves
    # A leaf (batch) moves only itself; the other concepts' embeddings and the cell's log-rates
    # change only through batch's own embedding.
    leaf = truth.counterfactual(cells, {"batch": "b2"})["concepts"]
    for concept in ("age", "region", "cell_type", "donor"):
        assert (leaf[concept] == cells.obs[concept]).all()


def test_the_truth_survives_an_h5ad_round_trip_and_a_subset(cells, tmp_path):
    path = tmp_path / "concepts.h5ad"
    cells.write_h5ad(path)
    loaded = anndata.read_h5ad(path)
    expected = concept_truth(cells).counterfactual(cells, {"region": "cortex"})["log_rate"]
    found = concept_truth(loaded).counterfactual(loaded, {"region": "cortex"})["log_rate"]
    np.testing.assert_array_equal(found, expected)
    subset = cells[100:110]
    # Same noise, same numbers; a matrix product over 10 rows instead of 3,000 may round the
    # last float64 bit differently.
    np.testing.assert_allclose(
        concept_truth(cells).counterfactual(subset, {"region": "cortex"})["log_rate"],
        expected[100:110],
        rtol=1e-12,
    )


def test_bad_requests_are_named(cells):
    truth = concept_truth(cells)
    with pytest.raises(KeyError, match="No concept 'tissue'"):
        truth.counterfactual(cells, {"tissue": "brain"})
    with pytest.raises(ValueError, match="'age' has no level '12w'"):
        truth.counterfactual(cells, {"age": "12w"})
    with pytest.raises(KeyError, match="exogenous noise"):
        truth.counterfactual(anndata.AnnData(np.ones((2, 60), np.float32)), {})
    with pytest.raises(CyclicGraphError):
        simulate_concepts(
            10,
            5,
            concepts={"a": ("x", "y"), "b": ("x", "y")},
            graph=nx.DiGraph([("a", "b"), ("b", "a")]),
        )
    with pytest.raises(ValueError, match="are not the concepts"):
        simulate_concepts(10, 5, graph=nx.DiGraph([("age", "cell_type")]))
    with pytest.raises(KeyError, match="simulate_concepts"):
        concept_truth(anndata.AnnData(np.ones((2, 2), np.float32)))
