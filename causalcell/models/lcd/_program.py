"""The NumPyro program of LCD with linear drift (DESIGN 3.1), stable by construction.

The drift comes from its unconstrained sites by :func:`._drift.drift_from_sites` (stable for
every parameter value; the module states the map and the raw weights' prior). The latent
state is one coordinate per modelled gene followed by ``programs`` latent programs; genes
that are not modelled are decoded linearly from it (:mod:`._gene_space`, which states the
choice and its cost). With every gene modelled and no programs it is the full model.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from causalcell._core.gaussian import MultivariateNormal
from causalcell._core.linalg import cho_solve, cholesky
from causalcell._core.tracing import is_concrete
from causalcell.diffusion import (
    LinearDrift,
    stationary_moments,
    stationary_moments_of_knockouts,
    stationary_moments_of_shifts,
)
from causalcell.handlers import intervention as intervention_request
from causalcell.inference import batch_strata
from causalcell.interventions import Intervention, compose
from causalcell.models.lcd._decoder import decode, sample_decoder
from causalcell.models.lcd._drift import (
    WEIGHT_SCALE,
    drift_inverses,
    drift_weight_prior,
    linear_drift_from_sites,
)
from causalcell.models.lcd._pairs import Pairs, pair_values, pairs_of, sample_pair_sites
from causalcell.noise import NegativeBinomial, NoiseModel

__all__ = [
    "BIAS_KINDS",
    "INTERVENTION_KINDS",
    "PARAMETER_SITE",
    "ConditionLaws",
    "condition_interventions",
    "condition_laws",
    "condition_shifts",
    "intervention_parameters",
    "lcd_model",
    "sample_screen_sites",
    "target_values",
]

#: Intervention kinds that move only the bias: the conditions of such a screen share one
#: stationary covariance (:func:`condition_laws`).
BIAS_KINDS = ("shift", "knockdown")
#: Screen-wide intervention kinds LCD learns per-target parameters for.
INTERVENTION_KINDS = ("shift", "knockdown", "knockout")
#: The sample site of each kind's per-gene intervention parameter.
PARAMETER_SITE = {
    "shift": "intervention_effect",
    "knockdown": "knockdown_strength",
    "knockout": "knockout_depth",
}


def knockout_rank_of(kind: str, condition_targets) -> int | None:
    """The most targets of one of the (concrete) ``condition_targets`` rows on a knockout
    screen, the static rank of :func:`condition_laws`'s low-rank path; ``None`` otherwise."""
    if kind != "knockout":
        return None
    return int(np.asarray(condition_targets).sum(axis=-1).max(initial=0))


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


def target_values(values, kind: str, pairs: Pairs | None = None):
    """The unconstrained intervention value of each target: the per-target site
    ``PARAMETER_SITE[kind]`` ``[m]``, or with ``pairs`` that of each condition's perturbations
    ``[K, m]`` (:func:`._pairs.pair_values`)."""
    return pair_values(values[PARAMETER_SITE[kind]], values, pairs)


def intervention_parameters(kind: str, value, baseline) -> dict:
    """The intervention parameter of ``kind`` from its unconstrained site ``value`` [d]."""
    if kind == "shift":
        return {"effect": value}
    if kind == "knockdown":
        return {"log_fraction": -jax.nn.softplus(value)}
    return {"level": baseline + value}


def sample_screen_sites(genes: int, baseline_prior, intervention: str, pairs: int = 0) -> dict:
    """Sample the global sites both LCD programs share, by name: ``baseline`` and ``log_sigma``
    [d], then the intervention parameter [d] (site ``PARAMETER_SITE[intervention]``), and with
    ``pairs`` (perturbation, target) pairs the hierarchy of :func:`target_values`:
    ``perturbation_spread ~ HalfNormal(1)`` and ``perturbation_deviations ~ N(0, 1)`` [pairs].

    Each program samples its drift's own sites (``log_decay`` included) before these, so both
    keep their site order and hence their seeded draws.
    """
    sites = {
        "baseline": numpyro.sample("baseline", dist.Normal(baseline_prior, 1.5).to_event(1)),
        "log_sigma": numpyro.sample(
            "log_sigma", dist.Normal(jnp.log(0.5), 0.5).expand([genes]).to_event(1)
        ),
        PARAMETER_SITE[intervention]: _intervention_site(intervention, genes),
    }
    return {**sites, **sample_pair_sites(pairs)}


class ConditionLaws(NamedTuple):
    """The drift and the Gaussian stationary law of every condition of a screen (one draw).

    ``covariance`` is ``[m, m]`` when every condition shares it (shift and knockdown screens,
    :data:`BIAS_KINDS`) and ``[P, m, m]`` otherwise; the methods factorise a shared covariance
    once and broadcast the result over conditions.
    """

    drift: LinearDrift
    means: jax.Array  # [P, m]
    covariance: jax.Array  # [m, m] shared, or [P, m, m]

    @property
    def shared(self) -> bool:
        """Whether one covariance serves every condition."""
        return self.covariance.ndim == 2

    def _per_condition(self, matrix):
        return jnp.broadcast_to(matrix, (*self.means.shape, self.means.shape[-1]))

    @property
    def covariances(self) -> jax.Array:
        """``[P, m, m]``."""
        return self._per_condition(self.covariance)

    def factors(self) -> jax.Array:
        """Lower Cholesky factors ``[P, m, m]`` (one factorisation when shared)."""
        return self._per_condition(cholesky(self.covariance))

    def factor_of(self, condition) -> jax.Array:
        """The factor of each cell's condition ``[cells, m, m]``, or the one shared ``[m, m]``
        (which broadcasts against the cells' means without a per-cell copy)."""
        factor = cholesky(self.covariance)
        return factor if self.shared else factor[condition]

    def precisions(self) -> jax.Array:
        """Inverse covariances ``[P, m, m]`` (one factorisation when shared)."""
        factor = cholesky(self.covariance)
        eye = jnp.broadcast_to(jnp.eye(factor.shape[-1], dtype=factor.dtype), factor.shape)
        return self._per_condition(cho_solve((factor, True), eye))


def condition_laws(
    values,
    condition_targets,
    kind: str,
    prior_mask=None,
    explicit=None,
    knockout_rank=None,
    pairs: Pairs | None = None,
) -> ConditionLaws:
    """Drift and the Gaussian stationary law of every condition (:class:`ConditionLaws`), from
    the global sites ``values`` (a dict of one draw).

    ``explicit``: an optional :class:`~causalcell.interventions.Intervention` ``[d]`` composed
    after every condition's own (an outside ``do`` with explicit values, see :func:`lcd_model`).

    Shift and knockdown screens (:data:`BIAS_KINDS`) move only the bias, so their conditions
    share one covariance: it is solved once (one Lyapunov equation per draw instead of one per
    condition) and broadcast to ``[P, d, d]``, and the means come from one inverse applied to
    ``P`` biases; both from the drift's inverses by matrix products (:func:`drift_inverses`).
    Knockouts change rows of the drift: one solve per condition, or, given
    ``knockout_rank`` (the most targets of one condition, static), low-rank updates of one
    inverse (:func:`causalcell.diffusion.stationary_moments_of_knockouts`).
    Consumers factorise through :class:`ConditionLaws`, so a shared covariance is factorised
    once too. ``pairs`` (rows of the same conditions): each target's parameter is that of
    the condition's perturbations of it (:func:`target_values`).
    """
    drift = linear_drift_from_sites(values, prior_mask)
    parameters = intervention_parameters(
        kind, target_values(values, kind, pairs), values["baseline"]
    )
    sigma = jnp.exp(values["log_sigma"])
    if kind in BIAS_KINDS:
        # Every condition has the same drift matrix and noise: one Lyapunov solve for all.
        shifts = condition_shifts(condition_targets, kind, parameters, drift)
        means, covariance = stationary_moments_of_shifts(
            drift, sigma, shifts, explicit, drift_inverses(drift)
        )
        return ConditionLaws(drift, means, covariance)
    interventions = condition_interventions(condition_targets, kind, parameters, drift)
    if explicit is not None:
        interventions = compose(interventions, explicit)
        knockout_rank = _rank(knockout_rank, explicit.knockout)
    if knockout_rank is None:
        means, covariances = stationary_moments(drift, sigma, interventions)
    else:
        means, covariances = stationary_moments_of_knockouts(
            drift, sigma, interventions, knockout_rank, drift_inverses(drift)
        )
    return ConditionLaws(drift, means, covariances)


def condition_shifts(condition_targets, kind: str, parameters: dict, drift: LinearDrift):
    """What a shift or knockdown screen's conditions add to the bias ``[P, d]``: ``decay_j``
    times the learned effect (shift) or log-fraction (knockdown) of each target, the bias
    change of :func:`condition_interventions` under :func:`causalcell.diffusion.intervene_linear`.
    """
    targets = jnp.asarray(condition_targets, bool)
    value = parameters["effect"] if kind == "shift" else parameters["log_fraction"]
    return jnp.where(targets, drift.decay * value, 0.0)


def lcd_model(
    counts=None,
    *,
    condition_index,
    condition_targets,
    size_factors,
    baseline_prior,
    prior_mask=None,
    decoded_prior=None,
    response_scales=None,
    intervention: str = "shift",
    noise: NoiseModel | None = None,
    weight_scale: float = WEIGHT_SCALE,
    programs: int = 0,
    loading_scale: float = 1.0,
    coordinates=None,
    knockout_rank: int | None = None,
    pair_weights=None,
    pair_coordinates=None,
):
    """LCD with linear drift: cells are draws of the intervened stationary law, seen as counts.

    The latent state has ``m`` coordinates: ``m - programs`` modelled genes, then ``programs``
    latent programs. Count columns are the modelled genes (each reads its own coordinate as
    log-rate) followed by the decoded genes (``decoded_prior`` gives how many), whose log-rates
    are linear in the state (:func:`._decoder.decode`). With no programs and no decoded
    genes (the defaults) every gene is a coordinate: the full model of DESIGN 3.1.

    Parameters
    ----------
    counts
        ``[cells, genes]`` observed counts (modelled genes first, then decoded genes), or None
        to simulate.
    condition_index
        ``[cells]`` index of each cell's condition into ``condition_targets``.
    condition_targets
        ``[conditions, m]`` multi-hot targets over the latent coordinates (row 0 the control
        by convention); programs are never targeted (their columns are zero).
    size_factors
        ``[cells]`` library sizes.
    baseline_prior
        ``[m]`` prior mean of the control stationary mean (e.g. log mean fractions of modelled
        genes, zero for programs).
    prior_mask
        Optional ``[m, m]`` 0/1 mask in drift orientation (``mask[i, j] = 1`` allows
        coordinate ``j`` to regulate coordinate ``i``); all pairs by default.
    decoded_prior
        Optional ``[decoded]`` prior mean of the decoded genes' control log-rates; None when
        every gene is modelled.
    response_scales
        ``[m - programs]`` scales of the decoder responses' Laplace prior, one per modelled
        gene (with ``decoded_prior``; :func:`._decoder.initial_decoder` estimates them).
    intervention
        ``"shift"`` (learned own-level change per target), ``"knockdown"`` (learned log
        fraction) or ``"knockout"`` (learned pinned level).
    noise
        Observation model; negative binomial by default.
    weight_scale
        Scale of a row's raw off-diagonal weights taken together: each is Cauchy, the scale
        shared out over the row's allowed regulators (:mod:`._drift`).
    programs
        Number of latent programs (the last coordinates of the state).
    loading_scale
        Scale of the Normal prior on the decoder's loadings.
    coordinates
        Names of the latent coordinates (``LCD.coordinates``), the entries of the vectorised
        intervention site ``"genes"``; ``coordinate0`` .. by default.
    knockout_rank
        Most targets of one condition of a knockout screen (static): the conditions' laws then
        come from one inverse and low-rank updates instead of one solve each (same values).
    pair_weights, pair_coordinates
        ``[conditions, E]`` and ``[E]`` (:class:`Pairs`): the screen's (perturbation, target)
        pairs, when its perturbations are named apart from their targets; each pair then gets
        its own parameter around its target's (:func:`target_values`).

    Interventions
    -------------
    The program asks for ``intervention("genes", names=coordinates, learned=intervention)``
    (:func:`causalcell.handlers.intervention`), so ``do(lcd_model, {"genes": {...}})`` acts on
    every cell. A request for the learned intervention (:func:`causalcell.handlers.learned`,
    or the screen's kind without a value, e.g. ``knockout()`` on a knockout screen) ORs the
    gene into each condition's targets, so it gets its learned per-target parameter exactly
    as a trained perturbation does (a target composed with itself changes nothing); a
    valueless request of another kind (``knockout()`` on a shift screen) raises, since the
    screen learned no such parameter. Explicit values (``shift(0.5)``, ``knockout(-2.0)``)
    compose on top of every condition's own. Without a handler it is the identity and the
    program is unchanged.

    Sample sites
    ------------
    Globals: ``drift_weights`` [m, m], ``log_decay``, ``log_scaling``, ``baseline``,
    ``log_sigma`` [m], the intervention parameter [m], with pairs ``perturbation_spread`` and
    ``perturbation_deviations`` [E], the noise parameters [genes], and with
    decoded genes ``decoder_offset`` [decoded], ``decoder_responses``
    [decoded, m - programs] and ``decoder_loadings`` [decoded, m]. Per
    cell (plate ``"cells"``): ``latent`` [m] (log-expression of modelled genes, then
    programs), ``counts`` [genes].
    """
    if intervention not in INTERVENTION_KINDS:
        raise ValueError(f"intervention must be one of {INTERVENTION_KINDS}, got {intervention!r}.")
    noise = noise if noise is not None else NegativeBinomial()
    size = condition_targets.shape[-1]  # latent coordinates: modelled genes, then programs
    mask = jnp.ones((size, size)) if prior_mask is None else jnp.asarray(prior_mask, float)
    raw = numpyro.sample("drift_weights", drift_weight_prior(mask, weight_scale))
    log_decay = numpyro.sample("log_decay", dist.Normal(0.0, 0.5).expand([size]).to_event(1))
    log_scaling = numpyro.sample("log_scaling", dist.Normal(0.0, 1.0).expand([size]).to_event(1))
    values = {
        "drift_weights": raw,
        "log_decay": log_decay,
        "log_scaling": log_scaling,
        **sample_screen_sites(size, baseline_prior, intervention, _count(pair_coordinates)),
    }
    pairs = pairs_of({"pair_weights": pair_weights, "pair_coordinates": pair_coordinates})
    names = coordinates or [f"coordinate{index}" for index in range(size)]
    explicit, own = intervention_request("genes", names=names, learned=intervention)
    targets = jnp.logical_or(jnp.asarray(condition_targets, bool), own)
    numpyro.deterministic("drift", linear_drift_from_sites(values, mask).matrix())
    modelled = size - programs
    decoded = 0 if decoded_prior is None else decoded_prior.shape[-1]
    noise_parameters = noise.sample_parameters(modelled + decoded)
    decoder = None
    if decoded:
        decoder = sample_decoder(decoded_prior, response_scales, modelled, size, loading_scale)
    num_cells = condition_index.shape[0]
    with numpyro.plate("cells", num_cells) as index:
        # Under a fit's condition-by-condition minibatch, only that batch's conditions.
        conditions, slot, covered = batch_strata(condition_index[index], targets.shape[0])
        laws = condition_laws(
            values,
            targets[conditions],
            intervention,
            mask,
            explicit,
            _rank(knockout_rank, own),
            None if pairs is None else pairs.take(conditions),
        )
        means = laws.means[slot]
        if covered is not None:  # a batch not drawn condition by condition: fail loudly
            means = jnp.where(covered[:, None], means, jnp.nan)
        latent = numpyro.sample(
            "latent", MultivariateNormal(means, scale_tril=laws.factor_of(slot))
        )
        observed = None if counts is None else counts[index]
        log_rate = decode(latent, means, values["baseline"], decoder, modelled)
        numpyro.sample(
            "counts",
            noise.distribution(log_rate, size_factors[index], **noise_parameters).to_event(1),
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


def _count(pair_coordinates) -> int:
    """Number of (perturbation, target) pairs: 0 without them."""
    return 0 if pair_coordinates is None else int(np.shape(pair_coordinates)[-1])


def _rank(knockout_rank, requested):
    """Most knockouts of one condition once ``requested`` genes (a mask: a ``do`` request or
    explicit knockouts) join every condition's targets; ``None`` (one solve per condition)
    when either is unknown at trace time."""
    if knockout_rank is None or not is_concrete(requested):
        return None
    return knockout_rank + int(np.sum(requested))
