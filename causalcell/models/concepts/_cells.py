"""AnnData of a concept model's cells: the concept columns of generated and counterfactual
cells, and the factual and counterfactual worlds side by side."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import scipy.sparse

from causalcell.models.concepts._scm import ConceptSpec

__all__ = ["cells_anndata", "combination_codes", "concept_obs", "worlds_anndata"]


def concept_obs(spec: ConceptSpec, seen, levels: np.ndarray, index) -> pd.DataFrame:
    """One categorical column per concept from level codes ``[n, K]`` (NaN where missing,
    ``-1``), and ``unseen``: whether the combination is outside ``seen`` (the training cells'
    combinations; never for a cell lacking a label)."""
    obs = pd.DataFrame(
        {
            name: pd.Categorical.from_codes(levels[:, concept], list(spec.levels[concept]))
            for concept, name in enumerate(spec.names)
        },
        index=index,
    )
    unseen = ~np.isin(combination_codes(spec, levels), combination_codes(spec, seen))
    obs["unseen"] = unseen & (np.asarray(levels) >= 0).all(axis=1)
    return obs


def combination_codes(spec: ConceptSpec, levels) -> np.ndarray:
    """One integer per row of level codes ``[n, K]`` (or a set of such tuples): the
    combination's index in the mixed radix of the concepts' level counts."""
    levels = np.asarray(sorted(levels) if isinstance(levels, set) else levels, np.int64)
    radix = np.cumprod((1, *spec.sizes[:-1]))
    return levels.reshape(-1, len(spec.sizes)) @ radix


def cells_anndata(spec: ConceptSpec, seen, genes, counts, levels, index=None) -> anndata.AnnData:
    """Cells with ``counts`` ``[n, G]`` (CSR) and concept ``levels`` ``[n, K]``; rows
    ``generated<i>`` unless ``index`` names them."""
    index = [f"generated{i}" for i in range(len(levels))] if index is None else index
    obs = concept_obs(spec, seen, levels, index)
    var = pd.DataFrame(index=list(genes))
    return anndata.AnnData(scipy.sparse.csr_matrix(counts), obs=obs, var=var)


def worlds_anndata(spec: ConceptSpec, seen, genes, cells, data, labels, parts) -> anndata.AnnData:
    """Factual rows (the observed cells) then counterfactual rows, from the chunks ``parts``
    of :meth:`ConceptModel.counterfactual` (see its Returns)."""
    names = list(map(str, cells.obs_names))
    # [S, n, K] each: the draws' factual levels (observed labels, or drawn where missing)
    # and counterfactual levels; the rows show the observed labels and draw 0's.
    factual_share = np.concatenate(parts["factual_share"], axis=1)
    share = np.concatenate(parts["share"], axis=1)
    factual = concept_obs(spec, seen, labels, [f"{name}:factual" for name in names])
    changed = concept_obs(spec, seen, share[0], [f"{name}:counterfactual" for name in names])
    for frame, world in ((factual, "factual"), (changed, "counterfactual")):
        frame.insert(0, "cell", names)
        frame.insert(0, "world", world)
    counts = np.concatenate([np.asarray(data["counts"]), np.concatenate(parts["counts"])])
    result = anndata.AnnData(
        scipy.sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.concat([factual, changed]),
        var=pd.DataFrame(index=list(genes)),
    )
    zeros = np.zeros((len(names), len(genes)), np.float32)
    for field in ("mean", "lower", "upper"):
        values = np.concatenate(parts[field]).astype(np.float32)
        result.layers[f"shift_{field}"] = np.concatenate([zeros, values])
    for concept, name in enumerate(spec.names):
        one_hot = np.eye(spec.sizes[concept])
        result.obsm[f"level_probability_{name}"] = np.concatenate(
            [one_hot[factual_share[..., concept]].mean(0), one_hot[share[..., concept]].mean(0)]
        )
    return result
