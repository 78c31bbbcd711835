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

from causalcell._core.gaussian import CellFactors
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
from causalcell.interventions import compose
from causalcell.models.lcd._decoder import decode, sample_decoder
from causalcell.models.lcd._drift import (
    WEIGHT_SCALE,
    drift_inverses,
    drift_weight_prior,
    linear_drift_from_sites,
)
from causalcell.models.lcd._kinds import (
    BIAS_KINDS,
    condition_interventions,
    condition_shifts,
    sample_screen_sites,
)
from causalcell.models.lcd._pairs import Pairs, pairs_of, screen_kinds
from causalcell.noise import NegativeBinomial, NoiseModel

__all__ = ["ConditionLaws", "condition_laws", "lcd_model"]


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

    def cell_factors(self, slot, block: int | None = None) -> CellFactors:
        """The factor of each cell's condition (``slot`` ``[cells]``, ``block`` as
        :class:`causalcell.inference.BatchStrata`'s), stored once per condition, or the one
        shared factor: no per-cell copy of the factors where it can be avoided."""
        return CellFactors(cholesky(self.covariance), slot, block)

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
    the condition's perturbations of it (:func:`._pairs.pair_values`), of its kind.
    """
    drift = linear_drift_from_sites(values, prior_mask)
    sigma = jnp.exp(values["log_sigma"])
    if set(screen_kinds(kind)) <= set(BIAS_KINDS):
        # Every condition has the same drift matrix and noise: one Lyapunov solve for all.
        shifts = condition_shifts(condition_targets, kind, values, drift, pairs)
        means, covariance = stationary_moments_of_shifts(
            drift, sigma, shifts, explicit, drift_inverses(drift)
        )
        return ConditionLaws(drift, means, covariance)
    interventions = condition_interventions(condition_targets, kind, values, drift, pairs)
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
    pair_active=None,
    pair_coordinates=None,
    pair_kinds=None,
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
        fraction) or ``"knockout"`` (learned pinned level); several joined by ``"|"`` when the
        pairs have their own kinds (``"knockdown|knockout"``: the first is the default).
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
    pair_active, pair_coordinates, pair_kinds
        ``[conditions, E]``, ``[E]`` and ``[E]`` (:class:`._pairs.Pairs`): the screen's
        (perturbation, target) pairs, when its perturbations are named apart from their
        targets or have their own kinds; each pair then gets its own parameter around its
        target's (:func:`._pairs.pair_values`).

    Interventions
    -------------
    The program asks for ``intervention("genes", names=coordinates, learned=kind)``, ``kind``
    the screen's default (its first)
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
    ``log_sigma`` [m], the intervention parameter [m] of each kind, with pairs
    ``perturbation_spread`` and
    ``perturbation_deviations`` [E], the noise parameters [genes], and with
    decoded genes ``decoder_offset`` [decoded], ``decoder_responses``
    [decoded, m - programs] and ``decoder_loadings`` [decoded, m]. Per
    cell (plate ``"cells"``): ``latent`` [m] (log-expression of modelled genes, then
    programs), ``counts`` [genes].
    """
    default_kind = screen_kinds(intervention)[0]  # raises for an unknown kind
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
    pairs = pairs_of(
        {"pair_active": pair_active, "pair_coordinates": pair_coordinates, "pair_kinds": pair_kinds}
    )
    names = coordinates or [f"coordinate{index}" for index in range(size)]
    explicit, own = intervention_request("genes", names=names, learned=default_kind)
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
        conditions, slot, covered, block = batch_strata(condition_index[index], targets.shape[0])
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
        latent = numpyro.sample("latent", laws.cell_factors(slot, block).gaussian(means))
        observed = None if counts is None else counts[index]
        log_rate = decode(latent, means, values["baseline"], decoder, modelled)
        numpyro.sample(
            "counts",
            noise.distribution(log_rate, size_factors[index], **noise_parameters).to_event(1),
            obs=observed,
        )


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
