"""Causal queries with posterior uncertainty: interventional, counterfactual, effect.

Each returns a :class:`causalcell.results.CausalResult` whose draws carry a leading ``sample``
axis. With ``posterior_samples`` (parameter draws from a fit) the answers integrate over the
posterior of the parameters; without, over their prior. Parameters are the model's global
sample sites (outside every plate); everything inside a plate is unit-level.

References
----------
Pearl, J. (2009). Causality, 2nd ed. Cambridge University Press.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from causalcell.counterfactual import (
    WORLDS,
    _check_names,
    abduce,
    model_trace,
    predict_worlds,
    unit_sites,
)
from causalcell.handlers import do
from causalcell.results import CausalResult

__all__ = ["counterfactual", "effect", "interventional"]

ESTIMANDS = ("ate", "cate")


def _global_draws(model, traced, key, posterior_samples, num_samples, model_args, model_kwargs):
    """Parameter draws ``{site: [S, ...]}``: the given posterior, or the prior's global sites."""
    if posterior_samples is not None:
        return {name: jnp.asarray(value) for name, value in posterior_samples.items()}
    if num_samples is None:
        raise ValueError("Give posterior_samples (from a fit) or num_samples (prior draws).")
    names = [n for n, s in traced.items() if s["type"] == "sample" and not s["cond_indep_stack"]]
    prior = Predictive(model, num_samples=num_samples, return_sites=names)
    return prior(key, *model_args, **model_kwargs) if names else {}


def _dims(traced, names, leading=()) -> dict:
    """Axis names after ``sample``: ``leading`` axes, then the plates, then event axes."""
    dims = {}
    for name in names:
        site = traced[name]
        plates = sorted(site.get("cond_indep_stack", []), key=lambda frame: frame.dim)
        ndim = jnp.ndim(site["value"])
        plate_names = [frame.name for frame in plates][-ndim:] if ndim else []
        events = [f"{name}_dim_{k}" for k in range(ndim - len(plate_names))]
        dims[name] = (*leading, *plate_names, *events)
    return dims


def interventional(
    model,
    actions: Mapping,
    *,
    key,
    posterior_samples: Mapping | None = None,
    num_samples: int | None = None,
    sites: Sequence[str] | None = None,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> CausalResult:
    """Draws of the model's unit-level sites under ``do(actions)``.

    Parameters
    ----------
    model
        A NumPyro program.
    actions
        Interventions as for :class:`causalcell.handlers.do` (named or vectorised sites).
    key
        PRNG key.
    posterior_samples
        Parameter draws ``{site: [S, ...]}``; one outcome draw per parameter draw.
    num_samples
        Number of prior draws when ``posterior_samples`` is not given.
    sites
        Names to return (all unit-level sites by default).

    Returns
    -------
    CausalResult
        One quantity per site, axes ``(sample, <plates>, ...)``.

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> def model():
    ...     x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(2.0 * x, 1.0))
    >>> result = interventional(model, {"x": 1.5}, key=jax.random.key(0), num_samples=4000)
    >>> round(float(result.mean("y")), 1)
    3.0
    """
    model_kwargs = dict(model_kwargs or {})
    intervened = do(model, dict(actions))
    traced = model_trace(intervened, model_args, model_kwargs)
    names = list(sites) if sites is not None else unit_sites(traced)
    if not names:  # a model without plates: report every sample and deterministic site
        names = [n for n, s in traced.items() if s["type"] in ("sample", "deterministic")]
    _check_names("sites", names, traced)
    predictive = Predictive(
        intervened,
        posterior_samples=None if posterior_samples is None else dict(posterior_samples),
        num_samples=None if posterior_samples is not None else num_samples,
        return_sites=names,
    )
    draws = predictive(key, *model_args, **model_kwargs)
    return CausalResult(draws, dims=_dims(traced, names), attrs={"actions": repr(dict(actions))})


def counterfactual(
    model,
    *,
    evidence: Mapping,
    actions: Mapping,
    key,
    posterior_samples: Mapping | None = None,
    coupling: str = "resample",
    num_samples: int = 500,
    num_warmup: int = 500,
    sites: Sequence[str] | None = None,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> CausalResult:
    """ "Had ``actions`` been taken for these units": factual and counterfactual worlds.

    Abduction (posterior of the exogenous noise given ``evidence``), action (``do``) and
    prediction (the same noise through the intervened model); see
    :mod:`causalcell.counterfactual`.

    Parameters
    ----------
    model
        A NumPyro program whose unit-level sites sit inside a plate.
    evidence
        Observed values of the unit(s), by site name.
    actions
        The intervention.
    key
        PRNG key.
    posterior_samples
        Parameter draws (from a fit): noise is abducted per draw (``num_samples`` per draw when
        it needs NUTS). Without them, parameters and noise are sampled jointly by NUTS.
    coupling
        How non-Gaussian unit-level sites (counts, Bernoulli, ...) whose law the intervention
        changes carry over: ``"resample"`` draws them anew in the counterfactual world,
        ``"quantile"`` keeps their quantile. Sites whose law no intervention changes keep their
        factual values under either; Gaussian noise is always shared exactly.
    num_samples, num_warmup
        NUTS settings for abduction.
    sites
        Names to return (all unit-level sites by default).

    Returns
    -------
    CausalResult
        Quantities with axes ``(sample, world, <plates>, ...)``, ``world`` labelled
        ``("factual", "counterfactual")``.

    Notes
    -----
    A fitted :class:`causalcell.models.lcd.LCD` as ``model`` is answered by its own exact
    abduction (:meth:`LCD.counterfactual`, whose AnnData summarises the same draws):
    ``evidence`` is an AnnData of observed cells, ``actions`` a perturbation label
    (``"GATA1+CEBPA"``) or ``model.actions(label)``, composed with each cell's own
    perturbation; ``num_samples`` posterior draws of the globals (``posterior_samples`` must
    be None); ``coupling`` as above. It returns ``latent`` ``(world, cell, coordinate)``,
    ``log_rate`` and ``counts`` ``(world, cell, gene)``.
    """
    if _is_fitted_lcd(model):
        if posterior_samples is not None or model_args or model_kwargs:
            raise ValueError(
                "A fitted LCD draws its own posterior: pass num_samples, not posterior_samples, "
                "model_args or model_kwargs."
            )
        from causalcell.models._lcd_worlds import counterfactual_result

        return counterfactual_result(model, evidence, actions, key, coupling, num_samples, sites)
    model_kwargs = dict(model_kwargs or {})
    traced = model_trace(model, model_args, model_kwargs)
    names = list(sites) if sites is not None else unit_sites(traced)
    _check_names("sites", names, traced)  # before the abduction, which may run NUTS
    abduction_key, prediction_key = jax.random.split(key)
    draws = abduce(
        model,
        evidence,
        key=abduction_key,
        posterior_samples=posterior_samples,
        num_samples=num_samples,
        num_warmup=num_warmup,
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    worlds = predict_worlds(
        model,
        draws,
        evidence=evidence,
        actions=actions,
        key=prediction_key,
        coupling=coupling,
        sites=names,
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    return CausalResult(
        worlds,
        dims=_dims(traced, names, leading=("world",)),
        coords={"world": WORLDS},
        attrs={"actions": repr(dict(actions)), "coupling": coupling},
    )


def _is_fitted_lcd(model) -> bool:
    """Whether ``model`` is a fitted :class:`causalcell.models.lcd.LCD` (imported lazily: the
    models build on this module's machinery)."""
    from causalcell.models.lcd import LCD

    return isinstance(model, LCD)


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
    _check_names("effect", [treatment, outcome], traced)
    parameter_key, noise_key = jax.random.split(key)
    parameters = _global_draws(
        model, traced, parameter_key, posterior_samples, num_samples, model_args, model_kwargs
    )
    count = next(iter(parameters.values())).shape[0] if parameters else num_samples
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
    outcome_dims = _dims(traced, [outcome])[outcome]
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
