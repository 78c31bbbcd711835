"""Perturbations apart from their targets: the (perturbation, target) pairs of a screen.

When a screen names its perturbations (guides, reagents, drugs) apart from their target genes
(``Registry.perturbation_targets``), every pair ``e = (perturbation r, target j)`` gets its own
intervention parameter ``mu_j + tau delta_e`` (:func:`pair_values`): perturbations
of one target share strength through ``mu_j`` and the spread ``tau``, and differ where the data
say so (PMA activates PKC where G06976 inhibits it; two guides knock a gene down to different
depths). A condition's parameter of target ``j`` averages those of its perturbations of ``j``.

This module builds the pairs of a registry (the program's data ``pair_weights``,
``pair_coordinates``), where their deviations start, and the rows of query conditions, whose
perturbations may be unseen: an unseen perturbation of a trained target draws its ``delta``
from the prior (its parameter is the target's, widened by ``tau``).

References
----------
Gelman, A. & Hill, J. (2007). Data Analysis Using Regression and Multilevel/Hierarchical
Models, ch. 12-13 (partial pooling; predicting a new group from the hyperprior).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

__all__ = [
    "DEVIATION_SITE",
    "SPREAD_SITE",
    "PairDesign",
    "Pairs",
    "pair_design",
    "pair_start",
    "pair_values",
    "pair_weights",
    "pairs_of",
    "query_pairs",
    "request_pairs",
    "sample_pair_sites",
]

#: Sites of the perturbation hierarchy (:func:`pair_values`): the spread of perturbations of
#: one target around its parameter, and each (perturbation, target) pair's standardised deviation.
SPREAD_SITE = "perturbation_spread"
DEVIATION_SITE = "perturbation_deviations"
#: Where the spread ``tau`` of perturbations around their target's parameter starts.
START_SPREAD = 0.5


class Pairs(NamedTuple):
    """Which (perturbation, target) pairs act in each condition: ``weights`` ``[K, E]``
    (``1 / n`` for each of the ``n`` pairs of a condition that target one coordinate, else 0)
    and the latent ``coordinates`` ``[E]`` of the pairs' targets. Present when a screen names
    its perturbations apart from their targets (``Registry.perturbation_targets``)."""

    weights: jax.Array
    coordinates: jax.Array

    def take(self, conditions) -> Pairs:
        """The rows of ``conditions`` (an index array)."""
        return Pairs(self.weights[conditions], self.coordinates)


def pairs_of(data: dict) -> Pairs | None:
    """The :class:`Pairs` of a program's data dict (``pair_weights``, ``pair_coordinates``), or
    None for a screen whose perturbations are its genes."""
    if data.get("pair_weights") is None:
        return None
    return Pairs(data["pair_weights"], data["pair_coordinates"])


def sample_pair_sites(pairs: int) -> dict:
    """Sample the hierarchy of ``pairs`` (perturbation, target) pairs by name:
    ``perturbation_spread ~ HalfNormal(1)`` and ``perturbation_deviations ~ N(0, 1)``
    ``[pairs]`` (none for no pairs)."""
    if not pairs:
        return {}
    return {
        SPREAD_SITE: numpyro.sample(SPREAD_SITE, dist.HalfNormal(1.0)),
        DEVIATION_SITE: numpyro.sample(
            DEVIATION_SITE, dist.Normal(0.0, 1.0).expand([pairs]).to_event(1)
        ),
    }


def pair_values(value, values, pairs: Pairs | None):
    """The per-target value ``value`` ``[m]`` (a site of ``values``, one draw), or with
    ``pairs`` ``[K, m]``: ``mu_j + tau * mean(delta_e)`` over the condition's pairs that
    target ``j`` (``mu_j`` where none does, e.g. a ``do`` request of the gene itself).

    Perturbations of one target share ``mu`` and differ by ``tau delta``, so an unseen
    perturbation of a trained target draws its ``delta`` from the prior (non-centred
    hierarchical prior)."""
    if pairs is None:
        return value
    deviation = values[SPREAD_SITE][..., None] * values[DEVIATION_SITE]  # [E]
    moved = jax.ops.segment_sum(
        (pairs.weights * deviation).T, pairs.coordinates, num_segments=value.shape[-1]
    )
    return value + moved.T


class PairDesign(NamedTuple):
    """The pairs of a registry: perturbation ``[E]`` (index into
    ``registry.perturbations``), latent ``coordinate`` ``[E]`` of its target, and the target
    gene's name ``[E]``."""

    perturbation: np.ndarray
    coordinate: np.ndarray
    gene: tuple[str, ...]


def pair_design(registry, coordinates) -> PairDesign | None:
    """The (perturbation, target) pairs of ``registry`` over the latent ``coordinates`` (names),
    or None when its perturbations are its genes (no ``perturbation_targets``)."""
    if not registry.perturbation_targets:
        return None
    position = {name: index for index, name in enumerate(coordinates)}
    rows, columns = np.nonzero(registry.perturbation_genes)
    genes = tuple(registry.genes[column] for column in columns)
    decoded = sorted({gene for gene in genes if gene not in position})
    if decoded:
        raise ValueError(f"Perturbation targets {decoded} are not modelled coordinates.")
    coordinate = np.array([position[gene] for gene in genes], np.int32)
    return PairDesign(rows.astype(np.int32), coordinate, genes)


def pair_weights(applied, design: PairDesign, size: int) -> np.ndarray:
    """``[K, E]`` weights of :class:`Pairs` from ``applied`` ``[K, R]`` (row ``k``
    applies perturbation ``r``): ``1 / n`` for each of the ``n`` applied pairs of a row that
    target one coordinate (of ``size``)."""
    active = np.asarray(applied, bool)[:, design.perturbation]
    return _averaging(active, design.coordinate, size)


def _averaging(active, coordinates, size: int) -> np.ndarray:
    """``active`` ``[K, E]`` (bool) as weights that average the active pairs of each target."""
    active = np.asarray(active, np.float32)
    per_target = np.zeros((active.shape[0], size), np.float32)
    np.add.at(per_target.T, coordinates, active.T)
    count = np.maximum(per_target[:, coordinates], 1.0)
    return np.where(active > 0, 1.0 / count, 0.0).astype(np.float32)


def pair_start(pair_values, design: PairDesign, target_start) -> dict:
    """Where the hierarchy starts: ``tau`` at :data:`START_SPREAD` and each pair's ``delta`` at
    ``(v_e - mu_j) / tau``, ``v_e`` its own pseudobulk start (``pair_values`` ``[E]``) and
    ``mu_j`` its target's (``target_start`` over the latent coordinates)."""
    target = np.asarray(target_start)[design.coordinate]
    deviation = (np.asarray(pair_values) - target) / START_SPREAD
    return {
        SPREAD_SITE: np.float32(START_SPREAD),
        DEVIATION_SITE: deviation.astype(np.float32),
    }


def query_pairs(registry, design: PairDesign, members, coordinates, draws: dict, key):
    """The :class:`Pairs` of query conditions and the draws they need.

    ``members``: each query's perturbation names; ``coordinates``: the latent coordinates'
    names. A trained perturbation uses its pairs; any other (a perturbation of the table that
    no training cell carried, or a gene named directly) is a new perturbation of its targets,
    one new pair per target, whose ``delta`` is drawn from its prior ``N(0, 1)`` for every
    posterior draw (``key``). Returns the pairs and ``draws`` with those deviations appended.
    """
    trained = {name: index for index, name in enumerate(registry.perturbations)}
    position = {name: index for index, name in enumerate(coordinates)}
    new_coordinates, new_rows = [], []  # one new pair per target of an unseen perturbation
    applied = np.zeros((len(members), len(registry.perturbations)), bool)
    for row, names in enumerate(members):
        for name in names:
            if name in trained:
                applied[row, trained[name]] = True
                continue
            for gene in registry.perturbation_targets.get(name, (name,)):
                new_coordinates.append(position[gene])
                new_rows.append(row)
    extra = np.zeros((len(members), len(new_rows)), bool)
    extra[new_rows, np.arange(len(new_rows))] = True
    active = np.concatenate([applied[:, design.perturbation], extra], axis=1)
    pair_coordinates = np.concatenate([design.coordinate, np.asarray(new_coordinates, np.int32)])
    weights = _averaging(active, pair_coordinates, len(coordinates))
    deviations = draws[DEVIATION_SITE]
    fresh = jax.random.normal(key, (*deviations.shape[:-1], len(new_rows)), deviations.dtype)
    draws = {**draws, DEVIATION_SITE: jnp.concatenate([deviations, fresh], axis=-1)}
    return Pairs(jnp.asarray(weights), jnp.asarray(pair_coordinates)), draws


def request_pairs(model, members, draws: dict, key):
    """:func:`query_pairs` of a fitted LCD's queries (``members``: each query's perturbation
    names), or ``(None, draws)`` when its perturbations are its genes."""
    design = pair_design(model.registry, model.coordinates)
    if design is None:
        return None, draws
    return query_pairs(model.registry, design, members, model.coordinates, draws, key)
