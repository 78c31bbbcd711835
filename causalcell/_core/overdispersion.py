"""Split each gene's excess count variance into latent log-rate variance and negative binomial
overdispersion, by the exact marginal likelihood of a lognormal-negative-binomial count.

The model per gene: ``x_i ~ N(mu_c, v)`` in condition ``c``, ``y_i ~ NB(s_i e^(x_i), theta)``.
To first order ``v`` and ``1 / theta`` add to the variance of the log counts, so moments fix
only their sum; the count distribution's shape (the log-gamma skew of the overdispersion
against a Gaussian latent) separates them, and the exact marginal likelihood reads it. A
variational fit whose latent posterior is Gaussian is biased along that ridge and, started
far from it, stays in the wrong place: in LCD the split sets each gene's latent variance, which
the stationary law turns into the drift's columns. This estimate is where such a fit starts.

Method: with ``r_c`` a condition's mean of ``y / s`` and ``phi`` the pooled excess
``(Var(y / s) - E[r_c / s]) / E[r_c^2]`` within conditions, the moments give
``e^v (1 + 1 / theta) = 1 + phi``. Along that curve, ``v = f log(1 + phi)`` for a grid of
fractions ``f``; ``mu_c = log r_c - v / 2`` keeps each condition's mean rate. The fraction with
the largest marginal likelihood (Gauss-Hermite quadrature over ``x``) gives ``(theta, v)``.

References
----------
Aitchison, J. and Ho, C. H. (1989). The multivariate Poisson-log normal distribution.
Biometrika 76(4), 643-653.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["split_overdispersion"]

#: The grid of fractions of the log excess variance given to the latent.
FRACTIONS = np.linspace(0.02, 0.98, 49)
#: Gauss-Hermite nodes of the quadrature over the latent log-rate.
NODES = 16
#: Cells read at most (an even, fixed subsample): the estimate starts a fit, it need not use all.
MAX_CELLS = 4000
#: Bounds of the returned concentration (a gene with no excess variance is near Poisson).
CONCENTRATION_RANGE = (0.05, 1e3)


def split_overdispersion(
    counts, size_factors, condition_index, condition_rates, *, max_cells: int = MAX_CELLS
):
    """``(concentration, latent_variance)``, each ``[genes]``, of the model in the module
    docstring, from counts ``[cells, genes]``, size factors ``[cells]``, each cell's condition
    ``[cells]`` (integers indexing the rows of ``condition_rates``) and each condition's mean
    of ``counts / size_factors`` ``[conditions, genes]`` (``r_c``)."""
    cells = counts.shape[0]
    keep = np.linspace(0, cells - 1, min(cells, max_cells)).round().astype(int)
    counts = counts[keep]  # the subsample only: an atlas is not copied
    counts = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, np.float64)
    size_factors = np.asarray(size_factors, np.float64)[keep]
    cell_rate = np.asarray(condition_rates, np.float64)[np.asarray(condition_index)[keep]]
    rates = counts / size_factors[:, None]
    excess = ((rates - cell_rate) ** 2 - cell_rate / size_factors[:, None]).sum(0)
    phi = excess / np.maximum((cell_rate**2).sum(0), 1e-12)
    log_total = np.log1p(np.maximum(phi, 1e-3))  # [genes]
    log_likelihood = _profile(
        jnp.asarray(counts, jnp.float32),
        jnp.log(jnp.asarray(size_factors, jnp.float32)),
        jnp.log(jnp.asarray(np.maximum(cell_rate, 1e-8), jnp.float32)),
        jnp.asarray(log_total, jnp.float32),
    )  # [fractions, genes]
    best = FRACTIONS[np.argmax(np.asarray(log_likelihood), axis=0)]
    variance = best * log_total
    concentration = 1.0 / np.maximum(np.exp(log_total - variance) - 1.0, 1e-12)
    return np.clip(concentration, *CONCENTRATION_RANGE), variance


@jax.jit
def _profile(counts, log_size, log_rate, log_total):
    """Marginal log-likelihood ``[fractions, genes]`` along the moment curve."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(NODES)
    log_weights = jnp.asarray(np.log(weights / weights.sum()), jnp.float32)
    nodes = jnp.asarray(nodes, jnp.float32)

    def at(fraction):
        variance = fraction * log_total
        theta = 1.0 / jnp.maximum(jnp.expm1(log_total - variance), 1e-6)
        theta = jnp.clip(theta, *CONCENTRATION_RANGE)
        center = log_size[:, None] + log_rate - variance / 2  # log mean count at x = mu_c
        log_mean = center[..., None] + jnp.sqrt(variance)[:, None] * nodes  # [cells, genes, k]
        log_theta = jnp.log(theta)[:, None]
        # log NB(y; m, theta) without the terms free of x: the gamma ratio is added once.
        per_node = (
            theta[:, None] * log_theta
            - (theta[:, None] + counts[..., None]) * jnp.logaddexp(log_theta, log_mean)
            + counts[..., None] * log_mean
        )
        marginal = jax.nn.logsumexp(per_node + log_weights, axis=-1)
        gamma_ratio = jax.scipy.special.gammaln(counts + theta) - jax.scipy.special.gammaln(theta)
        return jnp.sum(marginal + gamma_ratio, axis=0)

    return jax.lax.map(at, jnp.asarray(FRACTIONS, jnp.float32))
