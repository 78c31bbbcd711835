"""The stable linear drift of LCD from its unconstrained sites, and the raw weights' prior.

Drift ``A = -diag(d) + diag(e^s) W' diag(e^-s)`` where ``W'`` is the raw off-diagonal weight
matrix ``R`` mapped row-wise into strict diagonal dominance, ``W'_j = R_j rho d_j / (rho d_j +
|R_j|_1)`` (so ``sum_k |W'_jk| < rho d_j``), and ``s`` a learned log-scaling. The map is a
bijection from every raw row onto the open dominance set. A hard shrink (``R_j`` scaled down
to the boundary wherever its sum exceeded ``rho d_j``) sent all the prior mass beyond the
boundary onto it: the posterior piled up there (50-84% of NUTS draws in five of six
rows of a simulated screen), the likelihood was flat along the raw weights beyond it, and the
credible intervals of the direct effects in those rows were too narrow.

The raw weights' prior is sparse for any number of coordinates: Cauchy, each entry's scale
``weight_scale / (n (1 + log n))`` with ``n = n_j + 1``, ``n_j`` the allowed regulators of row
``j`` (the median of a sum of ``n`` absolute Cauchy draws grows as ``n log n``), so a row's
prior total has a median near ``0.6 weight_scale`` whatever ``n_j`` (from about 10 on). An iid
prior of a fixed scale ``b`` (the earlier Laplace) puts a row's total near ``(n_j - 1) b``, its
Gamma law's mode, far beyond the boundary once ``n_j`` is in the tens; the data fix only each
row's direction there, so every row sat near the boundary, the true edges were shrunk towards
zero and the direct effects' intervals missed them. Heavy tails let true edges escape the small
scale at a cost logarithmic in their size.

``A`` is similar to a diagonally dominant matrix with a negative diagonal, so every
eigenvalue has a negative real part (Gershgorin) for all parameter values, including after
knockouts (principal submatrices stay dominant). The scaling lets one-way regulation exceed
the target's decay (``A_ij = W'_ij e^{s_i - s_j}``), so every DAG drift is
reachable; only two-cycles are bounded (``A_ij A_ji = W'_ij W'_ji``).

References
----------
Gelman, Jakulin, Pittau and Su (2008), A weakly informative default prior distribution for
logistic and other regression models, Ann. Appl. Stat. 2: 1360-1383 (Cauchy priors).
Carvalho, Polson and Scott (2010), The horseshoe estimator for sparse signals, Biometrika 97:
465-480 (heavy tails for sparse signals).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from causalcell._core.neumann import neumann_inverse
from causalcell.diffusion import LinearDrift, cayley_shift

__all__ = [
    "WEIGHT_SCALE",
    "drift_from_sites",
    "drift_inverses",
    "drift_weight_prior",
    "linear_drift_from_sites",
    "raw_weights_of",
]

#: Strength of the diagonal dominance that keeps the drift stable (see module docstring).
_DOMINANCE = 0.95
#: Default scale of a row's raw weights taken together (module docstring).
WEIGHT_SCALE = 1.0


def drift_from_sites(raw_weights, log_decay, log_scaling, baseline) -> LinearDrift:
    """The stable drift from its unconstrained sites; bias makes ``baseline`` the control mean."""
    decay = jnp.exp(log_decay)
    off_diagonal = raw_weights * (1.0 - jnp.eye(raw_weights.shape[-1], dtype=raw_weights.dtype))
    row_sum = jnp.sum(jnp.abs(off_diagonal), axis=-1)
    limit = _DOMINANCE * decay
    shrink = limit / (limit + row_sum)  # a bijection onto the open dominance set
    dominated = off_diagonal * shrink[..., :, None]
    scaling = jnp.exp(log_scaling)
    weights = scaling[..., :, None] * dominated / scaling[..., None, :]
    matrix = weights - jnp.eye(decay.shape[-1]) * decay[..., None, :]
    bias = -jnp.einsum("...ij,...j->...i", matrix, baseline)
    return LinearDrift(log_decay, weights, bias)


def drift_weight_prior(mask, weight_scale: float):
    """Cauchy prior of the raw weights ``[m, m]``: scale ``weight_scale / (n (1 + log n))`` in
    row ``j``, ``n = n_j + 1`` with ``n_j`` the row's allowed regulators under the 0/1 ``mask``
    (at least one); a row with one regulator keeps the scale 0.3 of the earlier prior, whose
    small screens were calibrated."""
    size = mask.shape[-1]
    allowed = jnp.maximum(jnp.sum(mask * (1.0 - jnp.eye(size)), axis=-1), 1.0)
    per_entry = weight_scale / ((allowed + 1.0) * (1.0 + jnp.log(allowed + 1.0)))
    scale = jnp.broadcast_to(per_entry[:, None], (size, size))
    return dist.Cauchy(0.0, scale).to_event(2)


def drift_inverses(drift: LinearDrift):
    """``(A^{-1}, s, (s I - A)^{-1})`` of a drift built by :func:`drift_from_sites`, by matrix
    products only.

    Its off-diagonal weights are ``W = S V S^{-1}`` (``S`` the scalings) with the absolute row
    sums of ``V`` below ``0.95 D`` (``D`` the decays). For a diagonal ``E >= D``, ``E^{-1} W =
    S (E^{-1} V) S^{-1}`` is similar to a contraction of norm below 0.95, so ``(E - W)^{-1} =
    (I - E^{-1} W)^{-1} E^{-1}`` is a Neumann series
    (:func:`causalcell._core.neumann.neumann_inverse`): ``A = W - D`` takes ``E = D`` (and a
    sign), ``s I - A`` takes ``E = s + D``, ``s`` the Lyapunov solver's Cayley shift."""
    decay = drift.decay
    shift = cayley_shift(drift.matrix())

    def inverse_minus_weights(diagonal):
        """``(diag(diagonal) - W)^{-1}``."""
        return neumann_inverse(drift.weights / diagonal[:, None]) / diagonal[None, :]

    return -inverse_minus_weights(decay), shift, inverse_minus_weights(shift + decay)


def linear_drift_from_sites(values, prior_mask=None) -> LinearDrift:
    """The drift of one draw of the global sites ``values`` (a dict), with the prior mask."""
    raw = values["drift_weights"]
    if prior_mask is not None:
        raw = raw * prior_mask
    return drift_from_sites(raw, values["log_decay"], values["log_scaling"], values["baseline"])


def raw_weights_of(direct) -> tuple[np.ndarray, np.ndarray]:
    """Raw weights and log-scalings ``(R, s)`` whose drift, at unit decays, has the direct
    effects ``direct`` ``[m, m]`` (drift orientation, diagonal ignored): the inverse of
    :func:`drift_from_sites` where fitting starts from an estimate of the effects.

    Some scaling ``x = e^s`` puts every row ``E_i x / x_i`` in the dominance set only when the
    spectral radius of ``|E|`` is below the dominance strength ``rho``. With ``c = 0.95 rho``,
    ``E`` is scaled down (direction kept) to a spectral radius of at most ``0.8 c``; then
    ``x = (I - |E| / c)^{-1} 1`` is positive and gives row sums ``c (x_i - 1) / x_i < c``.
    """
    effects = np.asarray(direct, np.float64) * (1.0 - np.eye(np.shape(direct)[-1]))
    bound = 0.95 * _DOMINANCE  # c
    radius = float(np.max(np.abs(np.linalg.eigvals(np.abs(effects))), initial=0.0))
    if radius > 0.8 * bound:
        effects = effects * (0.8 * bound / radius)
    magnitude = np.abs(effects)
    scaling = np.linalg.solve(np.eye(len(effects)) - magnitude / bound, np.ones(len(effects)))
    dominated = effects * scaling[None, :] / scaling[:, None]
    row_sum = np.abs(dominated).sum(axis=-1)  # below the limit, _DOMINANCE at unit decays
    raw = dominated * (_DOMINANCE / (_DOMINANCE - row_sum))[:, None]
    log_scaling = np.log(scaling)
    return raw.astype(np.float32), (log_scaling - log_scaling.mean()).astype(np.float32)
