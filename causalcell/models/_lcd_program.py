"""The NumPyro program of LCD with linear drift (DESIGN 3.1), stable by construction.

Drift ``A = -diag(d) + diag(e^s) W' diag(e^-s)`` where ``W'`` is the raw off-diagonal weight
matrix shrunk row-wise so that ``sum_k |W'_jk| <= rho d_j`` (strict diagonal dominance) and
``s`` a learned log-scaling. ``A`` is similar to a diagonally dominant matrix with a negative
diagonal, so every eigenvalue has a negative real part (Gershgorin) for all parameter values,
including after knockouts (principal submatrices stay dominant). The scaling lets one-way
regulation exceed the target's decay (``A_ij = W'_ij e^{s_i - s_j}``), so every DAG drift is
reachable; only two-cycles are bounded (``A_ij A_ji = W'_ij W'_ji``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from causalcell.diffusion import LinearDrift, stationary_moments
from causalcell.interventions import Intervention
from causalcell.noise import NegativeBinomial, NoiseModel

__all__ = [
    "INTERVENTION_KINDS",
    "PARAMETER_SITE",
    "condition_interventions",
    "condition_laws",
    "drift_from_sites",
    "intervention_parameters",
    "lcd_model",
    "linear_drift_from_sites",
    "sample_screen_sites",
]

#: Screen-wide intervention kinds LCD learns per-target parameters for.
INTERVENTION_KINDS = ("shift", "knockdown", "knockout")
#: The sample site of each kind's per-gene intervention parameter.
PARAMETER_SITE = {
    "shift": "intervention_effect",
    "knockdown": "knockdown_strength",
    "knockout": "knockout_depth",
}
#: Strength of the diagonal dominance that keeps the drift stable (see module docstring).
_DOMINANCE = 0.95


def drift_from_sites(raw_weights, log_decay, log_scaling, baseline) -> LinearDrift:
    """The stable drift from its unconstrained sites; bias makes ``baseline`` the control mean."""
    decay = jnp.exp(log_decay)
    off_diagonal = raw_weights * (1.0 - jnp.eye(raw_weights.shape[-1], dtype=raw_weights.dtype))
    row_sum = jnp.sum(jnp.abs(off_diagonal), axis=-1)
    limit = _DOMINANCE * decay
    shrink = limit / jnp.maximum(row_sum, limit)
    dominated = off_diagonal * shrink[..., :, None]
    scaling = jnp.exp(log_scaling)
    weights = scaling[..., :, None] * dominated / scaling[..., None, :]
    matrix = weights - jnp.eye(decay.shape[-1]) * decay[..., None, :]
    bias = -jnp.einsum("...ij,...j->...i", matrix, baseline)
    return LinearDrift(log_decay, weights, bias)


def linear_drift_from_sites(values, prior_mask=None) -> LinearDrift:
    """The drift of one draw of the global sites ``values`` (a dict), with the prior mask."""
    raw = values["drift_weights"]
    if prior_mask is not None:
        raw = raw * prior_mask
    return drift_from_sites(raw, values["log_decay"], values["log_scaling"], values["baseline"])


def condition_interventions(condition_targets, kind: str, parameters: dict, drift: LinearDrift):
    """Interventions of every condition ``[P, d]``: each target gets its learned parameter."""
    targets = jnp.asarray(condition_targets, bool)
    identity = Intervention.identity(targets.shape[-1], batch_shape=targets.shape[:-1])
    if kind == "shift":
        return identity._replace(shift=jnp.where(targets, drift.decay * parameters["effect"], 0.0))
    if kind == "knockdown":
        return identity._replace(knockdown=jnp.where(targets, parameters["log_fraction"], 0.0))
    return identity._replace(
        knockout=targets,
        knockout_level=jnp.where(targets, parameters["level"], 0.0),
    )


def intervention_parameters(kind: str, value, baseline) -> dict:
    """The intervention parameter of ``kind`` from its unconstrained site ``value`` [d]."""
    if kind == "shift":
        return {"effect": value}
    if kind == "knockdown":
        return {"log_fraction": -jax.nn.softplus(value)}
    return {"level": baseline + value}


def sample_screen_sites(genes: int, baseline_prior, intervention: str) -> dict:
    """Sample the global sites both LCD programs share, by name: ``baseline`` and ``log_sigma``
    [d], then the intervention parameter [d] (site ``PARAMETER_SITE[intervention]``).

    Each program samples its drift's own sites (``log_decay`` included) before these, so both
    keep their site order and hence their seeded draws.
    """
    return {
        "baseline": numpyro.sample("baseline", dist.Normal(baseline_prior, 1.5).to_event(1)),
        "log_sigma": numpyro.sample(
            "log_sigma", dist.Normal(jnp.log(0.5), 0.5).expand([genes]).to_event(1)
        ),
        PARAMETER_SITE[intervention]: _intervention_site(intervention, genes),
    }


def condition_laws(values, condition_targets, kind: str, prior_mask=None):
    """Drift and the Gaussian stationary law ``(means [P, d], covariances [P, d, d])`` of every
    condition, from the global sites ``values`` (a dict of one draw)."""
    drift = linear_drift_from_sites(values, prior_mask)
    parameters = intervention_parameters(kind, values[PARAMETER_SITE[kind]], values["baseline"])
    interventions = condition_interventions(condition_targets, kind, parameters, drift)
    means, covariances = stationary_moments(drift, jnp.exp(values["log_sigma"]), interventions)
    return drift, means, covariances


def lcd_model(
    counts=None,
    *,
    condition_index,
    condition_targets,
    size_factors,
    baseline_prior,
    prior_mask=None,
    intervention: str = "shift",
    noise: NoiseModel | None = None,
    weight_scale: float = 0.3,
):
    """LCD with linear drift: cells are draws of the intervened stationary law, seen as counts.

    Parameters
    ----------
    counts
        ``[cells, genes]`` observed counts, or None to simulate.
    condition_index
        ``[cells]`` index of each cell's condition into ``condition_targets``.
    condition_targets
        ``[conditions, genes]`` multi-hot targets (row 0 the control by convention).
    size_factors
        ``[cells]`` library sizes.
    baseline_prior
        ``[genes]`` prior mean of the control stationary mean (e.g. log mean fractions).
    prior_mask
        Optional ``[genes, genes]`` 0/1 mask in drift orientation (``mask[i, j] = 1`` allows
        gene ``j`` to regulate gene ``i``); all pairs by default.
    intervention
        ``"shift"`` (learned own-level change per target), ``"knockdown"`` (learned log
        fraction) or ``"knockout"`` (learned pinned level).
    noise
        Observation model; negative binomial by default.
    weight_scale
        Scale of the Laplace (sparsity) prior on raw off-diagonal weights.

    Sample sites
    ------------
    Globals: ``drift_weights`` [d, d], ``log_decay``, ``log_scaling``, ``baseline``,
    ``log_sigma`` [d], the intervention parameter [d], the noise parameters. Per cell (plate
    ``"cells"``): ``latent`` [d] (log-expression), ``counts`` [d].
    """
    if intervention not in INTERVENTION_KINDS:
        raise ValueError(f"intervention must be one of {INTERVENTION_KINDS}, got {intervention!r}.")
    noise = noise if noise is not None else NegativeBinomial()
    genes = condition_targets.shape[-1]
    mask = jnp.ones((genes, genes)) if prior_mask is None else jnp.asarray(prior_mask, float)
    raw = numpyro.sample(
        "drift_weights", dist.Laplace(0.0, weight_scale).expand([genes, genes]).to_event(2)
    )
    log_decay = numpyro.sample("log_decay", dist.Normal(0.0, 0.5).expand([genes]).to_event(1))
    log_scaling = numpyro.sample("log_scaling", dist.Normal(0.0, 1.0).expand([genes]).to_event(1))
    values = {
        "drift_weights": raw,
        "log_decay": log_decay,
        "log_scaling": log_scaling,
        **sample_screen_sites(genes, baseline_prior, intervention),
    }
    drift, means, covariances = condition_laws(values, condition_targets, intervention, mask)
    numpyro.deterministic("drift", drift.matrix())
    noise_parameters = noise.sample_parameters(genes)
    factors = jnp.linalg.cholesky(covariances)
    num_cells = condition_index.shape[0]
    with numpyro.plate("cells", num_cells) as index:
        condition = condition_index[index]
        latent = numpyro.sample(
            "latent", dist.MultivariateNormal(means[condition], scale_tril=factors[condition])
        )
        observed = None if counts is None else counts[index]
        numpyro.sample(
            "counts",
            noise.distribution(latent, size_factors[index], **noise_parameters).to_event(1),
            obs=observed,
        )


def _intervention_site(kind: str, genes: int):
    """The per-gene unconstrained intervention parameter (used where a gene is targeted)."""
    if kind == "shift":
        prior = dist.Normal(0.0, 3.0)  # own-level change, log scale
    elif kind == "knockdown":
        prior = dist.Normal(1.0, 1.0)  # log fraction -softplus(.) ~ -1.3
    else:
        prior = dist.Normal(-3.0, 2.0)  # pinned level below the baseline
    return numpyro.sample(PARAMETER_SITE[kind], prior.expand([genes]).to_event(1))
