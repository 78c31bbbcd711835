"""What the queries share: parameter draws (posterior or prior), units' prior noise, and axis
names of results."""

from __future__ import annotations

import jax.numpy as jnp
from numpyro.infer import Predictive

from causalcell.handlers import exogenize

__all__ = ["global_draws", "prior_noise", "site_dims"]


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


def prior_noise(model, parameters, count, repeats, key, model_args, model_kwargs) -> dict:
    """Units' noise (and other unit latents) from the prior, ``repeats`` per parameter draw,
    parameter-major, with the parameters repeated alongside: the draws of
    :func:`causalcell.handlers.predict_worlds` for population-level questions."""
    repeated = {name: jnp.repeat(draw, repeats, axis=0) for name, draw in parameters.items()}
    predictive = Predictive(
        exogenize(model),
        posterior_samples=repeated or None,
        num_samples=None if repeated else count * repeats,
    )
    return {**predictive(key, *model_args, **model_kwargs), **repeated}
