"""Checks behind :mod:`causalcell.data`: every error names the problem and the fix.

Private: these helpers read an AnnData (never modify it) and raise ``KeyError``/``ValueError``
with messages written for the person holding the AnnData.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from causalcell._core.counts import find_invalid_entries
from causalcell._core.names import close_matches, listing, require_key
from causalcell.preprocessing import library_size

#: Substrings that often mark control labels in screens (for the "no control cells" hint).
CONTROL_HINTS = ("ctrl", "control", "targeting", "scramble", "safe")


def is_numeric(column: pd.Series) -> bool:
    """Whether an ``.obs`` column holds numbers (bool columns are categories, not numbers)."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def check_not_empty(adata) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(
            f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); at least one "
            "cell and one gene are needed. Check the filtering steps that produced it."
        )


def gene_names(adata, gene_key: str | None) -> tuple[str, ...]:
    """Gene names from ``adata.var[gene_key]`` or ``adata.var_names``, checked for uniqueness."""
    if gene_key is None:
        names, source = adata.var_names, ".var_names"
    else:
        require_key(gene_key, list(adata.var.columns), where="adata.var", argument="gene_key")
        names, source = adata.var[gene_key], f".var[{gene_key!r}]"
        if names.isna().any():
            raise ValueError(
                f"{source} has {int(names.isna().sum())} missing gene names; fill them or "
                "pass gene_key=None to use .var_names."
            )
    genes = tuple(str(name) for name in names)
    duplicated = {name: count for name, count in Counter(genes).items() if count > 1}
    if duplicated:
        fix = (
            "call adata.var_names_make_unique() or pass gene_key= with a column of unique names"
            if gene_key is None
            else "make that column unique or pass gene_key=None to use .var_names"
        )
        raise ValueError(
            f"Duplicate gene names in {source}: {listing(list(duplicated.items()))} "
            f"(name, count). Gene names must be unique: {fix}."
        )
    return genes


def counts_matrix(adata, layer: str | None):
    """The count matrix: ``adata.layers[layer]``, or ``adata.X`` when ``layer`` is None."""
    if layer is not None:
        require_key(
            layer,
            list(adata.layers.keys()),
            where="adata.layers",
            argument="layer",
            also=", or layer=None to use .X",
        )
        return adata.layers[layer]
    if adata.X is None:
        raise ValueError(
            f"adata.X is None; pass layer= with one of {listing(list(adata.layers.keys()))}."
        )
    return adata.X


def check_counts(counts, *, adata, genes: Sequence[str], layer: str | None, count_data: bool):
    """Raise unless every entry is finite (and, for count data, a non-negative integer).

    Sparse input is checked through its stored values only (never densified).
    """
    try:
        invalid = find_invalid_entries(counts, count_data=count_data)
    except TypeError as error:
        raise ValueError(str(error)) from None  # a data problem at the AnnData edge
    if invalid is None:
        return
    source = ".X" if layer is None else f".layers[{layer!r}]"
    summary = ", ".join(f"{number} {name}" for name, number in invalid.problems.items())
    layers = list(adata.layers.keys())
    fix = (
        "The count models need raw counts: pass layer= naming the raw counts "
        f"({f'layers: {listing(layers)}' if layers else 'this AnnData has no layers'}), "
        "or count_data=False for normalised data."
        if count_data
        else "Replace or drop the affected cells or genes."
    )
    raise ValueError(
        f"{source} has entries that are not valid {'counts' if count_data else 'values'} "
        f"({summary}); the first is {invalid.value!r} at cell "
        f"{str(adata.obs_names[invalid.row])!r}, gene {genes[invalid.column]!r}. {fix}"
    )


def size_factors(adata, counts, size_factor_key: str | None, count_data: bool = True):
    """Per-cell size factors (``obs[size_factor_key]``, library sizes, or ones for continuous
    data, which have no library size), checked positive."""
    if size_factor_key is None and not count_data:
        return np.ones(counts.shape[0])
    if size_factor_key is None:
        values = library_size(counts)
        problem = "have a library size (total counts) that is not positive"
        fix = (
            "Remove cells without counts before registering, e.g. with "
            "scanpy.pp.filter_cells(adata, min_counts=1), or pass size_factor_key=."
        )
    else:
        column = adata.obs[size_factor_key]  # presence checked with the other keys
        if not is_numeric(column):
            raise ValueError(
                f".obs[{size_factor_key!r}] has dtype {column.dtype}; size factors must be numbers."
            )
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        problem = f"have a size factor in .obs[{size_factor_key!r}] that is not positive and finite"
        fix = "Fix or drop those cells, or pass size_factor_key=None to use library sizes."
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} cell(s) {problem} (first: cell {str(adata.obs_names[first])!r}, "
            f"value {float(values[first])!r}). {fix}"
        )
    return values


def control_hint(labels: Sequence, control: Sequence[str]) -> str:
    """Suggest labels that look like controls, for the "no control cells" error."""
    suggestions = [match for label in control for match in close_matches(label, labels)]
    suggestions += [
        label
        for label in labels
        if isinstance(label, str) and any(hint in label.lower() for hint in CONTROL_HINTS)
    ]
    suggestions = list(dict.fromkeys(suggestions))[:5]
    return f" Did you mean control={suggestions[0]!r}?" if suggestions else ""


#: Separators of combined labels that other tools write ("GATA1_CEBPA", "A;B", "A|B").
SEPARATORS = ("_", ";", ",", "|", "-", "+")


def targets_hint(adata, missing: Sequence[str], genes: Sequence[str], gene_key: str | None) -> str:
    """Close gene names, the separator that splits every missing target into genes, and a
    ``.var`` column holding every missing target, where they exist."""
    hints = []
    for target in missing[:3]:
        matches = close_matches(target, genes)
        if matches:
            hints.append(f"{target!r} ~ {matches[0]!r}")
    text = f" Close gene names: {', '.join(hints)}." if hints else ""
    for separator in SEPARATORS:
        parts = [target.split(separator) for target in missing]
        if all(len(names) > 1 and set(names) <= set(genes) for names in parts):
            text += (
                f" They read as combinations of genes joined by {separator!r} (e.g. "
                f"{missing[0]!r}): pass separator={separator!r}."
            )
            break
    candidates = {None: adata.var_names} if gene_key is not None else {}
    candidates.update({column: adata.var[column] for column in adata.var.columns})
    for column, names in candidates.items():
        if column != gene_key and set(missing) <= set(names.astype(str)):
            where = ".var_names hold" if column is None else f".var column {column!r} holds"
            text += f" The {where} all of them: pass gene_key={column!r}."
            break
    return text
