"""Exact posterior sampling for small models: NUTS, returned as a :class:`Posterior`."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping

import jax
import numpy as np
from numpyro.infer import MCMC, NUTS

from causalcell._core.errors import CausalcellWarning
from causalcell._core.keys import as_key
from causalcell.inference._posterior import Posterior

__all__ = ["fit_nuts"]


def _json_or_repr(value):
    """``value`` if JSON can hold it, else its repr (for the record in ``config``)."""
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def fit_nuts(
    model,
    data: Mapping,
    *,
    num_warmup: int = 500,
    num_samples: int = 1000,
    num_chains: int = 1,
    key: int | jax.Array = 0,
    model_kwargs: Mapping | None = None,
    progress_bar: bool = True,
    chain_method: str = "sequential",
    plate: str = "cells",
    **nuts_kwargs,
) -> Posterior:
    """Sample the posterior of a (small) NumPyro model with the No-U-Turn sampler.

    Every latent site is sampled, per-cell ones included, so the cost grows with the number of
    cells: meant for small models and as the exact reference for SVI.

    Parameters
    ----------
    model
        A NumPyro program, called as ``model(**data, **model_kwargs)``.
    data
        Arrays passed to the model as keyword arguments.
    num_warmup, num_samples
        Adaptation steps and kept draws per chain.
    num_chains
        Number of chains.
    key
        Seed or PRNG key: the same key gives the same draws.
    model_kwargs
        Non-array keyword arguments of the model.
    progress_bar
        Show NumPyro's progress bar.
    chain_method
        ``"sequential"`` (the default; right on CPU), ``"parallel"`` (one device per chain) or
        ``"vectorized"``.
    plate
        Name of the per-cell plate.
    **nuts_kwargs
        Passed to :class:`numpyro.infer.NUTS` (``target_accept_prob``, ``max_tree_depth``, ...).

    Returns
    -------
    Posterior
        ``method="nuts"`` with the draws of every latent sample site (chains one after the
        other, ``num_chains`` kept), ``sample_stats`` ``diverging`` and ``acceptance_rate``
        per ``[chain, draw]``, and the settings plus ``config["divergences"]`` (their count).

    Warns
    -----
    CausalcellWarning
        If some transitions diverged (the draws may be biased).

    Examples
    --------
    >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> def model(values=None, *, noise):
    ...     mean = numpyro.sample("mean", dist.Normal(0.0, 10.0))
    ...     with numpyro.plate("cells", noise.shape[0]) as index:
    ...         numpyro.sample("values", dist.Normal(mean, noise[index]), obs=values[index])
    >>> data = {"values": jnp.array([1.0, 2.0, 3.0]), "noise": jnp.ones(3)}
    >>> posterior = fit_nuts(model, data, num_warmup=50, num_samples=100, progress_bar=False)
    >>> posterior.sample(0, num_samples=None)["mean"].shape
    (100,)

    References
    ----------
    Hoffman, M. D. & Gelman, A. (2014). The No-U-Turn sampler: adaptively setting path lengths
    in Hamiltonian Monte Carlo. JMLR 15.
    """
    model_kwargs = dict(model_kwargs or {})
    mcmc = MCMC(
        NUTS(model, **nuts_kwargs),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress_bar,
    )
    mcmc.run(as_key(key), **data, **model_kwargs, extra_fields=("diverging", "accept_prob"))
    # The sampler's position holds exactly the latent sample sites; get_samples() adds the
    # deterministic ones, which the Posterior does not keep.
    samples = {
        name: values for name, values in mcmc.get_samples().items() if name in mcmc.last_state.z
    }
    extra = mcmc.get_extra_fields(group_by_chain=True)
    divergences = int(extra["diverging"].sum())
    config = {
        "method": "nuts",
        "num_warmup": num_warmup,
        "num_samples": num_samples,
        "num_chains": num_chains,
        "chain_method": chain_method,
        "key": int(key) if isinstance(key, int | np.integer) else None,  # a seed, for the record
        "nuts": {name: _json_or_repr(value) for name, value in nuts_kwargs.items()},
        "model_kwargs": {name: repr(value) for name, value in model_kwargs.items()},
        "divergences": divergences,
    }
    if divergences:
        warnings.warn(
            f"{divergences} of {num_chains * num_samples} NUTS transitions diverged; the draws "
            "may be biased. Try target_accept_prob=0.95 or reparametrise the model.",
            CausalcellWarning,
            stacklevel=2,
        )
    return Posterior(
        model,
        method="nuts",
        data=data,
        model_kwargs=model_kwargs,
        samples=samples,
        config=config,
        plate=plate,
        num_chains=num_chains,
        sample_stats={
            "diverging": extra["diverging"],
            "acceptance_rate": extra["accept_prob"],
        },
    )
