"""The one check of count matrices, shared by :mod:`causalcell.data` and :mod:`causalcell.noise`."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import sparse

__all__ = ["InvalidEntries", "find_invalid_entries"]

#: Problems in the order they are reported, with the fix each one calls for.
PROBLEM_FIXES = {
    "non-finite": "Counts must be finite (no NaN or infinity): look for missing values in the "
    "input layer, or drop the cells or genes that hold them.",
    "negative": "Counts must be non-negative: pass raw counts (e.g. adata.layers['counts']), not "
    "centred or scaled data.",
    "non-integer": "Counts must be whole numbers: these look normalised or log-transformed; pass "
    "raw counts (e.g. adata.layers['counts']).",
}


class InvalidEntries(NamedTuple):
    """What is wrong with a matrix: problem -> number of entries, and the first bad entry."""

    problems: dict[str, int]
    row: int
    column: int
    value: float


def find_invalid_entries(counts, *, count_data: bool = True) -> InvalidEntries | None:
    """Find non-finite entries (and, for count data, negative or non-integer ones).

    Sparse input is checked through its stored values only, never made dense. Returns None when
    every entry is valid; the first bad entry is the first in row-major order.

    Raises
    ------
    TypeError
        If the values are not numbers.
    """
    if sparse.issparse(counts):
        counts = counts if counts.format in ("csr", "csc", "coo") else counts.tocoo()
        values = np.asarray(counts.data)
    else:
        counts = np.asarray(counts)
        values = counts.reshape(-1)
    if values.dtype.kind not in "biuf":
        raise TypeError(f"Counts must be numbers, got an array of dtype {values.dtype}.")
    masks = {}
    if values.dtype.kind == "f":
        masks["non-finite"] = ~np.isfinite(values)
    if count_data and values.dtype.kind in "if":
        masks["negative"] = values < 0
    if count_data and values.dtype.kind == "f":
        masks["non-integer"] = np.isfinite(values) & (values != np.round(values))
    found = {name: mask for name, mask in masks.items() if mask.any()}
    if not found:
        return None
    bad = np.logical_or.reduce(list(found.values()))
    if sparse.issparse(counts):
        coordinates = counts.tocoo()  # same entry order as ``counts.data`` for csr/csc/coo
        rows, columns = coordinates.row[bad], coordinates.col[bad]
        first = np.lexsort((columns, rows))[0]
        row, column, value = int(rows[first]), int(columns[first]), values[bad][first]
    else:
        position = int(np.flatnonzero(bad)[0])
        index = np.unravel_index(position, counts.shape) if counts.ndim else (0,)
        row, column = int(index[0]), int(index[-1]) if len(index) > 1 else 0
        value = values[position]
    problems = {name: int(mask.sum()) for name, mask in found.items()}
    return InvalidEntries(problems, row, column, value.item())
