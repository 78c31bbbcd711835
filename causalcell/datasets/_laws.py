"""The exact Gaussian stationary laws of a simulated screen's conditions, in numpy float64."""

from __future__ import annotations

import hashlib

import numpy as np
import scipy.linalg

from causalcell.diffusion import LinearDrift, intervene_linear

__all__ = ["fixed_points", "stationary_laws"]


def fixed_points(matrices, biases) -> np.ndarray:
    """Fixed points ``-A^{-1} b`` ``[..., d]`` of linear drifts ``[..., d, d]``, ``[..., d]``."""
    return -np.linalg.solve(matrices, biases[..., None])[..., 0]


def stationary_laws(
    drift: LinearDrift, sigma, interventions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stationary means ``[P, d]``, the distinct covariance Cholesky factors ``[L, d, d]`` and
    each condition's factor ``[P]`` (an index into them), in float64 with numpy and scipy
    (Bartels-Stewart).

    The simulator needs no derivatives, so it leaves JAX here: batched LAPACK calls can
    deadlock jaxlib 0.10's CPU runtime (see :mod:`causalcell._core.linalg`), which hung
    ``simulate_screen`` at 200 genes, JAX's pure loops are slow at such orders, and float64 is
    exact to well below the simulated noise at any size. NaN where a condition is unstable.
    Conditions with the same drift matrix and noise (every shift and knockdown condition)
    share one covariance, solved and stored once; the conditions are intervened one at a
    time, so memory holds one drift matrix and the distinct factors, not ``P`` of each
    (a Replogle-size screen, 1,001 conditions of 1,000 genes, would need 16 GB for those).
    """
    fields = [np.asarray(field) for field in interventions]
    means = np.full(fields[0].shape, np.nan)
    factors, index, solved = [], np.zeros(len(means), np.int64), {}
    for condition in range(len(means)):
        one = type(interventions)(*(field[condition] for field in fields))
        matrix, bias, scale = (
            np.asarray(value, np.float64) for value in intervene_linear(drift, sigma, one)
        )
        law = hashlib.sha256(matrix.tobytes() + scale.tobytes()).digest()
        if law not in solved:
            solved[law] = len(factors)
            factor = _covariance_factor(matrix, scale)
            factors.append(np.full(matrix.shape, np.nan) if factor is None else factor)
        index[condition] = solved[law]
        if np.isfinite(factors[index[condition]]).all():
            means[condition] = fixed_points(matrix, bias)
    return means, np.stack(factors), index


def _covariance_factor(matrix, scale):
    """Cholesky factor of the stationary covariance of ``dx = A x dt + diag(scale) dW``, or
    None when ``A`` is not stable."""
    if np.linalg.eigvals(matrix).real.max() >= 0.0:
        return None
    covariance = scipy.linalg.solve_continuous_lyapunov(matrix, -np.diag(scale**2))
    covariance = 0.5 * (covariance + covariance.T)
    return np.linalg.cholesky(covariance + 1e-12 * np.eye(matrix.shape[-1]))
