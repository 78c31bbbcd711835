"""Exact path-wise counterfactuals of single cells under linear-drift LCD (DESIGN 2.5, 3.1).

A cell's latent ``x`` is the stationary state of ``dx = (A x + b) dt + S dW`` under its
factual intervention (``S = diag(sigma)``). "Had this cell been perturbed by ``T'``" keeps the
cell's exogenous noise, here its whole Brownian path ``W``, and changes only the drift: the
counterfactual state ``x'`` solves ``dx' = (A' x' + b') dt + S' dW`` with the **same** ``W``,
where ``(A', b', S')`` is the system under the action's intervention
(:func:`causalcell.diffusion.intervene_linear`; a knockout pins row ``j`` to
``-d_j (x_j - c_j)`` and keeps gene ``j``'s noise, so a pinned gene fluctuates around ``c_j``
with its own Brownian path). Stacking the two worlds gives one linear SDE on ``z = (x, x')``:

    dz = (M z + beta) dt + [S; S'] dW,   M = blockdiag(A, A'),   beta = (b, b'),

whose stationary law (the pair observed long after the shared path started, Lorch et al.
2024) is Gaussian with mean ``(mu, mu')`` (``mu = -A^{-1} b``) and covariance ``J`` solving
one Lyapunov equation of size ``2d``:

    M J + J M^T + N = 0,   N = [[S S^T, S S'^T], [S' S^T, S' S'^T]].

``N`` has rank ``d`` (the worlds share ``d`` Brownian motions); the sign-function solver only
inverts ``M``, so a singular ``N`` is fine. Writing ``J = [[Sigma, C^T], [C, Sigma']]``, the
counterfactual given the factual state is Gaussian (conditional of the joint):

    x' | x ~ N(mu' + K (x - mu), Sigma' - K C^T),   K = C Sigma^{-1}.

Abduction-action-prediction (Pearl 2009, ch. 7): the counts depend on ``W`` only through
``x``, so the posterior of the path given the counts is ``p(W | x) q(x | counts)``. Hence
draw ``x`` from the cell's local posterior ``N(latent_mean, latent_cov)`` (the guide's exact
Gaussian, :mod:`._guide`, under the same draw of the globals), then ``x'`` from the
conditional above. Special cases, all exact: a shift (``A' = A``, ``S' = S``) gives ``C =
Sigma' = Sigma``, ``K = I`` and ``x' = x + mu' - mu``; a knockout of a gene without parents
moves that gene by ``c_j - mu_j`` and leaves every non-descendant unchanged; with ``x`` from
its prior, ``x'`` has the intervened stationary law ``N(mu', Sigma')``.

The action **replaces** the cell's factual intervention: the counterfactual world is the
system under ``action_targets`` only. For "this cell, had GATA1 also been knocked out" pass
``compose_targets(factual, gata1)`` (for a control cell that is just ``gata1``); for "this
GATA1-perturbed cell, had it been a control" pass an all-False action. Every target gets the
model's learned parameter of its one intervention kind, as in the factual world
(:func:`._program.condition_interventions`).

References
----------
Pearl, J. (2009). Causality, 2nd ed., ch. 7 (abduction, action, prediction).
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from causalcell._core.coupling import COUPLINGS, couple
from causalcell._core.linalg import cho_solve, cholesky
from causalcell.diffusion import (
    LinearDrift,
    intervene_linear,
    solve_continuous_lyapunov,
    stationary_mean,
)
from causalcell.interventions import Intervention
from causalcell.models.lcd._drift import linear_drift_from_sites
from causalcell.models.lcd._kinds import condition_interventions
from causalcell.models.lcd._pairs import screen_kinds
from causalcell.noise import NegativeBinomial, NoiseModel

__all__ = [
    "compose_targets",
    "counterfactual_conditional",
    "counterfactual_counts",
    "counterfactual_latents",
    "paired_stationary_moments",
    "same_worlds",
]

#: Relative size (to the largest variance) below which a conditional variance counts as zero:
#: about 1000 float32 epsilons, above the rounding of the Lyapunov solve and the Schur complement.
_RANK_TOLERANCE = 1e-4


def compose_targets(factual_targets, action_targets):
    """Targets of the action composed with the cell's own perturbation (union of the sets)."""
    return jnp.logical_or(jnp.asarray(factual_targets, bool), jnp.asarray(action_targets, bool))


def paired_stationary_moments(
    drift: LinearDrift, sigma, factual: Intervention | None, action: Intervention | None
):
    """Joint stationary law of the factual and counterfactual states sharing one Brownian path.

    Parameters
    ----------
    drift
        The linear drift (unintervened).
    sigma
        ``[d]`` (or scalar) diffusion scales.
    factual, action
        Interventions ``[..., d]`` of the two worlds (None: no intervention); batch axes
        broadcast.

    Returns
    -------
    mean, covariance
        ``[..., 2d]`` (``(mu, mu')``) and ``[..., 2d, 2d]`` (``J`` of the module docstring);
        NaN where either intervened drift is not stable.
    """
    matrix, _, scale = intervene_linear(drift, sigma, factual)
    matrix_cf, _, scale_cf = intervene_linear(drift, sigma, action)
    d, shapes = drift.num_genes, (matrix, matrix_cf, scale[..., None], scale_cf[..., None])
    batch = jnp.broadcast_shapes(*(array.shape[:-2] for array in shapes))
    zeros = jnp.zeros((*batch, d, d), matrix.dtype)
    stacked_drift = jnp.concatenate(
        [
            jnp.concatenate([jnp.broadcast_to(matrix, zeros.shape), zeros], -1),
            jnp.concatenate([zeros, jnp.broadcast_to(matrix_cf, zeros.shape)], -1),
        ],
        -2,
    )
    # [S; S'] with S = diag(sigma): N = v v^T on the blocks' diagonals, v = (sigma, sigma').
    loadings = jnp.concatenate(
        [jnp.broadcast_to(scale, (*batch, d)), jnp.broadcast_to(scale_cf, (*batch, d))], -1
    )
    shared = jnp.tile(jnp.eye(d, dtype=matrix.dtype), (2, 2))
    noise = loadings[..., :, None] * loadings[..., None, :] * shared
    covariance = solve_continuous_lyapunov(stacked_drift, noise)
    covariance = 0.5 * (covariance + jnp.swapaxes(covariance, -1, -2))
    mean = jnp.concatenate(
        [
            jnp.broadcast_to(stationary_mean(drift, sigma, factual), (*batch, d)),
            jnp.broadcast_to(stationary_mean(drift, sigma, action), (*batch, d)),
        ],
        -1,
    )
    return mean, covariance


def counterfactual_conditional(mean, covariance):
    """Law of ``x' | x`` from the joint moments: ``x' = offset + gain @ x + factor @ eps``.

    Parameters
    ----------
    mean, covariance
        ``[..., 2d]`` and ``[..., 2d, 2d]`` from :func:`paired_stationary_moments`.

    Returns
    -------
    offset, gain, factor
        ``[..., d]`` (``mu' - K mu``), ``[..., d, d]`` (``K = C Sigma^{-1}``) and a square root
        ``[..., d, d]`` of ``Sigma' - K C^T`` (which may be singular: zero columns where the
        counterfactual is a deterministic function of ``x``).
    """
    d = mean.shape[-1] // 2
    factual = covariance[..., :d, :d]
    cross = covariance[..., d:, :d]  # C = Cov(x', x)
    gain = jnp.swapaxes(cho_solve((cholesky(factual), True), jnp.swapaxes(cross, -1, -2)), -1, -2)
    residual = covariance[..., d:, d:] - gain @ jnp.swapaxes(cross, -1, -2)
    offset = mean[..., d:] - jnp.einsum("...ij,...j->...i", gain, mean[..., :d])
    scale = jnp.max(jnp.diagonal(covariance, axis1=-2, axis2=-1), axis=-1)
    return offset, gain, _semidefinite_factor(residual, _RANK_TOLERANCE * scale)


def _semidefinite_factor(matrix, tolerance):
    """``L`` with ``L L^T = matrix`` (PSD, maybe singular): outer-product Cholesky zeroing a
    column whose pivot is below ``tolerance`` (a PSD Schur complement has a zero row and column
    there). Plain JAX loops, no LAPACK call (:mod:`causalcell._core.linalg`: jaxlib 0.10
    deadlock)."""
    matrix = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    n = matrix.shape[-1]
    rows = jnp.arange(n)

    def step(j, state):
        remaining, factor = state
        pivot = remaining[..., j, j]
        keep = pivot > tolerance
        column = remaining[..., :, j] / jnp.sqrt(jnp.where(keep, pivot, 1.0))[..., None]
        column = jnp.where(keep[..., None] & (rows >= j), column, 0.0)
        remaining = remaining - column[..., :, None] * column[..., None, :]
        return remaining, factor.at[..., :, j].set(column)

    _, factor = jax.lax.fori_loop(0, n, step, (matrix, jnp.zeros_like(matrix)))
    return factor


@functools.partial(jax.jit, static_argnames=("kind",))
def counterfactual_latents(
    values,
    factual_targets,
    action_targets,
    kind: str,
    latent_mean,
    latent_cov,
    key,
    prior_mask=None,
    pair_index=None,
    latent_scale_tril=None,
    pairs=None,
):
    """Factual and counterfactual latent draws of cells, sharing each cell's Brownian path.

    Where a cell's two worlds have one intervention (:func:`same_worlds`), ``x' = x``
    exactly (the conditional is then ``K = I`` with no residual; returning ``x`` avoids the
    float32 rounding of the Lyapunov solve and of ``C Sigma^{-1}``).

    Parameters
    ----------
    values
        One draw of LCD's global sites (a dict without a sample axis; ``jax.vmap`` over draws).
    factual_targets, action_targets
        ``[P, m]`` (or ``[m]``) multi-hot targets over latent coordinates of the factual and the
        counterfactual world. The action replaces the factual intervention; compose them first
        with :func:`compose_targets` for "had ``T'`` been added to its perturbation".
    kind
        The model's intervention kind (``"shift"``, ``"knockdown"`` or ``"knockout"``).
    latent_mean, latent_cov
        ``[cells, m]`` and ``[cells, m, m]``: each cell's local posterior under ``values`` (the
        guide's ``MultivariateNormal``; its ``scale_tril @ scale_tril^T`` is the covariance).
        ``latent_cov`` may be None when ``latent_scale_tril`` is given.
    key
        PRNG key.
    prior_mask
        Optional ``[m, m]`` drift mask, as given to the model.
    pair_index
        Optional ``[cells]`` index of each cell's row of the targets (one Lyapunov solve of size
        ``2m`` per row, not per cell); by default cell ``c`` uses row ``c`` (or the only row).
    latent_scale_tril
        Optional ``[cells, m, m]`` (or shared ``[m, m]``) lower Cholesky factor of the local
        posterior covariance (the guide's ``scale_tril``), which saves a factorisation per cell.
    pairs
        Optional ``(factual, action)`` :class:`._pairs.Pairs` of the two target rows, on a
        screen of perturbations named apart from their targets.

    Returns
    -------
    factual, counterfactual
        ``[cells, m]`` each: ``x`` drawn from the local posterior and ``x'`` from ``x' | x``.
    """
    screen_kinds(kind)  # raises for an unknown kind
    drift = linear_drift_from_sites(values, prior_mask)
    factual_pairs, action_pairs = (None, None) if pairs is None else pairs

    def interventions(targets, rows):
        return condition_interventions(jnp.atleast_2d(targets), kind, values, drift, rows)

    factual = interventions(factual_targets, factual_pairs)
    action = interventions(action_targets, action_pairs)
    mean, covariance = paired_stationary_moments(
        drift, jnp.exp(values["log_sigma"]), factual, action
    )
    offset, gain, factor = counterfactual_conditional(mean, covariance)
    cells = latent_mean.shape[0]
    if pair_index is None:
        if offset.shape[0] not in (1, cells):
            raise ValueError(
                f"{offset.shape[0]} target rows for {cells} cells: pass pair_index [cells]."
            )
        pair_index = jnp.arange(cells) if offset.shape[0] > 1 else jnp.zeros(cells, int)
    posterior_key, path_key = jax.random.split(key)
    if latent_scale_tril is None:
        latent_scale_tril = cholesky(latent_cov)
    posterior_factor = latent_scale_tril
    eps = jax.random.normal(posterior_key, latent_mean.shape, latent_mean.dtype)
    x = latent_mean + jnp.einsum("...ij,...j->...i", posterior_factor, eps)  # or one [m, m]
    eta = jax.random.normal(path_key, latent_mean.shape, latent_mean.dtype)
    x_cf = (
        offset[pair_index]
        + jnp.einsum("cij,cj->ci", gain[pair_index], x)
        + jnp.einsum("cij,cj->ci", factor[pair_index], eta)
    )
    same = same_worlds(factual_targets, action_targets, pairs)
    same = jnp.broadcast_to(same, offset.shape[:1])
    return x, jnp.where(same[pair_index][:, None], x, x_cf)


def same_worlds(factual_targets, action_targets, pairs=None):
    """Whether each row's two worlds have one intervention: the same targets and, on a screen
    of perturbations named apart from their targets, the same perturbations (two reagents of
    one gene are two interventions)."""
    factual = jnp.atleast_2d(factual_targets).astype(bool)
    same = jnp.all(factual == jnp.atleast_2d(action_targets).astype(bool), axis=-1)
    if pairs is not None:
        factual_pairs, action_pairs = pairs
        same = same & jnp.all(factual_pairs.active == action_pairs.active, axis=-1)
    return same


_NEGATIVE_BINOMIAL = NegativeBinomial()


@functools.partial(jax.jit, static_argnames=("coupling", "noise"))
def counterfactual_counts(
    key,
    counterfactual_log_rate,
    size_factors,
    parameters,
    *,
    coupling: str = "resample",
    factual_log_rate=None,
    observed_counts=None,
    noise: NoiseModel = _NEGATIVE_BINOMIAL,
):
    """Observations (counts, or continuous values) of the counterfactual world from its
    log-rates, with each cell's own size factor.

    Parameters
    ----------
    key
        PRNG key.
    counterfactual_log_rate
        ``[cells, genes]`` decoded log-rates of ``x'`` (every gene, count-column order).
    size_factors
        ``[cells]`` the cells' own (observed) library sizes.
    parameters
        The noise parameters of the same draw by name (``{"concentration": [genes]}`` for the
        negative binomial; ``[genes]`` or ``[cells, genes]`` each).
    coupling
        ``"resample"``: fresh draws; ``"quantile"``: the observation's randomised quantile
        under the factual law, read off the counterfactual law
        (:func:`causalcell._core.coupling.couple`: counts in float64, exact to the count; a
        Gaussian keeps its standardised noise; needs ``factual_log_rate`` and
        ``observed_counts``; keeps the observation where the law is unchanged).
    noise
        The fit's noise model (negative binomial by default).

    Returns ``[cells, genes]`` counterfactual counts (float).
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}.")
    law = noise.distribution(counterfactual_log_rate, size_factors, **parameters)
    if coupling == "resample":
        return law.sample(key).astype(counterfactual_log_rate.dtype)
    if factual_log_rate is None or observed_counts is None:
        raise ValueError("coupling='quantile' needs factual_log_rate and observed_counts.")
    factual = noise.distribution(factual_log_rate, size_factors, **parameters)
    return couple(key, factual, jnp.asarray(observed_counts, law.mean.dtype), law)
