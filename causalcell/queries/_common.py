"""What the queries share: parameter draws (posterior or prior), worlds of units drawn from the
prior, and axis names of results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.infer import Predictive

from causalcell.handlers import exogenize, predict_worlds

__all__ = ["global_draws", "population_worlds", "site_dims"]


def global_draws(model, traced, key, posterior_samples, num_samples, model_args, model_kwargs):
    """Parameter draws ``{site: [S, ...]}``: the given posterior, or the prior's global sites
    (none for a model without them: ``{}``, whatever ``num_samples``)."""
    if posterior_samples is not None:
        return {name: jnp.asarray(value) for name, value in posterior_samples.items()}
    names = [n for n, s in traced.items() if s["type"] == "sample" and not s["cond_indep_stack"]]
    if not names:
        return {}
    if num_samples is None:
        raise ValueError("Give posterior_samples (from a fit) or num_samples (prior draws).")
    prior = Predictive(model, num_samples=num_samples, return_sites=names)
    return prior(key, *model_args, **model_kwargs)


def site_dims(traced, names, leading=()) -> dict:
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


def population_worlds(
    model, parameters, repeats, actions, key, *, coupling, sites, model_args, model_kwargs
):
    """The worlds of ``actions`` for units drawn from the prior (population-level questions):
    units' noise (and other unit latents) ``repeats`` times per parameter draw, parameter-major,
    pushed through :func:`causalcell.handlers.predict_worlds`. Returns its ``{site: [S *
    repeats, world, ...]}``."""
    noise_key, world_key = jax.random.split(key)
    count = next(iter(parameters.values())).shape[0] if parameters else 1
    repeated = {name: jnp.repeat(draw, repeats, axis=0) for name, draw in parameters.items()}
    predictive = Predictive(
        exogenize(model),
        posterior_samples=repeated or None,
        num_samples=None if repeated else count * repeats,
    )
    draws = {**predictive(noise_key, *model_args, **model_kwargs), **repeated}
    return predict_worlds(
        model,
        draws,
        evidence={},
        actions=actions,
        key=world_key,
        coupling=coupling,
        sites=sites,
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
