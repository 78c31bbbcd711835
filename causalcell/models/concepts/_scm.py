"""The concept SCM on arrays: Gumbel-max mechanisms over a concept DAG, abduction of a cell's
Gumbel noise from its observed labels, and graph surgery.

Concept ``c`` with ``L_c`` levels and parents ``pa(c)`` takes the level
``argmax_l (b_c[l] + sum_{p in pa(c)} W_pc[value_p, l] + g_c[l])`` with ``g_c`` standard Gumbel
noise of the cell, so ``P(c = l | pa(c)) = softmax(b_c + sum_p W_pc[value_p])[l]``: the usual
categorical likelihood, with the cell's noise kept so that counterfactuals are defined.

Abduction (Oberst and Sontag 2019; Maddison et al. 2014): given the cell's observed level
``k`` under logits ``phi``, the posterior of the perturbed values ``phi + g`` is exact and
cheap: their maximum is ``Gumbel(logsumexp(phi))`` and sits at ``k``; every other entry is a
Gumbel of location ``phi_l`` truncated below that maximum, ``-log(e^{-T} + e^{-G_l})`` with
``G_l ~ Gumbel(phi_l)``. An intervention sets a concept's level (its mechanism replaced) and
recomputes its descendants from their new parents and the abducted noise; every other concept
keeps its observed level.

References
----------
Maddison, C. J., Tarlow, D. & Minka, T. (2014). A* sampling. NeurIPS (top-down Gumbel
construction).
Oberst, M. & Sontag, D. (2019). Counterfactual off-policy evaluation with Gumbel-max
structural causal models. ICML.
Pearl, J. (2009). Causality, 2nd ed., ch. 7.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import networkx as nx

from causalcell.graph import topological_order, validate_dag

__all__ = [
    "ConceptSpec",
    "abduct_gumbel",
    "intervene",
    "labels_log_prob",
    "mechanism_logits",
    "sample_levels",
]


@dataclass(frozen=True)
class ConceptSpec:
    """The concepts of a model: names parents first, their levels and their parents' indices.

    Hashable, so that a NumPyro program can take it as a static keyword argument.
    """

    names: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    parents: tuple[tuple[int, ...], ...]

    @classmethod
    def from_graph(cls, graph: nx.DiGraph, levels: Mapping) -> ConceptSpec:
        """The spec of ``levels`` (``{concept: level names}``) over the concept DAG ``graph``.

        Raises
        ------
        ValueError
            When the graph's nodes are not the concepts, or a concept has fewer than 2 levels.
        causalcell.graph.CyclicGraphError
            For a cyclic graph.
        """
        validate_dag(graph)
        if set(graph.nodes) != set(levels):
            missing = sorted(set(levels) - set(graph.nodes))
            extra = sorted(set(graph.nodes) - set(levels))
            raise ValueError(
                f"The concept graph's nodes must be the concepts: concepts not in the graph "
                f"{missing}, graph nodes that are no concept {extra}. Add isolated concepts with "
                "graph.add_node(name)."
            )
        few = [name for name, values in levels.items() if len(values) < 2]
        if few:
            raise ValueError(f"Concepts {few} have fewer than 2 levels: drop them.")
        names = tuple(topological_order(graph))
        position = {name: index for index, name in enumerate(names)}
        return cls(
            names=names,
            levels=tuple(tuple(map(str, levels[name])) for name in names),
            parents=tuple(
                tuple(sorted(position[p] for p in graph.predecessors(name))) for name in names
            ),
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(values) for values in self.levels)

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """``(parent, child)`` pairs, children in order."""
        return tuple(
            (self.names[parent], name)
            for name, parents in zip(self.names, self.parents, strict=True)
            for parent in parents
        )

    def index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"No concept {name!r}; concepts: {list(self.names)}.")
        return self.names.index(name)

    def level(self, name: str, value) -> int:
        """Index of level ``value`` of concept ``name``, with a message for unknown ones."""
        levels = self.levels[self.index(name)]
        if str(value) not in levels:
            raise ValueError(f"Concept {name!r} has no level {value!r}; levels: {list(levels)}.")
        return levels.index(str(value))

    def assignment(self, levels: Mapping) -> tuple[tuple[int, int], ...]:
        """``((concept index, level index), ...)`` of an intervention such as
        ``{"age": "90w"}``, sorted, with a message for anything else."""
        if not isinstance(levels, Mapping) or not levels:
            raise ValueError("Pass concept levels as a mapping, e.g. {'age': '90w'}.")
        return tuple(sorted((self.index(name), self.level(name, v)) for name, v in levels.items()))

    def descendants(self, indices) -> frozenset[int]:
        """Concepts downstream of ``indices`` (not themselves unless downstream of another)."""
        found: set[int] = set()
        for child, parents in enumerate(self.parents):
            if any(p in found or p in indices for p in parents):
                found.add(child)
        return frozenset(found)

    @staticmethod
    def bias_site(name: str) -> str:
        return f"bias_{name}"

    @staticmethod
    def weight_site(parent: str, child: str) -> str:
        return f"weight_{parent}_{child}"


def mechanism_logits(values: Mapping, spec: ConceptSpec, concept: int, levels) -> jax.Array:
    """Logits ``[..., L_c]`` of concept ``concept`` given every concept's level ``levels``
    (``[..., K]`` integer array; only the parents' columns are read) under one draw ``values``
    of the mechanism sites."""
    name = spec.names[concept]
    logits = values[spec.bias_site(name)]
    for parent in spec.parents[concept]:
        table = values[spec.weight_site(spec.names[parent], name)]
        logits = logits + table[levels[..., parent]]
    return jnp.broadcast_to(logits, (*levels.shape[:-1], spec.sizes[concept]))


def labels_log_prob(values: Mapping, spec: ConceptSpec, levels) -> jax.Array:
    """``[...]``: the log-probability of the levels ``[..., K]`` under the mechanisms of one
    draw ``values``, summed over the concepts."""
    return sum(
        jnp.take_along_axis(
            jax.nn.log_softmax(mechanism_logits(values, spec, concept, levels)),
            levels[..., concept, None],
            axis=-1,
        )[..., 0]
        for concept in range(len(spec.names))
    )


def abduct_gumbel(key, logits, observed) -> jax.Array:
    """One draw of the Gumbel noise ``g`` ``[..., L]`` given ``argmax(logits + g) = observed``
    (module docstring): exact, no rejection."""
    top_key, other_key = jax.random.split(key)
    top = jax.nn.logsumexp(logits, axis=-1) + jax.random.gumbel(top_key, logits.shape[:-1])
    free = logits + jax.random.gumbel(other_key, logits.shape)
    truncated = -jnp.logaddexp(-top[..., None], -free)  # each below the maximum
    chosen = jax.nn.one_hot(observed, logits.shape[-1], dtype=bool)
    return jnp.where(chosen, top[..., None], truncated) - logits


def intervene(
    key, values: Mapping, spec: ConceptSpec, observed, fixed: Mapping, abduct: bool = True
) -> jax.Array:
    """Counterfactual levels ``[..., K]`` of cells with observed levels ``observed`` (``[..., K]``)
    under ``fixed`` (``{concept index: level index or [...] array}``), for one draw ``values``:
    the fixed concepts set, their descendants recomputed from the cells' abducted Gumbel noise,
    every other concept kept as observed. ``abduct=False`` recomputes the descendants from
    fresh noise instead (a population-level answer, not the cell's)."""
    changed = spec.descendants(frozenset(fixed)) - frozenset(fixed)
    levels = observed
    keys = jax.random.split(key, len(spec.names))
    for concept in range(len(spec.names)):
        if concept in fixed:
            new = jnp.broadcast_to(jnp.asarray(fixed[concept]), observed.shape[:-1])
        elif concept in changed:
            factual = mechanism_logits(values, spec, concept, observed)
            noise = (
                abduct_gumbel(keys[concept], factual, observed[..., concept])
                if abduct
                else jax.random.gumbel(keys[concept], factual.shape)
            )
            new = jnp.argmax(mechanism_logits(values, spec, concept, levels) + noise, axis=-1)
        else:
            continue
        levels = levels.at[..., concept].set(new.astype(levels.dtype))
    return levels


def sample_levels(key, values: Mapping, spec: ConceptSpec, shape, fixed: Mapping) -> jax.Array:
    """Levels ``[*shape, K]`` drawn from the SCM under ``do(fixed)`` for one draw ``values``:
    fixed concepts set, the others from their mechanisms, parents first."""
    levels = jnp.zeros((*shape, len(spec.names)), jnp.int32)
    keys = jax.random.split(key, len(spec.names))
    for concept in range(len(spec.names)):
        if concept in fixed:
            new = jnp.broadcast_to(jnp.asarray(fixed[concept]), tuple(shape))
        else:
            logits = mechanism_logits(values, spec, concept, levels)
            new = jax.random.categorical(keys[concept], logits)
        levels = levels.at[..., concept].set(new.astype(jnp.int32))
    return levels
