"""Explanation queries: probabilities of causation (necessity, sufficiency, both; Pearl 2009,
ch. 9) and actual causation (Halpern 2015)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from causalcell._core.keys import as_key
from causalcell.handlers import check_site_names, model_trace
from causalcell.queries._common import global_draws, population_worlds
from causalcell.queries._counterfactual import counterfactual
from causalcell.results import CausalResult

__all__ = ["actual_causation", "probabilities_of_causation"]


def probabilities_of_causation(
    model,
    *,
    treatment: str,
    outcome: str,
    values: Sequence,
    outcome_values: Sequence,
    key,
    posterior_samples: Mapping | None = None,
    num_samples: int | None = None,
    num_noise_samples: int = 2000,
    coupling: str = "quantile",
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> CausalResult:
    """Probabilities of necessity, sufficiency, and necessity and sufficiency of a cause.

    With ``values = (x0, x1)`` (no treatment, treatment) and ``outcome_values = (y0, y1)``
    (outcome absent, present), over units drawn from the model (its noise from the prior,
    ``num_noise_samples`` per parameter draw, every unit of a plate counted):

    - ``necessity`` ``PN = P(Y_{x0} = y0 | X = x1, Y = y1)``: among units treated that show the
      outcome, the share that would not have shown it untreated;
    - ``sufficiency`` ``PS = P(Y_{x1} = y1 | X = x0, Y = y0)``: among units untreated without
      the outcome, the share that would have shown it treated;
    - ``necessity_and_sufficiency`` ``PNS = P(Y_{x1} = y1, Y_{x0} = y0)``.

    The three worlds (natural, ``do(X = x0)``, ``do(X = x1)``) share every unit's noise. An
    outcome computed from explicit noise (a deterministic site or Gaussian noise) is then
    exact. A Bernoulli or categorical outcome has no noise to share: ``coupling="quantile"``
    (the default) couples its worlds monotonically, which gives the values identified under
    monotonicity (e.g. ``PNS = P(y1 | do(x1)) - P(y1 | do(x0))``, Tian and Pearl 2000);
    ``"resample"`` draws the worlds independently. A parameter draw with no unit in a
    conditioning event gives NaN for that probability.

    Parameters
    ----------
    treatment, outcome
        Site names (``outcome`` may be a deterministic site).
    values, outcome_values
        ``(x0, x1)`` and ``(y0, y1)``; outcomes are compared for equality.
    posterior_samples, num_samples
        Parameter draws, or the number of prior draws (not needed without parameters).
    num_noise_samples
        Units' noise draws per parameter draw.
    coupling
        ``"quantile"`` or ``"resample"`` (see above).

    Returns
    -------
    CausalResult
        ``necessity``, ``sufficiency``, ``necessity_and_sufficiency`` ``[sample]``.

    References
    ----------
    Pearl, J. (2009). Causality, 2nd ed., chapter 9.
    Tian, J. and Pearl, J. (2000). Probabilities of causation: bounds and identification.
    Annals of Mathematics and Artificial Intelligence 28: 287-313.
    """
    for name, pair in (("values", values), ("outcome_values", outcome_values)):
        if len(pair) != 2:
            raise ValueError(f"{name} must be a pair (absent, present), got {len(pair)} values.")
    if treatment == outcome:
        raise ValueError(f"treatment and outcome must differ, both are {treatment!r}.")
    model_kwargs = dict(model_kwargs or {})
    traced = model_trace(model, model_args, model_kwargs)
    check_site_names("probabilities_of_causation", [treatment, outcome], traced)
    parameter_key, world_key = jax.random.split(as_key(key))
    parameters = global_draws(
        model, traced, parameter_key, posterior_samples, num_samples, model_args, model_kwargs
    )
    count = next(iter(parameters.values())).shape[0] if parameters else 1
    worlds = population_worlds(
        model,
        parameters,
        num_noise_samples,
        [{treatment: values[0]}, {treatment: values[1]}],
        world_key,
        coupling=coupling,
        sites=[treatment, outcome],
        model_args=model_args,
        model_kwargs=model_kwargs,
    )

    def per_draw(array):  # [count * noise, world, units...] -> [count, world, units...]
        array = np.asarray(array)
        array = array.reshape(count, -1, *array.shape[1:]).swapaxes(1, 2)
        return array.reshape(*array.shape[:2], -1)

    treated, outcomes = per_draw(worlds[treatment]), per_draw(worlds[outcome])
    absent, present = outcome_values
    untreated_world, treated_world = outcomes[:, 1] == absent, outcomes[:, 2] == present
    shown = (treated[:, 0] == values[1]) & (outcomes[:, 0] == present)
    not_shown = (treated[:, 0] == values[0]) & (outcomes[:, 0] == absent)
    with np.errstate(invalid="ignore", divide="ignore"):
        necessity = (shown & untreated_world).sum(1) / shown.sum(1)
        sufficiency = (not_shown & treated_world).sum(1) / not_shown.sum(1)
    return CausalResult(
        {
            "necessity": necessity,
            "sufficiency": sufficiency,
            "necessity_and_sufficiency": (untreated_world & treated_world).mean(1),
        },
        attrs={"treatment": treatment, "outcome": outcome, "coupling": coupling},
    )


def actual_causation(
    model,
    *,
    treatment: str,
    alternative,
    outcome: str,
    evidence: Mapping,
    key,
    witnesses: Sequence[str] = (),
    posterior_samples: Mapping | None = None,
    num_samples: int = 500,
    num_warmup: int = 500,
    coupling: str = "quantile",
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> CausalResult:
    """Whether the treatment's actual value is an actual cause of the outcome's actual value.

    The modified Halpern-Pearl definition: in the units described by ``evidence`` (the
    actual world), ``treatment`` and ``outcome`` take their actual values, and there is a set
    ``W`` of ``witnesses`` such that setting the treatment to ``alternative`` while holding
    ``W`` at its actual values changes the outcome. ``W`` empty is the but-for test; the
    witnesses let a cause whose effect another process would have brought about anyway (a
    preempted backup) count as a cause, as Sally's throw in the rock-throwing story does once
    Bill's missed hit is held fixed. Every subset of ``witnesses`` is one world of a single
    multi-world query (:func:`causalcell.handlers.predict_worlds`), all sharing each unit's
    abducted noise.

    Parameters
    ----------
    treatment, outcome
        Site names; ``evidence`` must give both their actual values.
    alternative
        The treatment's value in the counterfactual worlds.
    witnesses
        Sites that may be held at their actual values (at most 10: ``2^k`` worlds).
    posterior_samples, num_samples, num_warmup
        As for :func:`causalcell.queries.counterfactual`.
    coupling
        For discrete sites the action reaches; ``"quantile"`` (default) keeps each one's
        quantile, so a deterministic mechanism (probability 0 or 1) stays deterministic.

    Returns
    -------
    CausalResult
        ``actual_cause`` ``[sample, units...]`` (1 where some witness set makes the treatment
        a cause; its mean is the posterior probability), ``but_for`` (the empty set alone) and
        ``witness_set`` (index into ``attrs["witness_sets"]`` of the smallest set that does,
        ``-1`` where none does).

    References
    ----------
    Halpern, J. Y. (2015). A modification of the Halpern-Pearl definition of causality.
    IJCAI, 3022-3033. Halpern, J. Y. and Pearl, J. (2005). Causes and explanations: a
    structural-model approach. Part I. British Journal for the Philosophy of Science 56.
    """
    witnesses = list(witnesses)
    if len(witnesses) > 10:
        raise ValueError(f"At most 10 witnesses (2^k worlds), got {len(witnesses)}.")
    if treatment in witnesses or outcome in witnesses:
        raise ValueError("The treatment and the outcome cannot be witnesses.")
    missing = [name for name in (treatment, outcome) if name not in evidence]
    if missing:
        raise ValueError(
            f"actual_causation asks about the actual world: evidence must give the actual "
            f"values of {missing} (the treatment and the outcome)."
        )
    model_kwargs = dict(model_kwargs or {})
    traced = model_trace(model, model_args, model_kwargs)
    check_site_names("actual_causation", [treatment, outcome, *witnesses], traced)
    subsets = [
        subset
        for size in range(len(witnesses) + 1)
        for subset in itertools.combinations(witnesses, size)
    ]

    def held(subset):
        def action(worlds):
            return {treatment: alternative, **{name: worlds[0][name] for name in subset}}

        return action

    worlds = counterfactual(  # the same abduction for every world
        model,
        evidence=evidence,
        actions=[held(subset) for subset in subsets],
        key=key,
        posterior_samples=posterior_samples,
        coupling=coupling,
        num_samples=num_samples,
        num_warmup=num_warmup,
        sites=[outcome],
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    outcomes = np.asarray(worlds[outcome])  # [draws, 1 + subsets, units...]
    changed = outcomes[:, 1:] != outcomes[:, :1]
    first = np.where(changed.any(axis=1), changed.argmax(axis=1), -1)
    return CausalResult(
        {
            "actual_cause": changed.any(axis=1).astype(np.float32),
            "but_for": changed[:, 0].astype(np.float32),
            "witness_set": first,
        },
        attrs={
            "treatment": treatment,
            "outcome": outcome,
            "alternative": repr(alternative),
            "witness_sets": repr([list(subset) for subset in subsets]),
        },
    )
