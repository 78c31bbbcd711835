"""Stationary law of a linear diffusion under interventions (closed form, Gaussian)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from causalcell._linalg import cholesky, solve
from causalcell.diffusion._drift import LinearDrift, intervene_linear
from causalcell.diffusion._lyapunov import solve_continuous_lyapunov
from causalcell.interventions import Intervention

__all__ = ["sample_stationary", "stationary_factor", "stationary_mean", "stationary_moments"]


def stationary_mean(drift: LinearDrift, sigma, intervention: Intervention | None = None):
    """Mean ``-A^{-1} b`` of the stationary law of the (intervened) linear diffusion.

    One linear solve, no Lyapunov equation; batched interventions give ``[..., d]``.
    """
    matrix, bias, _ = intervene_linear(drift, sigma, intervention)
    return _fixed_point(matrix, bias)


def _fixed_point(matrix, bias):
    return -solve(matrix, bias[..., None])[..., 0]


def stationary_moments(drift: LinearDrift, sigma, intervention: Intervention | None = None):
    """Mean and covariance of the stationary law of ``dx = (A x + b) dt + diag(sigma) dW``.

    ``mu = -A^{-1} b`` and ``Sigma`` solves ``A Sigma + Sigma A^T + diag(sigma^2) = 0``, with
    ``A, b, sigma`` the intervened system (:func:`causalcell.diffusion.intervene_linear`).

    Parameters
    ----------
    drift
        The linear drift.
    sigma
        ``[d]`` (or scalar) diffusion scales.
    intervention
        Optional intervention ``[..., d]``; batch axes give batched moments.

    Returns
    -------
    mean, covariance
        ``[..., d]`` and ``[..., d, d]``; NaN where the intervened drift is not stable.

    Examples
    --------
    A knocked-out regulator pins its target's input, removing the correlation:

    >>> import jax.numpy as jnp
    >>> from causalcell.interventions import from_targets
    >>> drift = LinearDrift.from_matrix(jnp.array([[-1.0, 0.0], [0.5, -1.0]]), jnp.zeros(2))
    >>> mean, cov = stationary_moments(drift, 1.0, from_targets(2, [0], "knockout", 2.0))
    >>> [round(float(v), 4) for v in mean]
    [2.0, 1.0]
    """
    matrix, bias, sigma = intervene_linear(drift, sigma, intervention)
    mean = _fixed_point(matrix, bias)
    noise = sigma[..., :, None] ** 2 * jnp.eye(drift.num_genes, dtype=matrix.dtype)
    covariance = solve_continuous_lyapunov(matrix, noise)
    return mean, 0.5 * (covariance + jnp.swapaxes(covariance, -1, -2))


def stationary_factor(drift: LinearDrift, sigma, intervention: Intervention | None = None):
    """Stationary mean and Cholesky factor ``L`` (``Sigma = L L^T``): draws are ``mean + L z``."""
    mean, covariance = stationary_moments(drift, sigma, intervention)
    return mean, cholesky(covariance)


def sample_stationary(
    key, drift: LinearDrift, sigma, intervention: Intervention | None = None, *, num_samples: int
):
    """Exact draws ``[num_samples, d]`` from the Gaussian stationary law of a linear diffusion.

    Raises
    ------
    ValueError
        If the intervened drift is not stable (the covariance came back non-finite); under
        ``jit`` the draws are NaN instead.
    """
    mean, factor = stationary_factor(drift, sigma, intervention)
    # Outside jit, fail loudly; under jit the draws come back NaN, as the moments do.
    if not isinstance(factor, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(factor))):
        raise ValueError(
            "The stationary covariance is not finite or not positive definite: the (intervened) "
            "drift is not stable; check it with causalcell.diffusion.check_stable(drift.matrix())."
        )
    noise = jax.random.normal(key, (num_samples, drift.num_genes), factor.dtype)
    return mean + noise @ factor.T
