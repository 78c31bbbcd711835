"""Average and conditional average treatment effects under ``do``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from causalcell._core.keys import as_key
from causalcell.handlers import abduce, check_site_names, do, model_trace, predict_worlds
from causalcell.queries._common import global_draws, site_dims
from causalcell.results import CausalResult

__all__ = ["ESTIMANDS", "effect"]

ESTIMANDS = ("ate", "cate")


def effect(
    model,
    *,
    treatment: str,
    values: Sequence,
    outcome: str,
    key,
    estimand: str = "ate",
    evidence: Mapping | None = None,
    posterior_samples: Mapping | None = None,
    num_samples: int | None = None,
    num_noise_samples: int = 200,
    num_warmup: int = 300,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> CausalResult:
    """Average (``"ate"``) or conditional (``"cate"``) effect of ``treatment`` on ``outcome``.

    ``ate``: for every parameter draw, ``E[Y | do(T = values[1])] - E[Y | do(T = values[0])]``
    averaged over ``num_noise_samples`` noise draws (shared between the two arms) and over all
    units, so ``effect`` has one value per parameter draw: its spread is the posterior
    uncertainty of the average effect. ``individual_effect`` keeps each noise draw and unit,
    showing how much single units vary on top.

    ``cate``: the same contrast for units described by ``evidence`` (e.g. their covariates),
    computed with counterfactual worlds (abduction of the noise given the evidence, then both
    actions); ``num_noise_samples`` abducted noise draws per parameter draw.

    Parameters
    ----------
    treatment, outcome
        Site names (named sites).
    values
        ``(control_value, treated_value)``.
    estimand
        ``"ate"`` or ``"cate"``.
    evidence
        The conditioning values for ``"cate"`` (must not include the treatment or outcome).
    posterior_samples, num_samples
        Parameter draws, or the number of prior draws.

    Returns
    -------
    CausalResult
        ``effect`` ``[sample]``, ``response`` ``[sample, 2]`` (the two arms' means) and
        ``individual_effect`` ``[sample, noise, ...]``.

    Raises
    ------
    ValueError
        For an unknown estimand, not two values, or ``cate`` evidence naming the treatment or
        outcome (or missing).
    """
    if estimand not in ESTIMANDS:
        raise ValueError(f"estimand must be one of {ESTIMANDS}, got {estimand!r}.")
    if len(values) != 2:
        raise ValueError(
            f"values must be (control_value, treated_value), got {len(values)} values."
        )
    if estimand == "cate":
        if not evidence:
            raise ValueError("estimand='cate' needs evidence: the values that describe the units.")
        clash = {treatment, outcome} & set(evidence)
        if clash:
            raise ValueError(
                f"cate evidence must not include the treatment or outcome: {sorted(clash)}."
            )
    model_kwargs = dict(model_kwargs or {})
    traced = model_trace(model, model_args, model_kwargs)
    check_site_names("effect", [treatment, outcome], traced)
    parameter_key, noise_key = jax.random.split(as_key(key))
    parameters = global_draws(
        model, traced, parameter_key, posterior_samples, num_samples, model_args, model_kwargs
    )
    count = next(iter(parameters.values())).shape[0] if parameters else (num_samples or 1)
    if estimand == "ate":
        arms = [
            _arm_outcomes(
                model,
                treatment,
                value,
                outcome,
                parameters,
                count,
                num_noise_samples,
                noise_key,
                model_args,
                model_kwargs,
            )
            for value in values
        ]
    else:
        arms = _conditional_arms(
            model,
            treatment,
            values,
            outcome,
            evidence,
            parameters,
            num_noise_samples,
            num_warmup,
            noise_key,
            model_args,
            model_kwargs,
        )
    individual = arms[1] - arms[0]
    unit_axes = tuple(range(1, individual.ndim))
    response = np.stack([np.asarray(arm).mean(axis=unit_axes) for arm in arms], axis=1)
    outcome_dims = site_dims(traced, [outcome])[outcome]
    unit_dims = outcome_dims[len(outcome_dims) - (individual.ndim - 2) :]
    return CausalResult(
        {
            "effect": response[:, 1] - response[:, 0],
            "response": response,
            "individual_effect": individual,
        },
        dims={"response": ("arm",), "individual_effect": ("noise", *unit_dims)},
        coords={"arm": tuple(repr(value) for value in values)},
        attrs={"estimand": estimand, "treatment": treatment, "outcome": outcome},
    )


def _arm_outcomes(
    model, treatment, value, outcome, parameters, count, repeats, key, model_args, model_kwargs
):
    """Outcome ``[S, repeats, ...]`` under ``do(treatment = value)``; the same key for every arm."""
    repeated = {name: jnp.repeat(draw, repeats, axis=0) for name, draw in parameters.items()}
    predictive = Predictive(
        do(model, {treatment: value}),
        posterior_samples=repeated or None,
        num_samples=None if repeated else count * repeats,
        return_sites=[outcome],
    )
    draws = predictive(key, *model_args, **model_kwargs)[outcome]
    return np.asarray(draws).reshape(count, repeats, *draws.shape[1:])


def _conditional_arms(
    model,
    treatment,
    values,
    outcome,
    evidence,
    parameters,
    repeats,
    num_warmup,
    key,
    model_args,
    model_kwargs,
):
    """Counterfactual outcomes of both arms for the evidence units, ``[S, repeats, ...]`` each."""
    abduction_key, prediction_key = jax.random.split(key)
    draws = abduce(
        model,
        evidence,
        key=abduction_key,
        posterior_samples=parameters or None,
        num_samples=repeats,
        num_warmup=num_warmup,
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    arms = []
    for value in values:
        worlds = predict_worlds(
            model,
            draws,
            evidence=evidence,
            actions={treatment: value},
            key=prediction_key,
            sites=[outcome],
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
        arms.append(np.asarray(worlds[outcome][:, 1]))
    count = next(iter(parameters.values())).shape[0] if parameters else 1
    return [arm.reshape(-1, count, *arm.shape[1:]).swapaxes(0, 1) for arm in arms]
