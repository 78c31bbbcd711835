"""Recovery of ground truth: graph structure (SHD, AUPRC, orientation), signs, interval coverage.

Adjacency convention (DESIGN 2.1): ``A[i, j] = 1`` iff there is an edge ``i -> j``; weight and
score matrices use the same graph orientation (``[source, target]``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["auprc", "interval_coverage", "orientation_accuracy", "shd", "sign_accuracy"]


def _as_adjacency(array, name: str) -> np.ndarray:
    """Return a square boolean adjacency matrix, or raise if it is not square and 0/1."""
    matrix = np.asarray(array)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"{name} must be a square adjacency matrix, got shape {matrix.shape}.")
    if not np.isin(matrix, (0, 1)).all():
        raise ValueError(
            f"{name} must contain only 0 and 1 (A[i, j] = 1 iff i -> j); threshold scores first."
        )
    return matrix.astype(bool)


def shd(true_adjacency, estimated_adjacency, *, ignore_diagonal: bool = True) -> int:
    """Structural Hamming distance between two directed graphs.

    Every unordered pair of nodes ``{i, j}`` whose connection differs counts once: a missing
    edge, an extra edge and a reversed edge (``i -> j`` estimated as ``j -> i``) each add 1, as
    does any other mismatch of the pair (e.g. a 2-cycle estimated as a single edge).

    Parameters
    ----------
    true_adjacency, estimated_adjacency
        0/1 matrices ``[nodes, nodes]`` with ``A[i, j] = 1`` iff ``i -> j``.
    ignore_diagonal
        If ``True`` (default) self-loops are not compared; otherwise each differing diagonal
        entry adds 1.

    Returns
    -------
    int
        The number of differing node pairs.

    Raises
    ------
    ValueError
        If the matrices are not square, differ in shape, or are not 0/1.

    Examples
    --------
    >>> true = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])   # 0 -> 1 -> 2
    >>> estimate = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]])  # 1 -> 0, 0 -> 2
    >>> shd(true, estimate)  # one reversal, one missing, one extra edge
    3
    """
    true = _as_adjacency(true_adjacency, "true_adjacency")
    estimate = _as_adjacency(estimated_adjacency, "estimated_adjacency")
    if true.shape != estimate.shape:
        raise ValueError(
            f"true_adjacency has shape {true.shape} and estimated_adjacency has shape "
            f"{estimate.shape}: they must match."
        )
    differs = true != estimate
    pair_differs = differs | differs.T
    distance = int(np.triu(pair_differs, k=1).sum())
    if not ignore_diagonal:
        distance += int(np.diagonal(differs).sum())
    return distance


def auprc(true_adjacency, scores, *, ignore_diagonal: bool = True) -> float:
    """Area under the precision-recall curve (average precision) of edge scores.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order,
    where ``P_k`` and ``R_k`` are the precision and recall when predicting every entry scored at
    least the ``k``-th threshold as an edge. Tied scores enter together, exactly as in
    ``sklearn.metrics.average_precision_score`` (no interpolation).

    Parameters
    ----------
    true_adjacency
        0/1 matrix ``[nodes, nodes]`` with ``A[i, j] = 1`` iff ``i -> j``.
    scores
        Real matrix of the same shape; higher means an edge is more likely (e.g. posterior
        edge probabilities or ``|W|``).
    ignore_diagonal
        If ``True`` (default), self-loop entries are left out of the ranking.

    Returns
    -------
    float
        Average precision in ``[0, 1]``; ``nan`` if the true graph has no edge (undefined).

    Raises
    ------
    ValueError
        If the shapes differ, the truth is not 0/1 or a score is not finite.

    Examples
    --------
    >>> true = np.array([[0, 1], [0, 0]])
    >>> auprc(true, np.array([[0.0, 0.9], [0.1, 0.0]]))
    1.0
    """
    true = _as_adjacency(true_adjacency, "true_adjacency")
    score_matrix = np.asarray(scores, dtype=np.float64)
    if score_matrix.shape != true.shape:
        raise ValueError(
            f"true_adjacency has shape {true.shape} and scores has shape {score_matrix.shape}: "
            "they must match."
        )
    if not np.isfinite(score_matrix).all():
        raise ValueError("scores contains NaN or infinite values.")
    keep = ~np.eye(true.shape[0], dtype=bool) if ignore_diagonal else np.ones_like(true)
    labels, values = true[keep], score_matrix[keep]
    num_positive = int(labels.sum())
    if num_positive == 0:
        return float("nan")
    order = np.argsort(-values, kind="stable")
    labels, values = labels[order], values[order]
    # The last position of each run of tied scores is one threshold.
    threshold_ends = np.flatnonzero(np.r_[values[1:] != values[:-1], True])
    true_positives = np.cumsum(labels)[threshold_ends]
    predicted_positives = threshold_ends + 1
    precision = true_positives / predicted_positives
    recall_gain = np.diff(np.r_[0, true_positives]) / num_positive
    return float(np.sum(recall_gain * precision))


def interval_coverage(truth, lower, upper) -> float:
    """Fraction of true values inside their intervals, ``lower <= truth <= upper``.

    Entries whose ``lower`` or ``upper`` bound is NaN are left out of the fraction: NaN marks a
    quantity the method reports as not identified (e.g. rows of a partial screen, DESIGN 4), so
    it neither covers nor misses. Infinite bounds are allowed (one-sided intervals).

    Parameters
    ----------
    truth
        True values, any shape.
    lower, upper
        Interval bounds of the same shape.

    Returns
    -------
    float
        Coverage in ``[0, 1]``; ``nan`` if every entry has a NaN bound.

    Raises
    ------
    ValueError
        If the shapes differ, ``truth`` has NaN, or some ``lower > upper``.

    Examples
    --------
    >>> interval_coverage([0.0, 1.0, 2.0], [-1.0, 1.5, np.nan], [1.0, 2.0, np.nan])
    0.5
    """
    truth = np.asarray(truth, dtype=np.float64)
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if not truth.shape == lower.shape == upper.shape:
        raise ValueError(
            f"truth {truth.shape}, lower {lower.shape} and upper {upper.shape} must have the "
            "same shape."
        )
    if np.isnan(truth).any():
        raise ValueError("truth contains NaN values.")
    reported = ~(np.isnan(lower) | np.isnan(upper))
    if (lower[reported] > upper[reported]).any():
        raise ValueError("Some intervals have lower > upper; check the order of the bounds.")
    if not reported.any():
        return float("nan")
    inside = (lower[reported] <= truth[reported]) & (truth[reported] <= upper[reported])
    return float(inside.mean())


def _as_square_real(array, name: str, shape: tuple[int, ...]) -> np.ndarray:
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.shape != shape:
        raise ValueError(f"{name} has shape {matrix.shape} but {shape} was expected.")
    return matrix


def sign_accuracy(true_weights, estimated_weights) -> float:
    """Fraction of true edges whose estimated weight has the true sign.

    Over the off-diagonal entries with ``true_weights[i, j] != 0`` (the true edges; the
    diagonal is self-regulation, not an edge), the fraction with
    ``sign(estimated_weights[i, j]) == sign(true_weights[i, j])``; an estimate of exactly 0
    has no sign and counts as a mismatch. Entries whose estimate is NaN are left out of the
    fraction: NaN marks an effect the method reports as not identified (e.g. a partial screen,
    :mod:`causalcell.clipr`), as in :func:`interval_coverage`.

    Parameters
    ----------
    true_weights, estimated_weights
        Real matrices ``[nodes, nodes]`` in graph orientation: entry ``[i, j]`` is the weight of
        the edge ``i -> j`` (source row, target column). A drift matrix (row = target) converts
        with :func:`causalcell.graph.graph_from_drift` and :func:`causalcell.graph.to_adjacency`.

    Returns
    -------
    float
        Accuracy in ``[0, 1]``; ``nan`` if no true edge has a reported (non-NaN) estimate.

    Raises
    ------
    ValueError
        If the matrices are not square or differ in shape, or ``true_weights`` is not finite.

    Examples
    --------
    >>> true = np.array([[0.0, 0.8, -0.5], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0]])
    >>> estimate = np.array([[0.0, 0.6, 0.1], [0.2, 0.0, np.nan], [0.0, 0.0, 0.0]])
    >>> sign_accuracy(true, estimate)  # 0 -> 1 right, 0 -> 2 wrong, 1 -> 2 not reported
    0.5
    """
    truth = np.asarray(true_weights, dtype=np.float64)
    if truth.ndim != 2 or truth.shape[0] != truth.shape[1]:
        raise ValueError(f"true_weights must be a square matrix, got shape {truth.shape}.")
    if not np.isfinite(truth).all():
        raise ValueError("true_weights contains NaN or infinite values.")
    estimate = _as_square_real(estimated_weights, "estimated_weights", truth.shape)
    edges = (truth != 0) & ~np.eye(truth.shape[0], dtype=bool) & ~np.isnan(estimate)
    if not edges.any():
        return float("nan")
    return float(np.mean(np.sign(estimate[edges]) == np.sign(truth[edges])))


def orientation_accuracy(true_adjacency, scores) -> float:
    """How often the scores orient the true one-way edges correctly.

    For every true edge ``i -> j`` without its reverse (``A[i, j] = 1`` and ``A[j, i] = 0``;
    two-cycles have no single orientation and are left out), a point when
    ``scores[i, j] > scores[j, i]``, half a point for a tie, nothing otherwise; the result is
    the mean. A symmetric score matrix (such as any function of a covariance or of the
    symmetric ``-Sigma^{-1}`` a gradient-field drift gives) therefore scores exactly 0.5,
    chance, whatever its values.

    Parameters
    ----------
    true_adjacency
        0/1 matrix ``[nodes, nodes]`` with ``A[i, j] = 1`` iff ``i -> j``.
    scores
        Real matrix of the same shape and orientation (higher = more evidence for ``i -> j``,
        e.g. ``|W|`` or edge probabilities).

    Returns
    -------
    float
        Accuracy in ``[0, 1]``; ``nan`` if the graph has no one-way edge.

    Raises
    ------
    ValueError
        If the shapes differ, the truth is not 0/1, or a score that is compared is NaN (fill
        not-identified scores explicitly first).

    Examples
    --------
    >>> true = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])  # 0 -> 1, 0 -> 2, 1 -> 2
    >>> orientation_accuracy(true, np.array([[0, 2, 1], [1, 0, 0], [1, 1, 0]]))  # right, tie, wrong
    0.5
    >>> orientation_accuracy(true, np.ones((3, 3)))  # symmetric scores: chance
    0.5
    """
    true = _as_adjacency(true_adjacency, "true_adjacency")
    score_matrix = _as_square_real(scores, "scores", true.shape)
    one_way = true & ~true.T & ~np.eye(true.shape[0], dtype=bool)
    if not one_way.any():
        return float("nan")
    forward = score_matrix[one_way]
    backward = score_matrix.T[one_way]
    if np.isnan(forward).any() or np.isnan(backward).any():
        raise ValueError(
            "scores contains NaN at a true edge or its reverse; fill not-identified entries "
            "explicitly (e.g. numpy.nan_to_num(scores, nan=0.0)) before scoring orientation."
        )
    points = np.where(forward > backward, 1.0, np.where(forward == backward, 0.5, 0.0))
    return float(points.mean())
