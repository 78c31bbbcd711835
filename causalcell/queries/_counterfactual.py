"""The counterfactual query: factual and counterfactual worlds of the same units."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax

from causalcell._core.keys import as_key
from causalcell.handlers import (
    abduce,
    check_site_names,
    model_trace,
    predict_worlds,
    unit_sites,
    world_labels,
)
from causalcell.queries._common import site_dims
from causalcell.results import CausalResult

__all__ = ["counterfactual"]


@functools.singledispatch
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
    :mod:`causalcell.handlers`.

    Parameters
    ----------
    model
        A NumPyro program whose unit-level sites sit inside a plate; a model without plates
        is one unit (every site is returned).
    evidence
        Observed values of the unit(s), by site name.
    actions
        The intervention, as for :class:`causalcell.handlers.do`: per site a value, a
        function of the site's own value (``lambda x: x + 1``) or a distribution. A list of
        them asks several counterfactual worlds at once, sharing the same noise; an entry may
        be a function of the worlds before it (see :func:`causalcell.handlers.predict_worlds`).
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
        ``("factual", "counterfactual")``, or ``("factual", "counterfactual_1", ...)`` for a
        list of actions.

    Notes
    -----
    A generic function (``functools.singledispatch``, dispatched on the type of ``model``, which
    must be passed positionally): a model family with its own abduction registers an
    implementation with ``counterfactual.register(ModelClass)``. A fitted
    :class:`causalcell.models.lcd.LCD` as ``model`` is answered by its own exact
    abduction (:meth:`LCD.counterfactual`, whose AnnData summarises the same draws):
    ``evidence`` is an AnnData of observed cells, ``actions`` a perturbation label
    (``"GATA1+CEBPA"``) or ``model.actions(label)``, composed with each cell's own
    perturbation; ``num_samples`` posterior draws of the globals (``posterior_samples`` must
    be None); ``coupling`` as above. It returns ``latent`` ``(world, cell, coordinate)``,
    ``log_rate`` and ``counts`` ``(world, cell, gene)``.
    """
    model_kwargs = dict(model_kwargs or {})
    traced = model_trace(model, model_args, model_kwargs)
    names = list(sites) if sites is not None else unit_sites(traced)
    check_site_names("sites", names, traced)  # before the abduction, which may run NUTS
    labels = world_labels(actions)  # checks the actions, also before
    abduction_key, prediction_key = jax.random.split(as_key(key))
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
        dims=site_dims(traced, names, leading=("world",)),
        coords={"world": labels},
        attrs={"actions": repr(actions), "coupling": coupling},
    )
