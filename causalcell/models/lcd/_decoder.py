"""LCD's linear decoder of the genes that are not coordinates of the latent state.

A decoded gene ``g`` of a cell in condition ``p`` has log-rate
``c_g + R_g . (mu_p - baseline)_M + F_g . (z - mu_p)`` (see :mod:`._gene_space` for why):
offsets ``c``, responses ``R`` to the condition's mean shift of the modelled genes, loadings
``F`` of the cell's fluctuation. This module holds the decoder's sample sites and priors, the
map itself and its data-driven initial values.

References
----------
Park, T. & Casella, G. (2008). The Bayesian lasso. JASA 103, 681-686.
Harman, H. H. (1976). Modern Factor Analysis (3rd ed.). University of Chicago Press
(principal axis factoring, used here to initialise the loadings).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

__all__ = [
    "DECODER_SITES",
    "decode",
    "decoded_offsets",
    "decoder_from_sites",
    "initial_decoder",
    "sample_decoder",
]

#: Initial stationary standard deviation of a program: an uncoupled coordinate at the prior
#: medians of its decay (1) and noise scale (0.5) has variance ``0.5**2 / 2``.
_PROGRAM_SCALE = 0.5 / np.sqrt(2.0)
#: Smallest response scale of the empirical-Bayes prior (``initial_decoder``): a modelled gene
#: whose measured responses are all within their noise still gets a prior, not a point mass.
_MIN_RESPONSE_SCALE = 1e-3
#: Cells used to initialise the program loadings (a subsample keeps it cheap on any screen).
_INIT_CELLS = 4000
#: The decoder's sample sites, estimated by MAP (``point_estimates`` of the guide). A
#: response's posterior spread ``s`` multiplies the condition's mean shift (3 nats under a
#: knockout) in every decoded gene, and the mean-field ELBO pays ``lambda s^2 shift^2 / 2`` per
#: gene and cell for it: summed over hundreds of decoded genes that outweighs the knocked-out
#: gene's own counts (a few at most), and the fit shrank knockout depths (by 0.2-0.4 nats at
#: 1,000 genes, in-sample, with scales started at 1e-3; by half with scales started at 0.1). With
#: thousands of cells per condition the decoder's posterior is narrow anyway, and a VAE's
#: decoder weights are point estimates for the same reason.
DECODER_SITES = ("decoder_offset", "decoder_responses", "decoder_loadings")


def sample_decoder(
    decoded_prior, response_scales, modelled: int, latent_size: int, loading_scale: float
) -> dict:
    """Sample the decoder sites: ``decoder_offset`` ``[decoded]`` around ``decoded_prior`` (the
    decoded genes' control log-rates, scale 1.5 as the baseline's), ``decoder_responses``
    ``[decoded, modelled]`` with ``R[g, j] ~ Laplace(0, response_scales[j])`` and
    ``decoder_loadings`` ``[decoded, m]``, independent ``Normal(0, loading_scale)``.

    A perturbation moves a few decoded genes much and most not at all, and each response is
    read from one or a few condition means of a few hundred cells: under a flat prior the
    responses fit those means' sampling noise, which then adds up over every decoded gene of a
    held-out combination. The sparse prior's scale per modelled gene comes from the screen
    (:func:`initial_decoder`, empirical Bayes): responses are point estimates (see
    :data:`DECODER_SITES`), and a scale learned jointly with point estimates has its optimum
    at zero (every response zero, infinite prior density), where a fit of the 1,000-gene
    screens ended (scales of 3e-4, every response shrunk away).

    References
    ----------
    Park, T. & Casella, G. (2008). The Bayesian lasso. JASA 103, 681-686.
    """
    decoded = decoded_prior.shape[-1]
    offset = numpyro.sample("decoder_offset", dist.Normal(decoded_prior, 1.5).to_event(1))
    laplace = dist.Laplace(0.0, response_scales)
    responses = numpyro.sample("decoder_responses", laplace.expand([decoded, modelled]).to_event(2))
    prior = dist.Normal(0.0, loading_scale)
    loadings = numpyro.sample("decoder_loadings", prior.expand([decoded, latent_size]).to_event(2))
    return {"offset": offset, "responses": responses, "loadings": loadings}


def decoder_from_sites(values) -> dict | None:
    """The decoder of a draw of the globals (``None`` when every gene is modelled)."""
    if "decoder_loadings" not in values:
        return None
    return {
        "offset": values["decoder_offset"],
        "responses": values["decoder_responses"],
        "loadings": values["decoder_loadings"],
    }


def decoded_offsets(means, baseline, decoder: dict, modelled: int):
    """Per-condition part ``c + R (mu - baseline)_M - F mu`` ``[..., decoded]`` of the decoded
    log-rates, for stationary means ``mu`` ``[..., m]``: the log-rates are this plus ``F z``."""
    shift = (means[..., :modelled] - baseline[..., :modelled]) @ decoder["responses"].T
    return decoder["offset"] + shift - means @ decoder["loadings"].T


def decode(latent, means, baseline, decoder: dict | None, modelled: int):
    """Log-rates ``[..., G]`` (internal order) of latents ``[..., m]`` whose conditions have
    stationary means ``means`` ``[..., m]``: the modelled genes' own coordinates, then
    ``c + R (mu - baseline)_M + F (z - mu)`` for the decoded genes."""
    own = latent if latent.shape[-1] == modelled else latent[..., :modelled]
    if decoder is None:
        return own
    decoded = decoded_offsets(means, baseline, decoder, modelled)
    decoded = decoded + latent @ decoder["loadings"].T
    return jnp.concatenate([own, decoded], axis=-1)


def initial_decoder(arrays, modelled: int, programs: int):
    """Initial ``decoder_responses`` ``[decoded, modelled]`` and ``decoder_loadings``
    ``[decoded, m]`` from the screen (see :meth:`GeneSpace.latent_values`), and the response
    prior's scales ``[modelled]``.

    Responses start at a ridge regression of the decoded genes' condition mean changes (log
    pseudobulk rates, from the control) on the modelled genes'. The scale of column ``j`` is
    an empirical-Bayes moment estimate: a ``Laplace(0, s)`` response has variance ``2 s^2``,
    and the regression's coefficients of column ``j`` have mean square ``2 s^2`` plus their
    sampling variance, propagated from each pseudobulk level's ratio-estimator variance
    through the regression; ``s`` is the excess over that noise (at least
    :data:`_MIN_RESPONSE_SCALE`).

    References
    ----------
    Efron, B. & Morris, C. (1973). Stein's estimation rule and its competitors: an empirical
    Bayes approach. JASA 68, 117-130.
    Cochran, W. G. (1977). Sampling Techniques (3rd ed.). Wiley (variance of a ratio estimator).
    """
    counts, sizes = arrays.counts, arrays.size_factors
    conditions = arrays.condition_targets.shape[0]
    one_hot = np.eye(conditions, dtype=np.float32)[arrays.condition_index]
    totals = one_hot.T @ counts  # [P, G] summed counts of each condition
    size_totals = one_hot.T @ sizes
    levels = np.log((totals + 0.5) / size_totals[:, None])
    variances = _level_variances(one_hot, counts, sizes, totals, size_totals)
    changes = levels[1:] - levels[:1]  # condition mean changes from the control (row 0)
    inputs, outputs = changes[:, :modelled], changes[:, modelled:]
    gram = inputs.T @ inputs
    # Ridge at 5% of the mean input energy: the loadings of modelled genes that few conditions
    # move (or that move together) shrink instead of fitting pseudobulk noise.
    ridge = 0.05 * np.trace(gram) / max(modelled, 1) + 1e-6
    hat = np.linalg.solve(gram + ridge * np.eye(modelled), inputs.T)  # [modelled, P - 1]
    own = (hat @ outputs).T.astype(np.float32)
    noise = (hat**2) @ (variances[1:, modelled:] + variances[:1, modelled:])  # [modelled, dec]
    excess = np.maximum((own.T**2 - noise).mean(axis=1), 0.0)
    scales = np.maximum(np.sqrt(excess / 2.0), _MIN_RESPONSE_SCALE).astype(np.float32)
    if not programs:
        return own, own, scales
    rng = np.random.default_rng(0)
    cells = rng.permutation(counts.shape[0])[:_INIT_CELLS]
    log_levels = np.log((counts[cells, modelled:] + 0.5) / sizes[cells, None])
    index = arrays.condition_index[cells]
    means = np.zeros((conditions, log_levels.shape[1]), np.float64)
    np.add.at(means, index, log_levels)
    means /= np.maximum(np.bincount(index, minlength=conditions), 1)[:, None]
    residuals = log_levels - means[index]
    factors = _principal_axis_factors(residuals, programs)
    loadings = np.concatenate([own, factors / _PROGRAM_SCALE], axis=1).astype(np.float32)
    return own, loadings, scales


def _level_variances(one_hot, counts, sizes, totals, size_totals) -> np.ndarray:
    """Sampling variance ``[P, G]`` of each log pseudobulk level ``log(sum x / sum s)``: the
    ratio estimator's variance ``sum_c (x_c - r s_c)^2 / (sum s)^2`` over ``r^2`` (delta
    method), with the level's half-count offset in ``r`` so that genes without counts stay
    finite."""
    rates = (totals + 0.5) / size_totals[:, None]
    squares = one_hot.T @ np.square(counts)
    cross = one_hot.T @ (counts * sizes[:, None])
    size_squares = one_hot.T @ np.square(sizes)
    spread = squares - 2.0 * rates * cross + rates**2 * size_squares[:, None]
    return np.maximum(spread, 0.0) / np.square(totals + 0.5)


def _principal_axis_factors(residuals, rank: int, rounds: int = 5, power: int = 8) -> np.ndarray:
    """Loadings ``[genes, rank]`` of a factor model ``cov = L L^T + diag(psi)`` of centred
    ``residuals`` ``[cells, genes]`` by principal axis factoring (the top eigenvectors of the
    covariance with its diagonal replaced by common variances), with the eigenvectors found by
    subspace iteration on the residuals, so the ``genes x genes`` covariance is never formed.
    Measurement noise is independent across genes given the latent, so it stays in ``psi``
    instead of pulling the factors toward the noisiest genes."""
    residuals = np.asarray(residuals, np.float64)
    cells, genes = residuals.shape
    rank = min(rank, genes)
    variance = (residuals**2).sum(axis=0) / cells
    unique = 0.5 * variance
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(genes, rank)))[0]

    def reduced(vectors, shift=0.0):  # (cov - diag(unique) + shift I) @ vectors
        common = residuals.T @ (residuals @ vectors) / cells
        return common - (unique - shift)[:, None] * vectors

    for _ in range(rounds):
        # The shift makes the iterated matrix positive semi-definite, so the iteration finds
        # its largest eigenvalues, not the negative ones of largest magnitude.
        for _ in range(power):
            basis = np.linalg.qr(reduced(basis, unique.max()))[0]
        eigenvalues, rotation = np.linalg.eigh(basis.T @ reduced(basis))
        loadings = basis @ rotation * np.sqrt(np.maximum(eigenvalues, 0.0))
        unique = np.maximum(variance - (loadings**2).sum(axis=1), 1e-3 * variance)
    return loadings[:, ::-1]
