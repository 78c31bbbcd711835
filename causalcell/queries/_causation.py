"""Probabilities of causation: necessity, sufficiency, and both (Pearl 2009, ch. 9)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from causalcell._core.keys import as_key
from causalcell.handlers import check_site_names, model_trace, predict_worlds
from causalcell.queries._common import global_draws, prior_noise
from causalcell.results import CausalResult

__all__ = ["probabilities_of_causation"]


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
    parameter_key, noise_key, world_key = jax.random.split(as_key(key), 3)
    parameters = global_draws(
        model, traced, parameter_key, posterior_samples, num_samples, model_args, model_kwargs
    )
    count = next(iter(parameters.values())).shape[0] if parameters else 1
    draws = prior_noise(
        model, parameters, count, num_noise_samples, noise_key, model_args, model_kwargs
    )
    worlds = predict_worlds(
        model,
        draws,
        evidence={},
        actions=[{treatment: values[0]}, {treatment: values[1]}],
        key=world_key,
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
