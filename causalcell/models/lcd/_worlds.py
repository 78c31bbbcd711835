"""Counterfactual worlds of a fitted linear-drift LCD (DESIGN 2.5, 3.1, 6); its ``do``-able
program is :mod:`._do_program`.

- :func:`counterfactual_worlds`: "these observed cells, had ``perturbation`` also (or
  instead) been applied", by abduction, action and prediction (Pearl 2009, ch. 7) per posterior
  draw of the globals: (1) each cell's latent ``x`` from the guide's exact Gaussian local
  posterior built from *that* draw (:func:`._guide.lcd_local_posterior` with the cell's
  encoder heads), (2) the counterfactual ``x'`` from the path-wise conditional ``x' | x`` of
  the two worlds sharing the cell's Brownian path (:mod:`._counterfactual`), (3) log-rates
  of every gene decoded in each world with that world's condition means, and counts: the
  factual world keeps the observed counts, the counterfactual one reads them off its own
  negative binomial with the cell's size factor, by the quantile coupling (each count keeps
  its randomised quantile) or afresh (``"resample"``).

Composition (``compose=True``, the default): the counterfactual targets are the union of the
cell's own targets and the perturbation's ("had GATA1 *also* been knocked out"). A target the
cell already carries is unchanged (the union is idempotent, and every target has its one
learned parameter), so asking a GATA1 cell for GATA1 returns its factual world exactly, and
``"control"`` asks for nothing. With ``compose=False`` the perturbation *replaces* the cell's
own ("had it been GATA1 *instead*"; ``"control"``: "had it been unperturbed"). For control
cells both agree. Cells whose two worlds have one intervention (the same targets and, with a
perturbation table, the same perturbations) are returned unchanged (latents and counts),
exactly.

References
----------
Pearl, J. (2009). Causality, 2nd ed., ch. 7 (abduction, action, prediction).
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS (the stationary law of an SDE as the model of a cell's state).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from causalcell._core.coupling import COUPLINGS
from causalcell._core.keys import as_key
from causalcell.data import to_arrays
from causalcell.handlers import WORLDS, InterventionSpec
from causalcell.models.lcd._cells import cells_anndata
from causalcell.models.lcd._counterfactual import (
    counterfactual_counts,
    counterfactual_latents,
    same_worlds,
)
from causalcell.models.lcd._decoder import decode, decoder_from_sites
from causalcell.models.lcd._do_program import linear_only
from causalcell.models.lcd._pairs import request_pairs
from causalcell.models.lcd._program import condition_laws
from causalcell.models.lcd._targets import UnseenTargetError, perturbation_targets
from causalcell.perturbations import canonical_label, parse_perturbation
from causalcell.results import CausalResult

__all__ = ["counterfactual_result", "counterfactual_worlds", "worlds_anndata"]


def _observed_arrays(model, cells):
    """The cells as the fit's arrays (internal gene order), their conditions checked."""
    registry = model.registry
    if registry.perturbation_key not in cells.obs:
        raise KeyError(
            f"The cells have no .obs[{registry.perturbation_key!r}] with their own (factual) "
            "perturbation; add it ('control' for unperturbed cells)."
        )
    labels = pd.unique(cells.obs[registry.perturbation_key].astype(str))
    conditions = set(registry.conditions)
    for label in labels:
        members = parse_perturbation(label, control=registry.control, separator=registry.separator)
        canonical = canonical_label(
            members, control=registry.control[0], separator=registry.separator
        )
        if canonical not in conditions:
            raise UnseenTargetError(
                f"Cells carry the perturbation {label!r}, which is not a condition LCD was "
                "trained on, so their factual world has no fitted law to abduct from. Keep "
                f"cells of trained conditions ({sorted(conditions)}) or refit with them."
            )
    return model.space.reorder(to_arrays(cells, registry))


@functools.partial(jax.jit, static_argnames=("guide", "kind", "modelled", "coupling", "noise"))
def _all_draws(draws, keys, data, heads, action_rows, prior_mask, pairs, **static):
    """:func:`_one_draw` for every draw, one at a time (``lax.map``): the memory of one draw's
    cells, not of all draws' at once."""

    def one(pair):
        return _one_draw(pair[0], pair[1], data, heads, action_rows, prior_mask, pairs, **static)

    return jax.lax.map(one, (draws, keys))


def _one_draw(
    draw,
    key,
    data,
    heads,
    action_rows,
    prior_mask,
    pairs,
    *,
    guide,
    kind,
    modelled,
    coupling,
    noise,
):
    """Latents, log-rates (internal order) and counterfactual counts of every cell, one draw."""
    index = jnp.arange(data["counts"].shape[0])
    law = guide.local_posterior(draw, data, index, heads)["latent"]
    factual_rows = jnp.asarray(data["condition_targets"], bool)
    condition = data["condition_index"]
    latent_key, count_key = jax.random.split(key)
    x, x_cf = counterfactual_latents(
        draw,
        factual_rows,
        action_rows,
        kind,
        law.mean,
        None,
        latent_key,
        prior_mask,
        pair_index=condition,
        latent_scale_tril=law.scale_tril,
        pairs=pairs,
    )
    factual_pairs, action_pairs = (None, None) if pairs is None else pairs
    means = condition_laws(draw, factual_rows, kind, prior_mask, pairs=factual_pairs).means
    means_cf = condition_laws(draw, action_rows, kind, prior_mask, pairs=action_pairs).means
    decoder = decoder_from_sites(draw)
    rate = decode(x, means[condition], draw["baseline"], decoder, modelled)
    rate_cf = decode(x_cf, means_cf[condition], draw["baseline"], decoder, modelled)
    counts_cf = counterfactual_counts(
        count_key,
        rate_cf,
        data["size_factors"],
        noise.parameters_of(draw),
        coupling=coupling,
        factual_log_rate=rate,
        observed_counts=data["counts"],
        noise=noise,
    )
    same = same_worlds(factual_rows, action_rows, pairs)[condition]
    counts_cf = jnp.where(same[:, None], data["counts"], counts_cf)
    return x, x_cf, rate, rate_cf, counts_cf


def counterfactual_worlds(
    model,
    cells,
    perturbation: str,
    *,
    num_samples: int,
    key,
    coupling: str,
    compose: bool,
    allow_prior_only: bool,
) -> dict:
    """Draws of both worlds of every cell (see the module docstring).

    Returns
    -------
    dict
        ``latent`` ``[S, 2, cells, m]``, ``log_rate`` and ``counts`` ``[S, 2, cells, genes]``
        (AnnData gene order; world 0 factual with the observed counts, 1 counterfactual), and
        the metadata ``cells`` (names), ``factual`` and ``counterfactual`` (condition labels
        ``[cells]``), ``size_factors``, ``prior_only``, ``perturbation`` (canonical label).
    """
    linear_only(model, "LCD.counterfactual")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}.")
    posterior = model.posterior
    guide = posterior.guide
    if getattr(guide, "local_posterior", None) is None:
        raise ValueError(
            "Counterfactuals abduct each cell's latent from the fit's exact local posterior "
            "(AmortizedGuide(local_posterior=lcd_local_posterior(...))), which this posterior's "
            "guide lacks; refit with LCD.fit."
        )
    request = perturbation_targets(model, perturbation, allow_prior_only)
    arrays = _observed_arrays(model, cells)
    factual_rows = np.asarray(posterior.data["condition_targets"], bool)
    action_rows = (
        factual_rows | request.row if compose else np.broadcast_to(request.row, factual_rows.shape)
    )
    registry = model.registry
    factual_members = [
        parse_perturbation(condition, control=registry.control, separator=registry.separator)
        for condition in registry.conditions
    ]
    action_members = [
        tuple(dict.fromkeys((*members, *request.members))) if compose else request.members
        for members in factual_members
    ]
    data = {
        **posterior.data,
        "counts": jnp.asarray(arrays.counts),
        "condition_index": jnp.asarray(arrays.condition_index),
        "size_factors": jnp.asarray(arrays.size_factors),
    }
    posterior.ready_guide()
    heads = guide.encoder_heads(posterior.params, data, jnp.arange(arrays.counts.shape[0]))
    draw_key, world_key = jax.random.split(key)
    draws = model.posterior.sample(draw_key, num_samples)
    # Both worlds' pairs at once, so that they share the draws' deviations.
    both, draws = request_pairs(
        model, factual_members + action_members, draws, jax.random.fold_in(draw_key, 1)
    )
    pairs = (
        None
        if both is None
        else (
            both.take(slice(0, len(factual_members))),
            both.take(slice(len(factual_members), None)),
        )
    )
    x, x_cf, rate, rate_cf, counts_cf = _all_draws(
        draws,
        jax.random.split(world_key, num_samples),
        data,
        heads,
        jnp.asarray(action_rows),
        model.prior_mask,
        pairs,
        guide=guide,
        kind=model.intervention,
        modelled=len(model.modelled_genes),
        coupling=coupling,
        noise=model.noise,
    )
    observed = jnp.broadcast_to(data["counts"], counts_cf.shape)
    in_order = model.space.in_gene_order
    conditions = np.asarray(registry.conditions, dtype=object)
    labels = [
        canonical_label(members, control=registry.control[0], separator=registry.separator)
        for members in action_members
    ]
    return {
        "latent": np.asarray(jnp.stack([x, x_cf], axis=1)),
        "log_rate": np.asarray(in_order(jnp.stack([rate, rate_cf], axis=1))),
        "counts": np.asarray(in_order(jnp.stack([observed, counts_cf], axis=1))),
        "cells": list(map(str, cells.obs_names)),
        "factual": conditions[arrays.condition_index].astype(str),
        "counterfactual": np.asarray(labels, dtype=object)[arrays.condition_index].astype(str),
        "size_factors": np.asarray(arrays.size_factors),
        "prior_only": request.prior_only,
        "perturbation": request.label,
    }


def worlds_anndata(model, worlds: dict, *, probability: float, settings: dict):
    """The AnnData of :meth:`LCD.counterfactual` from :func:`counterfactual_worlds`' draws."""
    latent, log_rate, counts = worlds["latent"], worlds["log_rate"], worlds["counts"]
    cells = worlds["cells"]
    num_cells = len(cells)
    obs = pd.DataFrame(
        {
            "world": pd.Categorical(
                np.repeat(["factual", "counterfactual"], num_cells),
                categories=["factual", "counterfactual"],
            ),
            "cell": np.tile(cells, 2),
            "perturbation": pd.Categorical(
                np.concatenate([worlds["factual"], worlds["counterfactual"]])
            ),
            "prior_only": np.repeat([False, worlds["prior_only"]], num_cells),
            "size_factor": np.tile(worlds["size_factors"], 2),
        },
        index=[f"{cell}:{world}" for world in ("factual", "counterfactual") for cell in cells],
    )

    def rows(values):  # [S, 2, cells, ...] -> [S, 2 * cells, ...], world-major
        return values.reshape(values.shape[0], 2 * num_cells, *values.shape[3:])

    count_data = model.noise.is_count_model
    result = cells_anndata(rows(counts)[0], obs, model.genes, rows(latent)[0], count_data)
    result.obsm["latent_mean"] = rows(latent).mean(axis=0).astype(np.float32)
    shift = log_rate - log_rate[:, :1]  # counterfactual minus factual log-rate, per draw
    tail = (1.0 - probability) / 2.0
    result.layers["shift_mean"] = rows(shift).mean(axis=0).astype(np.float32)
    result.layers["shift_lower"] = np.quantile(rows(shift), tail, axis=0).astype(np.float32)
    result.layers["shift_upper"] = np.quantile(rows(shift), 1 - tail, axis=0).astype(np.float32)
    result.uns["counterfactual"] = {
        "perturbation": worlds["perturbation"],
        "num_samples": int(latent.shape[0]),
        "probability": float(probability),
        **settings,
    }
    return result


def counterfactual_result(
    model,
    *,
    evidence,
    actions,
    key,
    posterior_samples=None,
    coupling: str = "resample",
    num_samples: int = 500,
    num_warmup: int = 500,
    sites=None,
    model_args: tuple = (),
    model_kwargs=None,
) -> CausalResult:
    """:func:`causalcell.queries.counterfactual` of a fitted LCD (registered for :class:`LCD`):
    its own exact abduction, every draw of :func:`counterfactual_worlds` as a
    :class:`~causalcell.results.CausalResult`; ``evidence`` the observed cells (AnnData),
    ``actions`` a perturbation label or the ``do`` request of :meth:`LCD.actions`."""
    del num_warmup  # no NUTS: abduction is exact per draw
    if posterior_samples is not None or model_args or model_kwargs:
        raise ValueError(
            "A fitted LCD draws its own posterior: pass num_samples, not posterior_samples, "
            "model_args or model_kwargs."
        )
    cells = evidence
    if isinstance(actions, Mapping):
        actions = _learned_label(model, actions)
    worlds = counterfactual_worlds(
        model,
        cells,
        actions,
        num_samples=num_samples,
        key=as_key(key),
        coupling=coupling,
        compose=True,
        allow_prior_only=False,
    )
    dims = {
        "latent": ("world", "cell", "coordinate"),
        "log_rate": ("world", "cell", "gene"),
        "counts": ("world", "cell", "gene"),
    }
    names = list(sites) if sites is not None else list(dims)
    unknown = [name for name in names if name not in dims]
    if unknown:
        raise ValueError(f"sites names {unknown}; a fitted LCD's are {sorted(dims)}.")
    return CausalResult(
        {name: worlds[name] for name in names},
        dims={name: dims[name] for name in names},
        coords={
            "world": WORLDS,
            "cell": worlds["cells"],
            "coordinate": list(model.coordinates),
            "gene": list(model.genes),
        },
        attrs={"actions": worlds["perturbation"], "coupling": coupling},
    )


def _learned_label(model, actions: Mapping) -> str:
    """The perturbation label of ``{"genes": {gene: learned request}}`` (``LCD.actions``): each
    spec ``learned()`` or the screen's kind without a value (e.g. ``knockout()``)."""
    unknown = sorted(set(actions) - {"genes"})
    explicit = [
        gene
        for gene, spec in actions.get("genes", {}).items()
        if not isinstance(spec, InterventionSpec)
        or not spec.is_learned
        or spec.kind not in ("learned", model.intervention)
    ]
    if unknown or explicit:
        raise ValueError(
            f"LCD counterfactuals apply the screen's learned {model.intervention} interventions; "
            f"{unknown or explicit} ask for something else. Pass a perturbation label such as "
            "'GATA1+CEBPA', or model.actions(label)."
        )
    return model.registry.separator.join(actions.get("genes", {})) or model.registry.control[0]
