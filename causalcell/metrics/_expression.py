"""Pseudobulk metrics: condition means, differentially expressed genes, Pearson delta, MSE/L2.

Every function here works on log1p-normalised expression (see
:func:`causalcell.preprocessing.normalize_log1p`) held in numpy arrays ``[cells, genes]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import scipy.sparse

__all__ = [
    "Pseudobulk",
    "pearson_delta",
    "pseudobulk",
    "pseudobulk_l2",
    "pseudobulk_mse",
    "rmse",
    "top_de_genes",
]


def _as_cells(array, name: str) -> np.ndarray:
    """Return ``array`` as a dense, finite 2-D float array ``[cells, genes]`` or raise."""
    dense = array.toarray() if scipy.sparse.issparse(array) else np.asarray(array)
    if dense.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [cells, genes], got shape {dense.shape}.")
    if dense.shape[0] == 0:
        raise ValueError(f"{name} has no cells (shape {dense.shape}).")
    if not np.issubdtype(dense.dtype, np.floating):
        dense = dense.astype(np.float64)
    if not np.isfinite(dense).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return dense


def _check_same_genes(first: np.ndarray, second: np.ndarray, names: tuple[str, str]) -> None:
    """Raise a ValueError naming both shapes when the gene (last) dimensions differ."""
    if first.shape[-1] != second.shape[-1]:
        raise ValueError(
            f"{names[0]} has shape {first.shape} and {names[1]} has shape {second.shape}: "
            "they must have the same number of genes (last dimension)."
        )


def _as_profile(array, name: str) -> np.ndarray:
    """Return a finite 1-D float64 expression profile ``[genes]`` or raise."""
    profile = np.asarray(array, dtype=np.float64)
    if profile.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array [genes], got shape {profile.shape}.")
    if not np.isfinite(profile).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return profile


class Pseudobulk(NamedTuple):
    """Mean expression of each condition.

    Attributes
    ----------
    conditions
        Condition labels, in order of first appearance among the cells.
    means
        Mean expression ``[conditions, genes]`` (float64).
    counts
        Number of cells of each condition ``[conditions]``.
    """

    conditions: tuple[str, ...]
    means: np.ndarray
    counts: np.ndarray

    def index_of(self, condition: str) -> int:
        """Return the row of ``condition``; raise a KeyError listing the available ones."""
        try:
            return self.conditions.index(condition)
        except ValueError:
            raise KeyError(
                f"Condition {condition!r} is not in this pseudobulk; "
                f"available conditions: {list(self.conditions)!r}."
            ) from None

    def mean_of(self, condition: str) -> np.ndarray:
        """Return the mean expression ``[genes]`` of ``condition``."""
        return self.means[self.index_of(condition)]

    def delta_of(self, condition: str, *, control: str = "control") -> np.ndarray:
        """Return ``mean_of(condition) - mean_of(control)``, the condition's effect ``[genes]``."""
        return self.mean_of(condition) - self.mean_of(control)


def pseudobulk(expression, labels: Sequence[str]) -> Pseudobulk:
    """Average the cells of each condition.

    Parameters
    ----------
    expression
        Log1p-normalised expression ``[cells, genes]``, dense or scipy.sparse.
    labels
        Condition label of each cell (converted with ``str``). Labels are grouped as given:
        canonicalise them first (:func:`causalcell.perturbations.canonical_label`) if
        ``"B+A"`` and ``"A+B"`` may both occur.

    Returns
    -------
    Pseudobulk
        Conditions in order of first appearance, their means and cell counts.

    Raises
    ------
    ValueError
        If ``expression`` is not 2-D or ``labels`` does not have one entry per cell.

    Examples
    --------
    >>> result = pseudobulk(np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]]), ["A", "control", "A"])
    >>> result.conditions
    ('A', 'control')
    >>> result.mean_of("A")
    array([3. , 2.5])
    >>> result.counts
    array([2, 1])
    """
    if not scipy.sparse.issparse(expression):
        expression = np.asarray(expression)
    if expression.ndim != 2:
        raise ValueError(f"expression must be 2-D [cells, genes], got shape {expression.shape}.")
    label_array = np.asarray(labels).astype(str).reshape(-1)
    num_cells = expression.shape[0]
    if label_array.shape[0] != num_cells:
        raise ValueError(
            f"Got {label_array.shape[0]} labels for expression of shape {expression.shape}: "
            "need one label per cell (row)."
        )
    if num_cells == 0:
        raise ValueError("expression has no cells.")
    unique, first_index, inverse = np.unique(label_array, return_index=True, return_inverse=True)
    order = np.argsort(first_index, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    codes = rank[inverse.reshape(-1)]
    # One sparse [conditions, cells] indicator product sums the cells of every condition at once.
    indicator = scipy.sparse.csr_matrix(
        (np.ones(num_cells), (codes, np.arange(num_cells))), shape=(unique.size, num_cells)
    )
    sums = indicator @ expression
    sums = sums.toarray() if scipy.sparse.issparse(sums) else np.asarray(sums, dtype=np.float64)
    counts = np.bincount(codes, minlength=unique.size)
    conditions = tuple(str(label) for label in unique[order])
    return Pseudobulk(conditions=conditions, means=sums / counts[:, None], counts=counts)


def top_de_genes(
    perturbed, control, k: int = 20, method: Literal["t", "abs_delta"] = "t"
) -> np.ndarray:
    """Return the indices of the ``k`` most differentially expressed genes.

    Parameters
    ----------
    perturbed, control
        Log1p-normalised expression of perturbed cells ``[n1, genes]`` and control cells
        ``[n0, genes]``.
    k
        Number of genes; fewer (all genes) are returned when there are fewer than ``k``.
    method
        ``"t"`` (default) ranks by the absolute Welch t-statistic
        ``(m1 - m0) / sqrt(v1 / n1 + v0 / n0)`` with unbiased variances (``ddof=1``), the
        statistic of ``scanpy.tl.rank_genes_groups(method="t-test")``. A gene whose variance is
        zero in both groups gets ``|t| = inf`` if its means differ (perfect separation) and
        ``0`` if they are equal. ``"abs_delta"`` ranks by ``|m1 - m0|``.

    Returns
    -------
    numpy.ndarray
        Integer gene indices ``[min(k, genes)]``, most differentially expressed first. Ties in
        the score are broken by larger ``|m1 - m0|``, then by lower gene index.

    Raises
    ------
    ValueError
        If the gene dimensions differ, ``k < 1``, ``method`` is unknown, or ``method="t"`` is
        used with fewer than two cells in a group.

    References
    ----------
    Roohani, Huang and Leskovec (2024). Predicting transcriptional outcomes of novel
    multigene perturbations with GEARS. Nature Biotechnology 42, 927-935 (top-20 DE genes).

    Examples
    --------
    >>> control = np.array([[0.0, 1.0, 2.0], [0.0, 1.2, 2.0]])
    >>> perturbed = np.array([[0.0, 3.0, 2.1], [0.0, 3.1, 2.0]])
    >>> top_de_genes(perturbed, control, k=1)
    array([1])
    """
    perturbed = _as_cells(perturbed, "perturbed")
    control = _as_cells(control, "control")
    _check_same_genes(perturbed, control, ("perturbed", "control"))
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    difference = perturbed.mean(axis=0, dtype=np.float64) - control.mean(axis=0, dtype=np.float64)
    if method == "abs_delta":
        score = np.abs(difference)
    elif method == "t":
        if perturbed.shape[0] < 2 or control.shape[0] < 2:
            raise ValueError(
                "method='t' needs at least two cells per group for the variances, got "
                f"{perturbed.shape[0]} perturbed and {control.shape[0]} control cells; "
                "use method='abs_delta'."
            )
        standard_error = np.sqrt(
            perturbed.var(axis=0, ddof=1, dtype=np.float64) / perturbed.shape[0]
            + control.var(axis=0, ddof=1, dtype=np.float64) / control.shape[0]
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.abs(difference) / standard_error
        constant = standard_error == 0
        score[constant] = np.where(difference[constant] != 0, np.inf, 0.0)
    else:
        raise ValueError(f"method must be 't' or 'abs_delta', got {method!r}.")
    num_genes = score.shape[0]
    # lexsort sorts by the last key first: score, then |difference|, then index (all ascending).
    order = np.lexsort((np.arange(num_genes), -np.abs(difference), -score))
    return order[: min(k, num_genes)]


def pearson_delta(predicted_mean, observed_mean, control_mean, genes=None) -> float:
    """Pearson correlation between predicted and observed changes from control.

    Computes ``corr(predicted_mean - control_mean, observed_mean - control_mean)`` over all
    genes or over ``genes`` (e.g. the top-20 DE genes of :func:`top_de_genes`, as in GEARS).

    Parameters
    ----------
    predicted_mean, observed_mean, control_mean
        Pseudobulk expression profiles ``[genes]``.
    genes
        Optional integer gene indices (or a boolean mask) to restrict to.

    Returns
    -------
    float
        The correlation in ``[-1, 1]``; ``nan`` (no warning) when either delta is constant over
        the selected genes, where the correlation is undefined. A no-change prediction has a
        zero delta, so its Pearson delta is always ``nan``; aggregate with ``numpy.nanmean``
        only if that is what the report should say.

    Raises
    ------
    ValueError
        If the profiles differ in shape, or fewer than two genes are selected.

    References
    ----------
    Roohani, Huang and Leskovec (2024). Predicting transcriptional outcomes of novel
    multigene perturbations with GEARS. Nature Biotechnology 42, 927-935.

    Examples
    --------
    >>> round(pearson_delta([1.0, 2.0, 4.0], [1.5, 2.0, 5.0], [1.0, 1.0, 1.0]), 6)
    0.979864
    """
    predicted = _as_profile(predicted_mean, "predicted_mean")
    observed = _as_profile(observed_mean, "observed_mean")
    control = _as_profile(control_mean, "control_mean")
    _check_same_genes(predicted, observed, ("predicted_mean", "observed_mean"))
    _check_same_genes(predicted, control, ("predicted_mean", "control_mean"))
    predicted_delta = predicted - control
    observed_delta = observed - control
    if genes is not None:
        predicted_delta = predicted_delta[np.asarray(genes)]
        observed_delta = observed_delta[np.asarray(genes)]
    if predicted_delta.size < 2:
        raise ValueError(f"Need at least two genes for a correlation, got {predicted_delta.size}.")
    predicted_delta = predicted_delta - predicted_delta.mean()
    observed_delta = observed_delta - observed_delta.mean()
    denominator = np.linalg.norm(predicted_delta) * np.linalg.norm(observed_delta)
    if denominator == 0:
        return float("nan")
    return float(np.clip(predicted_delta @ observed_delta / denominator, -1.0, 1.0))


def _squared_error(predicted, observed) -> np.ndarray:
    predicted = np.asarray(predicted, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    if predicted.shape != observed.shape:
        raise ValueError(
            f"predicted has shape {predicted.shape} and observed has shape {observed.shape}: "
            "they must match."
        )
    if predicted.ndim not in (1, 2):
        raise ValueError(f"Expected [genes] or [conditions, genes], got shape {predicted.shape}.")
    return (predicted - observed) ** 2


def _per_condition(values: np.ndarray) -> float | np.ndarray:
    return float(values) if values.ndim == 0 else values


def pseudobulk_mse(predicted, observed) -> float | np.ndarray:
    """Mean squared error over genes between predicted and observed pseudobulk.

    Parameters
    ----------
    predicted, observed
        Profiles ``[genes]`` or stacks ``[conditions, genes]`` of the same shape.

    Returns
    -------
    float or numpy.ndarray
        ``mean_g (predicted_g - observed_g)^2``: a float for 1-D input, ``[conditions]`` for 2-D.

    Raises
    ------
    ValueError
        If the shapes differ or are not 1-D/2-D.

    Examples
    --------
    >>> pseudobulk_mse([1.0, 2.0], [1.0, 4.0])
    2.0
    """
    return _per_condition(_squared_error(predicted, observed).mean(axis=-1))


def rmse(predicted, observed) -> float | np.ndarray:
    """Root mean squared error over genes, ``sqrt(pseudobulk_mse(predicted, observed))``.

    Examples
    --------
    >>> rmse([1.0, 2.0], [1.0, 4.0])
    1.4142135623730951
    """
    return _per_condition(np.sqrt(_squared_error(predicted, observed).mean(axis=-1)))


def pseudobulk_l2(predicted, observed) -> float | np.ndarray:
    """Euclidean norm over genes of ``predicted - observed``.

    Returns a float for profiles ``[genes]`` and ``[conditions]`` for stacks.

    Examples
    --------
    >>> pseudobulk_l2([0.0, 0.0], [3.0, 4.0])
    5.0
    """
    return _per_condition(np.sqrt(_squared_error(predicted, observed).sum(axis=-1)))
