"""Perturbations apart from their targets: the (perturbation, target) pairs of a screen.

When a screen names its perturbations (guides, reagents, drugs) apart from their target genes
(``Registry.perturbation_targets``), or gives them kinds of their own
(``Registry.perturbation_kinds``), every pair ``e = (perturbation r, target j)`` gets its own
intervention parameter ``mu_j + tau delta_e`` of its perturbation's kind
(:func:`pair_values`, ``mu_j`` the target's parameter of that kind): perturbations of one
target share strength through ``mu_j`` and the spread ``tau``, and differ where the data say
so (PMA activates PKC where G06976 inhibits it; two guides knock a gene down to different
depths). A condition's parameter of target ``j`` averages those of its perturbations of ``j``
of each kind; a knockout and a knockdown of one gene in one condition compose (the knockout
wins).

This module builds the pairs of a registry (the program's data ``pair_active``,
``pair_coordinates``, ``pair_kinds``), where their deviations start, and the rows of query
conditions, whose perturbations may be unseen: an unseen perturbation of a trained target
draws its ``delta`` from the prior (its parameter is the target's, widened by ``tau``).

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
    "KIND_SEPARATOR",
    "PAIR_KINDS",
    "SPREAD_SITE",
    "PairDesign",
    "Pairs",
    "kind_of",
    "kind_spec",
    "pair_design",
    "pair_start",
    "pair_values",
    "pairs_of",
    "query_pairs",
    "request_pairs",
    "sample_pair_sites",
    "screen_kinds",
]

#: Sites of the perturbation hierarchy (:func:`pair_values`): the spread of perturbations of
#: one target around its parameter, and each (perturbation, target) pair's standardised deviation.
SPREAD_SITE = "perturbation_spread"
DEVIATION_SITE = "perturbation_deviations"
#: Where the spread ``tau`` of perturbations around their target's parameter starts.
START_SPREAD = 0.5
#: Intervention kinds a perturbation of LCD can have (:data:`._program.INTERVENTION_KINDS`).
PAIR_KINDS = ("shift", "knockdown", "knockout")
#: Joins the kinds of a screen whose perturbations have several (``LCD.intervention``).
KIND_SEPARATOR = "|"


def screen_kinds(kind: str) -> tuple[str, ...]:
    """The kinds of a screen's kind ``"knockdown"`` or ``"knockdown|knockout"``: the first is
    the default (of genes named directly and of ``do`` requests), the rest in
    :data:`PAIR_KINDS` order.

    Raises
    ------
    ValueError
        For a kind that is not one of :data:`PAIR_KINDS`, or a repeated one.
    """
    kinds = tuple(str(kind).split(KIND_SEPARATOR))
    if len(set(kinds)) != len(kinds) or not set(kinds) <= set(PAIR_KINDS):
        raise ValueError(
            f"intervention must be one of {PAIR_KINDS} (or several joined by "
            f"{KIND_SEPARATOR!r}), got {kind!r}."
        )
    return kinds


def kind_spec(default: str, kinds) -> str:
    """The screen's kind: ``default`` followed by the other ``kinds`` in :data:`PAIR_KINDS`
    order."""
    others = [kind for kind in PAIR_KINDS if kind in set(kinds) and kind != default]
    return KIND_SEPARATOR.join([default, *others])


class Pairs(NamedTuple):
    """Which (perturbation, target) pairs act in each condition: ``active`` ``[K, E]`` (1 where
    condition ``k`` applies pair ``e``'s perturbation, else 0), the latent ``coordinates``
    ``[E]`` of the pairs' targets and their ``kinds`` ``[E]`` (indices into
    :data:`PAIR_KINDS`). Present when a screen names its perturbations apart from their
    targets or gives them kinds (``Registry.perturbation_targets``, ``perturbation_kinds``)."""

    active: jax.Array
    coordinates: jax.Array
    kinds: jax.Array

    def take(self, conditions) -> Pairs:
        """The rows of ``conditions`` (an index array)."""
        return self._replace(active=self.active[conditions])

    def covered(self, kind: str, size: int):
        """``[K, size]`` how many active pairs of ``kind`` target each coordinate."""
        active = self.active * (self.kinds == PAIR_KINDS.index(kind))
        return jax.ops.segment_sum(active.T, self.coordinates, num_segments=size).T


def pairs_of(data: dict) -> Pairs | None:
    """The :class:`Pairs` of a program's data dict (``pair_active``, ``pair_coordinates``,
    ``pair_kinds``), or None for a screen whose perturbations are its genes."""
    if data.get("pair_active") is None:
        return None
    return Pairs(data["pair_active"], data["pair_coordinates"], data["pair_kinds"])


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


def pair_values(value, values, pairs: Pairs | None, kind: str):
    """The per-target value ``value`` ``[m]`` of ``kind`` (a site of ``values``, one draw), or
    with ``pairs`` ``[K, m]``: ``mu_j + tau * mean(delta_e)`` over the condition's pairs of
    that kind that target ``j`` (``mu_j`` where none does, e.g. a ``do`` request of the gene).

    Perturbations of one target share ``mu`` and differ by ``tau delta``, so an unseen
    perturbation of a trained target draws its ``delta`` from the prior (non-centred
    hierarchical prior)."""
    if pairs is None:
        return value
    size = value.shape[-1]
    active = pairs.active * (pairs.kinds == PAIR_KINDS.index(kind))
    deviation = values[SPREAD_SITE][..., None] * values[DEVIATION_SITE]  # [E]
    moved = jax.ops.segment_sum((active * deviation).T, pairs.coordinates, num_segments=size).T
    count = pairs.covered(kind, size)
    return value + moved / jnp.maximum(count, 1.0)


class PairDesign(NamedTuple):
    """The pairs of a registry: perturbation ``[E]`` (index into
    ``registry.perturbations``), latent ``coordinate`` ``[E]`` of its target, the target
    gene's name ``[E]`` and the pair's ``kind`` ``[E]`` (index into :data:`PAIR_KINDS`)."""

    perturbation: np.ndarray
    coordinate: np.ndarray
    gene: tuple[str, ...]
    kind: np.ndarray

    def pairs(self, applied) -> Pairs:
        """The :class:`Pairs` of rows ``applied`` ``[K, R]`` (row ``k`` applies perturbation
        ``r`` of the registry)."""
        active = np.asarray(applied, bool)[:, self.perturbation].astype(np.float32)
        return Pairs(jnp.asarray(active), jnp.asarray(self.coordinate), jnp.asarray(self.kind))


def kind_of(registry, perturbation: str, default: str) -> int:
    """Index into :data:`PAIR_KINDS` of ``perturbation``'s kind (``default`` unless the
    registry's ``perturbation_kinds`` names one)."""
    return PAIR_KINDS.index(registry.perturbation_kinds.get(perturbation, default))


def pair_design(registry, coordinates, default_kind: str) -> PairDesign | None:
    """The (perturbation, target) pairs of ``registry`` over the latent ``coordinates``
    (names), each of its perturbation's kind (``default_kind`` unless named), or None when
    its perturbations are its genes, all of the default kind."""
    if not registry.perturbation_targets and not registry.perturbation_kinds:
        return None
    position = {name: index for index, name in enumerate(coordinates)}
    rows, columns = np.nonzero(registry.perturbation_genes)
    genes = tuple(registry.genes[column] for column in columns)
    decoded = sorted({gene for gene in genes if gene not in position})
    if decoded:
        raise ValueError(f"Perturbation targets {decoded} are not modelled coordinates.")
    coordinate = np.array([position[gene] for gene in genes], np.int32)
    kinds = [kind_of(registry, registry.perturbations[row], default_kind) for row in rows]
    return PairDesign(rows.astype(np.int32), coordinate, genes, np.asarray(kinds, np.int32))


def pair_start(own, target) -> dict:
    """Where the hierarchy starts: ``tau`` at :data:`START_SPREAD` and each pair's ``delta`` at
    ``(v_e - mu_j) / tau``, ``v_e`` its own pseudobulk start (``own`` ``[E]``) and ``mu_j``
    its target's parameter of its kind (``target`` ``[E]``)."""
    deviation = (np.asarray(own) - np.asarray(target)) / START_SPREAD
    return {
        SPREAD_SITE: np.float32(START_SPREAD),
        DEVIATION_SITE: deviation.astype(np.float32),
    }


def query_pairs(registry, design: PairDesign, members, coordinates, draws: dict, key, default):
    """The :class:`Pairs` of query conditions and the draws they need.

    ``members``: each query's perturbation names; ``coordinates``: the latent coordinates'
    names; ``default``: the screen's default kind. A trained perturbation uses its pairs; any
    other (a perturbation of the table that no training cell carried, or a gene named
    directly) is a new perturbation of its targets, one new pair per target, whose ``delta``
    is drawn from its prior ``N(0, 1)`` for every posterior draw (``key``). Returns the pairs
    and ``draws`` with those deviations appended.
    """
    trained = {name: index for index, name in enumerate(registry.perturbations)}
    position = {name: index for index, name in enumerate(coordinates)}
    new = []  # (row, coordinate, kind): one new pair per target of an unseen perturbation
    applied = np.zeros((len(members), len(registry.perturbations)), bool)
    for row, names in enumerate(members):
        for name in names:
            if name in trained:
                applied[row, trained[name]] = True
                continue
            kind = kind_of(registry, name, default)
            for gene in registry.perturbation_targets.get(name, (name,)):
                new.append((row, position[gene], kind))
    extra = np.zeros((len(members), len(new)), np.float32)
    extra[[row for row, _, _ in new], np.arange(len(new))] = 1.0
    known = design.pairs(applied)
    new_coordinates = np.asarray([coordinate for _, coordinate, _ in new], np.int32)
    new_kinds = np.asarray([kind for _, _, kind in new], np.int32)
    pairs = Pairs(
        jnp.concatenate([known.active, jnp.asarray(extra)], axis=1),
        jnp.asarray(np.concatenate([design.coordinate, new_coordinates])),
        jnp.asarray(np.concatenate([design.kind, new_kinds])),
    )
    deviations = draws[DEVIATION_SITE]
    fresh = jax.random.normal(key, (*deviations.shape[:-1], len(new)), deviations.dtype)
    draws = {**draws, DEVIATION_SITE: jnp.concatenate([deviations, fresh], axis=-1)}
    return pairs, draws


def request_pairs(model, members, draws: dict, key):
    """:func:`query_pairs` of a fitted LCD's queries (``members``: each query's perturbation
    names), or ``(None, draws)`` when its perturbations are its genes."""
    default = screen_kinds(model.intervention)[0]
    design = pair_design(model.registry, model.coordinates, default)
    if design is None:
        return None, draws
    return query_pairs(model.registry, design, members, model.coordinates, draws, key, default)
