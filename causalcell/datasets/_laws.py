"""The exact Gaussian stationary laws of a simulated screen's conditions, in numpy float64."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from causalcell.diffusion import LinearDrift, intervene_linear

__all__ = ["fixed_points", "stationary_laws"]


def fixed_points(matrices, biases) -> np.ndarray:
    """Fixed points ``-A^{-1} b`` ``[..., d]`` of linear drifts ``[..., d, d]``, ``[..., d]``."""
    return -np.linalg.solve(matrices, biases[..., None])[..., 0]


def stationary_laws(drift: LinearDrift, sigma, interventions) -> tuple[np.ndarray, np.ndarray]:
    """Stationary means ``[P, d]`` and covariance Cholesky factors ``[P, d, d]`` of every
    condition, in float64 with numpy and scipy (Bartels-Stewart).

    The simulator needs no derivatives, so it leaves JAX here: batched LAPACK calls can
    deadlock jaxlib 0.10's CPU runtime (see :mod:`causalcell._core.linalg`), which hung
    ``simulate_screen`` at 200 genes, JAX's pure loops are slow at such orders, and float64 is
    exact to well below the simulated noise at any size. NaN where a condition is unstable.
    Conditions that move only the bias (shifts, knockdowns) share one covariance, solved once.
    """
    matrices, biases, scales = (
        np.asarray(value, np.float64) for value in intervene_linear(drift, sigma, interventions)
    )
    means = np.full(biases.shape, np.nan)
    factors = np.full(matrices.shape, np.nan)
    solved = {}  # conditions with the same drift matrix and noise share their covariance
    for index, (matrix, bias, scale) in enumerate(zip(matrices, biases, scales, strict=True)):
        law = matrix.tobytes() + scale.tobytes()
        if law not in solved:
            solved[law] = _covariance_factor(matrix, scale)
        if solved[law] is not None:
            means[index] = fixed_points(matrix, bias)
            factors[index] = solved[law]
    return means, factors


def _covariance_factor(matrix, scale):
    """Cholesky factor of the stationary covariance of ``dx = A x dt + diag(scale) dW``, or
    None when ``A`` is not stable."""
    if np.linalg.eigvals(matrix).real.max() >= 0.0:
        return None
    covariance = scipy.linalg.solve_continuous_lyapunov(matrix, -np.diag(scale**2))
    covariance = 0.5 * (covariance + covariance.T)
    return np.linalg.cholesky(covariance + 1e-12 * np.eye(matrix.shape[-1]))
