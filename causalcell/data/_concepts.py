"""Concept-labelled cells at the AnnData edge: counts, size factors and each cell's level of
every concept (cell type, age, region, donor...) as integer codes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from causalcell.data import _checks as checks
from causalcell.preprocessing import variable_genes

__all__ = ["MISSING_LEVEL", "ConceptArrays", "concept_arrays"]

#: Code of a missing label (NaN in ``.obs``).
MISSING_LEVEL = -1


class ConceptArrays(NamedTuple):
    """The arrays of concept-labelled cells (``n`` cells, ``d`` genes, ``K`` concepts)."""

    counts: np.ndarray  #: float32 ``[n, d]``, dense
    size_factors: np.ndarray  #: float32 ``[n]``
    labels: np.ndarray  #: int32 ``[n, K]``: level index, :data:`MISSING_LEVEL` if missing
    levels: dict[str, tuple[str, ...]]  #: level names of each concept, in ``concepts`` order
    genes: tuple[str, ...]


def concept_arrays(
    adata,
    concepts: Sequence[str],
    *,
    layer: str | None = None,
    size_factor_key: str | None = None,
    levels: Mapping[str, Sequence[str]] | None = None,
    genes: int | Sequence[str] | None = None,
    count_data: bool = True,
) -> ConceptArrays:
    """Read counts and concept labels from ``adata`` (not modified).

    Parameters
    ----------
    adata
        Cells with one ``.obs`` column per concept (categorical, strings or numbers; NaN for
        a missing label).
    concepts
        The ``.obs`` columns that hold concepts.
    layer, size_factor_key
        Counts (``.X`` by default) and size factors (library sizes by default).
    levels
        Level names of each concept (a fitted model's); by default the column's categories
        (or its sorted values). A label outside them raises.
    genes
        Genes to read: names, in this order (a fitted model's); a number ``n``: the ``n`` most
        variable genes (:func:`causalcell.preprocessing.variable_genes`, chosen on the sparse
        matrix before any gene is densified), in ``.var`` order; every gene by default.
    count_data
        Check counts as non-negative integers.

    Raises
    ------
    ValueError
        For an empty AnnData, a missing column, a concept named twice, labels outside
        ``levels``, genes missing from ``adata`` or invalid counts: each names the fix.
    """
    checks.check_not_empty(adata)
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Name at least one concept: concepts=['cell_type', ...].")
    if len(set(concepts)) != len(concepts):
        raise ValueError(f"concepts names a column twice: {concepts}.")
    columns = list(adata.obs.columns)
    for concept in concepts:
        checks.require_key(concept, columns, where="adata.obs", argument="concepts")
    if size_factor_key is not None:
        checks.require_key(size_factor_key, columns, where="adata.obs", argument="size_factor_key")
    all_genes = checks.gene_names(adata, None)
    named = genes is not None and not isinstance(genes, int | np.integer)
    if named:
        position = {gene: index for index, gene in enumerate(all_genes)}
        missing = [gene for gene in genes if gene not in position]
        if missing:
            raise ValueError(
                f"{len(missing)} gene(s) are not in adata.var_names: {checks.listing(missing)}. "
                "Pass cells measured on the model's genes."
            )
    elif genes is not None and genes < 1:
        raise ValueError(f"genes must be a positive number or a list of names, got {genes}.")
    codes, found = [], {}
    for concept in concepts:
        given = None if levels is None else tuple(map(str, levels[concept]))
        column_codes, found[concept] = _codes(adata.obs[concept], concept, given)
        codes.append(column_codes)
    matrix = checks.counts_matrix(adata, layer)
    checks.check_counts(matrix, adata=adata, genes=all_genes, layer=layer, count_data=count_data)
    sizes = checks.size_factors(adata, matrix, size_factor_key, count_data)
    if named:
        chosen = np.array([position[gene] for gene in genes], dtype=int)
    elif genes is None or genes >= len(all_genes):
        chosen = np.arange(len(all_genes))
    else:
        chosen = np.sort(variable_genes(matrix, sizes)[:genes])
    selected = matrix[:, chosen]
    dense = selected.toarray() if hasattr(selected, "toarray") else np.asarray(selected)
    return ConceptArrays(
        counts=dense.astype(np.float32),
        size_factors=np.asarray(sizes, np.float32),
        labels=np.stack(codes, axis=1).astype(np.int32),
        levels=found,
        genes=tuple(all_genes[index] for index in chosen),
    )


def _codes(column: pd.Series, concept: str, levels: tuple[str, ...] | None):
    """Level codes of one concept column (NaN: :data:`MISSING_LEVEL`) and its level names."""
    missing = column.isna().to_numpy()
    if levels is None:
        if isinstance(column.dtype, pd.CategoricalDtype):
            levels = tuple(map(str, column.cat.categories))
        else:
            levels = tuple(sorted(map(str, pd.unique(column[~missing]))))
    text = column.astype(str).where(~missing)
    codes = pd.Categorical(text, categories=list(levels)).codes.astype(np.int32)
    unknown = ~missing & (codes < 0)
    if unknown.any():
        values = sorted(set(text[unknown]))
        raise ValueError(
            f".obs[{concept!r}] has levels the model was not fitted on: "
            f"{checks.listing(values)}; its levels are {checks.listing(list(levels))}."
        )
    codes[missing] = MISSING_LEVEL
    if len(levels) < 2:
        raise ValueError(
            f".obs[{concept!r}] has {len(levels)} level(s); a concept needs at least 2 (drop it)."
        )
    return codes, levels
