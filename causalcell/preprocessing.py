"""Array-level preprocessing shared by the data edge, metrics, baselines and the simulator."""

from __future__ import annotations

import numpy as np

__all__ = ["library_size", "normalize_log1p", "variable_genes"]

#: Counts per cell after normalisation, as in ``scanpy.pp.normalize_total(target_sum=1e4)``.
DEFAULT_TARGET_SUM = 1e4


def library_size(counts) -> np.ndarray:
    """Total counts of each cell (row sums) as a float array; works on dense and scipy.sparse."""
    return np.asarray(counts.sum(axis=1), dtype=np.float64).reshape(-1)


def normalize_log1p(
    counts, size_factors=None, *, target_sum: float = DEFAULT_TARGET_SUM
) -> np.ndarray:
    """Return ``log1p(counts / size_factors * target_sum)`` as a dense float32 array.

    Parameters
    ----------
    counts
        Count matrix ``[cells, genes]`` (dense or scipy.sparse). Not modified.
    size_factors
        Per-cell library sizes ``[cells]``; the row sums of ``counts`` when omitted.
    target_sum
        Counts per cell after normalisation.

    Raises
    ------
    ValueError
        If a size factor is not positive and finite (a cell without counts cannot be normalised).

    Examples
    --------
    >>> normalize_log1p(np.array([[1.0, 3.0]]), target_sum=4.0)
    array([[0.6931472, 1.3862944]], dtype=float32)
    """
    sizes = (
        library_size(counts) if size_factors is None else np.asarray(size_factors, dtype=np.float64)
    )
    if sizes.shape != (counts.shape[0],):
        raise ValueError(
            f"size_factors has shape {sizes.shape}, expected ({counts.shape[0]},): one per cell."
        )
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} cell(s) have a size factor that is not positive and finite "
            f"(first at row {int(np.flatnonzero(bad)[0])}); drop empty cells before normalising."
        )
    dense = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    return np.log1p(dense * (target_sum / sizes)[:, None]).astype(np.float32)


def variable_genes(counts, size_factors=None) -> np.ndarray:
    """Gene indices from most to least variable: by the variance of :func:`normalize_log1p`'d
    expression over cells (ties in gene order), the usual choice of highly variable genes.
    Sparse counts stay sparse (``log1p`` keeps zeros at zero).

    Examples
    --------
    >>> variable_genes(np.array([[1.0, 5.0, 2.0], [1.0, 0.0, 2.0]]))
    array([1, 2, 0])
    """
    if not hasattr(counts, "tocsr"):
        spread = normalize_log1p(counts, size_factors).var(axis=0)
        return np.argsort(-spread, kind="stable")
    sizes = library_size(counts) if size_factors is None else np.asarray(size_factors, float)
    if np.any(~(np.isfinite(sizes) & (sizes > 0))):
        raise ValueError("Every size factor must be positive and finite; drop empty cells.")
    scaled = counts.tocsr().astype(np.float64).multiply((DEFAULT_TARGET_SUM / sizes)[:, None])
    values = scaled.tocsr().log1p()
    mean = np.asarray(values.mean(axis=0)).ravel()
    spread = np.asarray(values.multiply(values).mean(axis=0)).ravel() - mean**2
    return np.argsort(-spread.astype(np.float32), kind="stable")
