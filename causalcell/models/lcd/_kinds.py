"""What a condition's perturbations do to LCD's drift: the intervention kinds, their
learned parameters and sample sites, and the :class:`~causalcell.interventions.Intervention`
of each condition (DESIGN 4.3).

A screen's ``kind`` is one kind (``"shift"``, ``"knockdown"``, ``"knockout"``) or several
joined by ``"|"`` when its perturbations have their own (:func:`._pairs.screen_kinds`; the first
is the default). Each kind has a per-target site; with (perturbation, target) pairs each pair
moves its target's parameter of its kind (:func:`._pairs.pair_values`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from causalcell.diffusion import LinearDrift
from causalcell.interventions import Intervention
from causalcell.models.lcd._pairs import (
    PAIR_KINDS,
    Pairs,
    pair_values,
    sample_pair_sites,
    screen_kinds,
)

__all__ = [
    "BIAS_KINDS",
    "INTERVENTION_KINDS",
    "PARAMETER_SITE",
    "condition_interventions",
    "condition_shifts",
    "intervention_parameters",
    "kind_targets",
    "knockout_rank_of",
    "sample_screen_sites",
]

#: Intervention kinds that move only the bias: the conditions of such a screen share one
#: stationary covariance (:func:`._program.condition_laws`).
BIAS_KINDS = ("shift", "knockdown")
#: Intervention kinds LCD learns per-target parameters for (a screen has one, or several
#: joined by ``"|"`` when its perturbations have their own: :func:`._pairs.screen_kinds`).
INTERVENTION_KINDS = PAIR_KINDS
#: The sample site of each kind's per-gene intervention parameter.
PARAMETER_SITE = {
    "shift": "intervention_effect",
    "knockdown": "knockdown_strength",
    "knockout": "knockout_depth",
}


def knockout_rank_of(kind: str, condition_targets) -> int | None:
    """The most targets of one of the (concrete) ``condition_targets`` rows on a screen with
    knockouts, the static rank of :func:`._program.condition_laws`'s low-rank path (an upper
    bound of its knockouts when other kinds mix in); ``None`` otherwise."""
    if "knockout" not in screen_kinds(kind):
        return None
    return int(np.asarray(condition_targets).sum(axis=-1).max(initial=0))


def kind_targets(condition_targets, kind: str, pairs: Pairs | None = None) -> dict:
    """Each kind's targets ``[K, m]`` (bool) of the screen's ``kind``: with ``pairs``, the
    coordinates its active pairs of that kind target; the default kind (the first) also takes
    every target no pair covers (a gene's ``do`` request)."""
    kinds = screen_kinds(kind)
    targets = jnp.asarray(condition_targets, bool)
    if pairs is None:
        return {kinds[0]: targets}
    covered = {each: pairs.covered(each, targets.shape[-1]) > 0 for each in kinds}
    uncovered = targets & ~functools.reduce(jnp.logical_or, covered.values())
    covered[kinds[0]] = covered[kinds[0]] | uncovered
    return covered


def condition_interventions(
    condition_targets, kind: str, values: dict, drift: LinearDrift, pairs: Pairs | None = None
):
    """Interventions of every condition ``[P, d]`` from one draw of the sites ``values``: each
    target gets its learned parameter of its kind (with ``pairs``, that of the condition's
    perturbations of it, :func:`._pairs.pair_values`)."""
    targets = kind_targets(condition_targets, kind, pairs)
    some = next(iter(targets.values()))
    result = Intervention.identity(some.shape[-1], batch_shape=some.shape[:-1])
    for each, mask in targets.items():
        value = pair_values(values[PARAMETER_SITE[each]], values, pairs, each)
        parameters = intervention_parameters(each, value, values["baseline"])
        if each == "shift":
            result = result._replace(shift=jnp.where(mask, drift.decay * parameters["effect"], 0.0))
        elif each == "knockdown":
            result = result._replace(knockdown=jnp.where(mask, parameters["log_fraction"], 0.0))
        else:
            level = jnp.where(mask, parameters["level"], 0.0)
            result = result._replace(knockout=mask, knockout_level=level)
    return result


def intervention_parameters(kind: str, value, baseline) -> dict:
    """The intervention parameter of ``kind`` from its unconstrained site ``value`` [d]."""
    if kind == "shift":
        return {"effect": value}
    if kind == "knockdown":
        return {"log_fraction": -jax.nn.softplus(value)}
    return {"level": baseline + value}


def sample_screen_sites(genes: int, baseline_prior, intervention: str, pairs: int = 0) -> dict:
    """Sample the global sites both LCD programs share, by name: ``baseline`` and ``log_sigma``
    [d], then the intervention parameter [d] of each of the screen's kinds (site
    ``PARAMETER_SITE[kind]``, in :func:`._pairs.screen_kinds` order), and with
    ``pairs`` (perturbation, target) pairs the hierarchy of :func:`._pairs.pair_values`:
    ``perturbation_spread ~ HalfNormal(1)`` and ``perturbation_deviations ~ N(0, 1)`` [pairs].

    Each program samples its drift's own sites (``log_decay`` included) before these, so both
    keep their site order and hence their seeded draws.
    """
    sites = {
        "baseline": numpyro.sample("baseline", dist.Normal(baseline_prior, 1.5).to_event(1)),
        "log_sigma": numpyro.sample(
            "log_sigma", dist.Normal(jnp.log(0.5), 0.5).expand([genes]).to_event(1)
        ),
    }
    for kind in screen_kinds(intervention):
        sites[PARAMETER_SITE[kind]] = _intervention_site(kind, genes)
    return {**sites, **sample_pair_sites(pairs)}


def condition_shifts(condition_targets, kind: str, values: dict, drift: LinearDrift, pairs=None):
    """What the conditions of a screen of shifts and knockdowns add to the bias ``[P, d]``:
    ``decay_j`` times the learned effect (shift) or log-fraction (knockdown) of each target,
    the bias change of :func:`condition_interventions` under
    :func:`causalcell.diffusion.intervene_linear`."""
    interventions = condition_interventions(condition_targets, kind, values, drift, pairs)
    return interventions.shift + drift.decay * interventions.knockdown


def _intervention_site(kind: str, genes: int):
    """The per-gene unconstrained intervention parameter (used where a gene is targeted)."""
    if kind == "shift":
        prior = dist.Normal(0.0, 3.0)  # own-level change, log scale
    elif kind == "knockdown":
        prior = dist.Normal(1.0, 1.0)  # log fraction -softplus(.) ~ -1.3
    else:
        prior = dist.Normal(-3.0, 2.0)  # pinned level below the baseline
    return numpyro.sample(PARAMETER_SITE[kind], prior.expand([genes]).to_event(1))
