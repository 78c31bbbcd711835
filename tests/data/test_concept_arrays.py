"""Concept labels and counts at the AnnData edge."""

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse

from causalcell.data import MISSING_LEVEL, concept_arrays
from causalcell.preprocessing import variable_genes


def _cells():
    rng = np.random.default_rng(0)
    counts = rng.poisson(2.0, (6, 5)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "age": pd.Categorical(["4w", "90w", "4w", "90w", "4w", "90w"], ["4w", "90w"]),
            "donor": ["b", "a", "b", None, "a", "c"],
        },
        index=[f"c{i}" for i in range(6)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(5)])
    return anndata.AnnData(scipy.sparse.csr_matrix(counts), obs=obs, var=var)


def test_levels_codes_and_missing_labels():
    adata = _cells()
    before = adata.obs.copy()
    arrays = concept_arrays(adata, ["donor", "age"])
    assert arrays.levels == {"donor": ("a", "b", "c"), "age": ("4w", "90w")}
    np.testing.assert_array_equal(arrays.labels[:, 0], [1, 0, 1, MISSING_LEVEL, 0, 2])
    np.testing.assert_array_equal(arrays.labels[:, 1], [0, 1, 0, 1, 0, 1])
    np.testing.assert_allclose(arrays.size_factors, adata.X.toarray().sum(1))
    pd.testing.assert_frame_equal(adata.obs, before)  # not modified
    fitted = concept_arrays(adata, ["donor"], levels={"donor": ("c", "b", "a")})
    np.testing.assert_array_equal(fitted.labels[:, 0], [1, 2, 1, MISSING_LEVEL, 2, 0])


def test_genes_by_name_or_by_variance():
    adata = _cells()
    named = concept_arrays(adata, ["age"], genes=["g4", "g1"])
    assert named.genes == ("g4", "g1")
    np.testing.assert_array_equal(named.counts, adata.X.toarray()[:, [4, 1]])
    top = concept_arrays(adata, ["age"], genes=2)
    ranked = variable_genes(adata.X.toarray())
    assert top.genes == tuple(f"g{i}" for i in sorted(ranked[:2]))
    np.testing.assert_array_equal(variable_genes(adata.X), ranked)  # sparse path agrees


def test_bad_concepts_are_named():
    adata = _cells()
    with pytest.raises(KeyError, match="tissue"):
        concept_arrays(adata, ["tissue"])
    with pytest.raises(ValueError, match="not fitted on"):
        concept_arrays(adata, ["donor"], levels={"donor": ("a", "b")})
    with pytest.raises(ValueError, match="twice"):
        concept_arrays(adata, ["age", "age"])
    with pytest.raises(ValueError, match="not in adata"):
        concept_arrays(adata, ["age"], genes=["g9"])
    one = adata.copy()
    one.obs["only"] = "x"
    with pytest.raises(ValueError, match="at least 2"):
        concept_arrays(one, ["only"])
