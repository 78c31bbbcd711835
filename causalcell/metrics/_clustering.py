"""Agreement between two labelings of the cells: normalised mutual information and adjusted Rand.

Both are computed from the contingency table of the two labelings and follow the conventions of
``sklearn.metrics`` (which is only a test dependency here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["adjusted_rand_index", "normalized_mutual_info"]


def _contingency(labels_true: Sequence, labels_pred: Sequence):
    """Sparse contingency table: ``(rows, columns, counts)`` of its non-zero cells, and margins.

    Only non-zero cells are built, so labelings with one label per cell stay linear in size.
    """
    true_array = np.asarray(labels_true).reshape(-1)
    pred_array = np.asarray(labels_pred).reshape(-1)
    if true_array.shape != pred_array.shape:
        raise ValueError(
            f"labels_true has {true_array.size} entries and labels_pred has {pred_array.size}: "
            "need one label per cell in both."
        )
    if true_array.size == 0:
        raise ValueError("The labelings are empty.")
    _, true_codes = np.unique(true_array, return_inverse=True)
    _, pred_codes = np.unique(pred_array, return_inverse=True)
    true_codes = true_codes.reshape(-1).astype(np.int64)
    pred_codes = pred_codes.reshape(-1).astype(np.int64)
    num_clusters = int(pred_codes.max()) + 1
    cells, counts = np.unique(true_codes * num_clusters + pred_codes, return_counts=True)
    rows, columns = np.divmod(cells, num_clusters)
    row_totals = np.bincount(true_codes)
    column_totals = np.bincount(pred_codes)
    return rows, columns, counts, row_totals, column_totals


def _entropy(counts: np.ndarray) -> float:
    probabilities = counts[counts > 0] / counts.sum()
    return float(-np.sum(probabilities * np.log(probabilities)))


def normalized_mutual_info(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Mutual information normalised by the arithmetic mean of the two entropies.

    ``NMI = I(U; V) / ((H(U) + H(V)) / 2)`` with natural logarithms (the normalisation cancels
    the base). As in scikit-learn: 1 when both labelings have a single cluster, 0 when the
    mutual information is zero otherwise.

    Parameters
    ----------
    labels_true, labels_pred
        Labels of each cell (any hashable, sortable values), same length.

    Returns
    -------
    float
        NMI in ``[0, 1]``; invariant to renaming the labels.

    Raises
    ------
    ValueError
        If the labelings differ in length or are empty.

    Examples
    --------
    >>> normalized_mutual_info(["a", "a", "b", "b"], [1, 1, 0, 0])
    1.0
    """
    rows, columns, counts, row_totals, column_totals = _contingency(labels_true, labels_pred)
    if row_totals.size == column_totals.size == 1:
        return 1.0
    total = float(counts.sum())
    joint = counts / total
    expected = row_totals[rows].astype(np.float64) * column_totals[columns] / total**2
    terms = joint * np.log(joint / expected)
    terms[np.abs(terms) < np.finfo(np.float64).eps] = 0.0
    mutual_information = max(float(terms.sum()), 0.0)
    if mutual_information == 0.0:
        return 0.0
    normaliser = (_entropy(row_totals) + _entropy(column_totals)) / 2.0
    return mutual_information / normaliser


def adjusted_rand_index(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Rand index of the two labelings corrected for chance (Hubert and Arabie, 1985).

    ``ARI = (sum_ij C(n_ij, 2) - E) / ((sum_i C(a_i, 2) + sum_j C(b_j, 2)) / 2 - E)`` with
    ``E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2)``, ``n_ij`` the contingency table and
    ``a``, ``b`` its margins. As in scikit-learn, 1 when the two labelings induce the same pairs.

    Parameters
    ----------
    labels_true, labels_pred
        Labels of each cell (any hashable, sortable values), same length.

    Returns
    -------
    float
        ARI, at most 1; around 0 for independent labelings; may be negative.

    Raises
    ------
    ValueError
        If the labelings differ in length or are empty.

    Examples
    --------
    >>> adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1])
    -0.5
    """
    _, _, counts, row_totals, column_totals = _contingency(labels_true, labels_pred)

    def pairs(sizes: np.ndarray) -> int:  # exact in int64, then Python integers below
        return int(np.sum(sizes.astype(np.int64) * (sizes - 1) // 2))

    both = pairs(counts)
    only_true = pairs(row_totals) - both
    only_pred = pairs(column_totals) - both
    total = int(counts.sum())
    neither = total * (total - 1) // 2 - both - only_true - only_pred
    if only_true == only_pred == 0:
        return 1.0  # both labelings put exactly the same pairs together
    numerator = 2 * (both * neither - only_true * only_pred)
    denominator = (both + only_true) * (only_true + neither) + (both + only_pred) * (
        only_pred + neither
    )
    return numerator / denominator
