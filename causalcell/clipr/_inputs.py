"""Validation of CLIPR inputs: response matrices, gene names and the perturbed gene of each column.

Everything here copies its inputs (never mutates them) and raises a ``ValueError`` that names
the problem and the fix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from causalcell._core.names import did_you_mean

__all__ = []


class Screen(NamedTuple):
    """Validated responses of one screen (or of its posterior draws).

    Attributes
    ----------
    responses
        float64 copy ``[draws, genes, perturbations]`` (one draw for a point estimate).
    genes
        Names of the ``d`` measured genes (rows).
    targets
        Name of the perturbed gene of each column, in column order.
    target_index
        int ``[perturbations]``: row index of each column's perturbed gene.
    """

    responses: np.ndarray
    genes: tuple
    targets: tuple
    target_index: np.ndarray


def _is_integer(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_genes(genes: Sequence[Hashable] | None, num_genes: int) -> tuple:
    if genes is None:
        return tuple(f"g{index}" for index in range(num_genes))
    names = tuple(genes)
    if len(names) != num_genes:
        raise ValueError(
            f"genes has {len(names)} names but the responses have {num_genes} rows (genes); "
            "pass one name per row."
        )
    duplicated = [name for name, count in Counter(names).items() if count > 1]
    if duplicated:
        raise ValueError(f"genes must be unique; duplicated: {duplicated}.")
    return names


def _resolve_targets(targets: Sequence, genes: tuple) -> np.ndarray:
    """Row index of each target: a gene name, or else an integer row index."""
    position = {name: index for index, name in enumerate(genes)}
    indices = []
    for target in targets:
        if isinstance(target, Hashable) and target in position:
            indices.append(position[target])
        elif _is_integer(target) and 0 <= int(target) < len(genes):
            indices.append(int(target))
        else:
            raise ValueError(
                f"Target {target!r} is neither a gene name nor a row index in [0, "
                f"{len(genes)}).{did_you_mean(target, genes)} Each target names the perturbed "
                "gene of one column."
            )
    index = np.asarray(indices, dtype=int)
    counts = Counter(index.tolist())
    duplicated = [genes[row] for row, count in counts.items() if count > 1]
    if duplicated:
        raise ValueError(
            f"Genes {duplicated} are perturbed by more than one column; CLIPR takes one response "
            "per perturbed gene: average replicate columns (or keep one) first."
        )
    return index


def parse_screen(
    responses,
    genes: Sequence[Hashable] | None,
    targets: Sequence | None,
    *,
    draws: bool,
    name: str,
) -> Screen:
    """Validate ``responses`` (``[d, k]``, or ``[S, d, k]`` when ``draws``) and name its axes."""
    if isinstance(responses, pd.DataFrame):
        if draws:
            raise ValueError(
                f"{name} must be an array [draws, genes, perturbations], not a DataFrame."
            )
        if genes is not None or targets is not None:
            raise ValueError(
                "A DataFrame names its genes (index) and targets (columns) itself; leave "
                "genes=None and targets=None, or pass responses.to_numpy() with them."
            )
        genes, targets = list(responses.index), list(responses.columns)
        try:
            values = responses.to_numpy(dtype=np.float64, copy=True)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must hold numbers only: {error}") from None
    else:
        try:
            values = np.array(responses, dtype=np.float64, copy=True)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be a numeric array: {error}") from None
    expected = 3 if draws else 2
    if values.ndim != expected:
        layout = "[draws, genes, perturbations]" if draws else "[genes, perturbations]"
        raise ValueError(f"{name} must be a {expected}-D array {layout}, got shape {values.shape}.")
    if not draws:
        values = values[None]
    num_draws, num_genes, num_perturbations = values.shape
    if num_draws == 0:
        raise ValueError(f"{name} has no draws (shape {values.shape}).")
    if num_genes < 2:
        raise ValueError(f"{name} has {num_genes} gene(s); direct effects need at least two.")
    if num_perturbations == 0:
        raise ValueError(f"{name} has no perturbation columns (shape {values.shape}).")
    if num_perturbations > num_genes:
        raise ValueError(
            f"{name} has {num_perturbations} perturbation columns but only {num_genes} genes; "
            "CLIPR takes at most one shift perturbation per gene. Average replicate columns, "
            "and leave out combinations and perturbations of unmeasured genes."
        )
    not_finite = ~np.isfinite(values)
    if not_finite.any():
        first = tuple(int(axis[0]) for axis in np.nonzero(not_finite))
        raise ValueError(
            f"{name} has {int(not_finite.sum())} NaN or infinite entries (first at index "
            f"{first[1:] if not draws else first}); drop or re-estimate the affected "
            "perturbations (e.g. too few cells) before computing direct effects."
        )
    genes = _check_genes(genes, num_genes)
    if targets is None:
        if num_perturbations < num_genes:
            raise ValueError(
                f"{name} has {num_perturbations} columns for {num_genes} genes (a partial "
                "screen): pass targets=[...] naming the perturbed gene of each column."
            )
        targets = genes
    targets = list(targets) if not isinstance(targets, str) else [targets]
    if len(targets) != num_perturbations:
        raise ValueError(
            f"targets has {len(targets)} entries but {name} has {num_perturbations} columns; "
            "pass the perturbed gene of each column, in column order."
        )
    target_index = _resolve_targets(targets, genes)
    return Screen(values, genes, tuple(genes[row] for row in target_index), target_index)


def check_target_indices(targets, num_genes: int) -> np.ndarray:
    """Integer row indices ``[k]`` of the perturbed genes, each in ``[0, d)`` and distinct."""
    index = np.atleast_1d(np.asarray(targets))
    if index.ndim != 1 or not (index.size == 0 or np.issubdtype(index.dtype, np.integer)):
        raise ValueError(
            f"targets must be a sequence of integer gene indices, got {targets!r}; look gene "
            "names up in your gene list first."
        )
    if index.size == 0:
        raise ValueError("targets is empty: name at least one perturbed gene.")
    outside = index[(index < 0) | (index >= num_genes)]
    if outside.size:
        raise ValueError(
            f"targets {outside.tolist()} are outside [0, {num_genes}) for {num_genes} genes."
        )
    if np.unique(index).size != index.size:
        raise ValueError(f"targets must be distinct, got {index.tolist()}.")
    return index.astype(int)
