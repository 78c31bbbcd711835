"""Evaluation vocabulary of causalcell (DESIGN section 7).

Expression is log1p-normalised (:func:`causalcell.preprocessing.normalize_log1p`). The
pseudobulk of a condition ``p`` is the mean expression ``mu_p`` of its cells, and its effect is
``delta_p = mu_p - mu_ctrl``.

- Pseudobulk: :class:`Pseudobulk`, :func:`pseudobulk`, :func:`top_de_genes`,
  :func:`pearson_delta`, :func:`pseudobulk_mse`, :func:`rmse`, :func:`pseudobulk_l2`.
- Cell populations: :func:`energy_distance` (and its within term :func:`mean_within_distance`),
  :func:`mmd_rbf`, :func:`median_heuristic_bandwidth`.
- Ground-truth recovery: :func:`shd`, :func:`auprc`, :func:`orientation_accuracy`,
  :func:`sign_accuracy` (graph orientation: ``A[i, j] = 1`` iff ``i -> j``),
  :func:`interval_coverage`.
- Concepts: :func:`normalized_mutual_info`, :func:`adjusted_rand_index`.

This module never imports anndata: pass arrays (``adata.X``, ``adata.obs[key]``).
"""

from causalcell.metrics._clustering import adjusted_rand_index, normalized_mutual_info
from causalcell.metrics._distribution import (
    energy_distance,
    mean_within_distance,
    median_heuristic_bandwidth,
    mmd_rbf,
)
from causalcell.metrics._expression import (
    Pseudobulk,
    pearson_delta,
    pseudobulk,
    pseudobulk_l2,
    pseudobulk_mse,
    rmse,
    top_de_genes,
)
from causalcell.metrics._recovery import (
    auprc,
    interval_coverage,
    orientation_accuracy,
    shd,
    sign_accuracy,
)

__all__ = [
    "Pseudobulk",
    "adjusted_rand_index",
    "auprc",
    "energy_distance",
    "interval_coverage",
    "mean_within_distance",
    "median_heuristic_bandwidth",
    "mmd_rbf",
    "normalized_mutual_info",
    "orientation_accuracy",
    "pearson_delta",
    "pseudobulk",
    "pseudobulk_l2",
    "pseudobulk_mse",
    "rmse",
    "shd",
    "sign_accuracy",
    "top_de_genes",
]
