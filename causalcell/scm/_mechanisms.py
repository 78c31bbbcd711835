"""Private helpers of :mod:`causalcell.scm`: graph structure, priors, mechanisms, data checks."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

import jax.numpy as jnp
import networkx as nx
import numpy as np
import numpyro.distributions as dist
from numpyro.handlers import block, substitute, trace

from causalcell._core.names import did_you_mean
from causalcell.graph import node_order, topological_order, validate_dag
from causalcell.handlers import UnknownSiteError

__all__ = [
    "Structure",
    "check_named_data",
    "check_vector_data",
    "expand_prior",
    "freeze",
    "linear_mechanism",
    "network_mechanism",
    "resolve_mechanisms",
]


@dataclass(frozen=True)
class Structure:
    """Index bookkeeping of a DAG in a fixed node order (all indices refer to ``nodes``)."""

    nodes: tuple
    names: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]  # topological: parents before children
    depth: int  # number of edges on the longest directed path

    @classmethod
    def from_graph(cls, graph: nx.DiGraph, nodes: Iterable[Hashable] | None) -> Structure:
        validate_dag(graph)
        order = node_order(graph, nodes)
        names = tuple(str(node) for node in order)
        if len(set(names)) != len(names):
            clashes = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(
                f"Nodes {clashes} share a name once converted with str(); each node becomes a "
                "sample site named str(node), so the names must be unique. Relabel the graph "
                "with networkx.relabel_nodes."
            )
        index = {node: position for position, node in enumerate(order)}
        parents = tuple(
            tuple(sorted(index[parent] for parent in graph.predecessors(node))) for node in order
        )
        topological = tuple(index[node] for node in topological_order(graph))
        depth = nx.dag_longest_path_length(graph)  # 0 without edges
        return cls(order, names, parents, topological, int(depth))

    def edges_into(self, children: Iterable[int]) -> tuple[tuple[int, int], ...]:
        """Edges ``(parent, child)`` into ``children``, in row-major adjacency order."""
        chosen = set(children)
        edges = [(p, c) for c in range(len(self.nodes)) if c in chosen for p in self.parents[c]]
        return tuple(sorted(edges))

    def lookup(self, key, what: str) -> int:
        """Index of a node given as the node itself or its name; a clear error otherwise."""
        name = str(key)
        if name in self.names:
            return self.names.index(name)
        raise UnknownSiteError(
            f"{what} names {key!r}, which is not a node of this SCM."
            f"{did_you_mean(name, self.names)} "
            f"Its {len(self.names)} nodes: {list(self.names)}."
        )


def expand_prior(prior, default: dist.Distribution, shape: tuple[int, ...], site: str):
    """The prior of ``site`` as one distribution with event shape ``shape``."""
    prior = default if prior is None else prior
    if not isinstance(prior, dist.Distribution):
        raise TypeError(
            f"The prior of {site!r} must be a numpyro distribution (e.g. dist.Normal(0.0, 1.0)), "
            f"got {type(prior).__name__}."
        )
    if prior.event_shape != ():
        raise ValueError(
            f"The prior of {site!r} must be univariate (event shape ()), got event shape "
            f"{prior.event_shape}; it is expanded to the site's shape {shape}."
        )
    try:
        expanded = prior.expand(shape)
    except ValueError as error:
        raise ValueError(
            f"The prior of {site!r} has batch shape {prior.batch_shape}, which does not "
            f"broadcast to the site's shape {shape}."
        ) from error
    return expanded.to_event(len(shape))


def freeze(function: Callable, example) -> Callable:
    """Sample ``function``'s own parameters now (one call on ``example``); return a pure version.

    The returned callable replays the recorded parameter values and hides its sample sites from
    outer handlers, so it can run many times (inside ``lax`` loops and distribution methods)
    without adding sites. A function that samples nothing is returned unchanged.
    """
    with trace() as recorded:
        function(example)
    if not recorded:
        return function
    values = {
        name: site["value"]
        for name, site in recorded.items()
        if site["type"] in ("sample", "param")
    }
    return block(substitute(function, data=values))


def resolve_mechanisms(mechanisms, structure: Structure):
    """Split user mechanisms into ``(per_node: {index: fn}, whole: fn | None)``."""
    if mechanisms is None:
        return {}, None
    if isinstance(mechanisms, Mapping):
        per_node = {}
        for key, function in mechanisms.items():
            index = structure.lookup(key, "mechanisms")
            if not callable(function):
                raise TypeError(
                    f"mechanisms[{key!r}] must be a callable parents -> loc, got "
                    f"{type(function).__name__}."
                )
            per_node[index] = function
        return per_node, None
    if callable(mechanisms):
        return {}, mechanisms
    raise TypeError(
        "mechanisms must be a mapping {node: fn(parents) -> loc} or one callable "
        f"fn(x[..., d]) -> loc[..., d]; got {type(mechanisms).__name__}."
    )


def linear_mechanism(edges, weights, bias_full):
    """``x -> loc``: ``loc_j = bias_j + sum_i weights_ij x_i``, summed over ``edges``.

    The sum is a scatter over the edges, O(edges) per unit rather than O(d^2).
    """
    parent_index = np.asarray([parent for parent, _ in edges], int)
    child_index = np.asarray([child for _, child in edges], int)

    def mechanism(x):
        loc = jnp.broadcast_to(bias_full, x.shape)
        if not edges:
            return loc
        return loc.at[..., child_index].add(x[..., parent_index] * weights)

    return mechanism


def network_mechanism(structure: Structure, network_nodes, edges, parameters, bias_full):
    """``x -> loc``: ``bias_j + sum_h v_jh [tanh(sum_k U_jkh x_pa(j)_k + c_jh) - tanh(c_jh)]``.

    Parents are gathered by padded index (``[m, K]``), so memory is ``O(m K H)``. Subtracting
    ``tanh(c_jh)`` makes the network 0 when all parents are 0: the bias is then the node's mean
    at zero parents, as in the linear SCM, and the network adds no constant that the bias
    already has.
    """
    input_weights = parameters["mlp_input_weights"]  # [edges, H]
    hidden_bias = parameters["mlp_hidden_bias"]  # [m, H]
    output_weights = parameters["mlp_output_weights"]  # [m, H]
    width = max((len(structure.parents[node]) for node in network_nodes), default=0)
    slot = {edge: position for position, edge in enumerate(edges)}
    parents = np.zeros((len(network_nodes), width), int)
    edge_slot = np.zeros((len(network_nodes), width), int)
    present = np.zeros((len(network_nodes), width), bool)
    for row, node in enumerate(network_nodes):
        for column, parent in enumerate(structure.parents[node]):
            parents[row, column] = parent
            edge_slot[row, column] = slot[(parent, node)]
            present[row, column] = True
    padded = jnp.where(present[..., None], input_weights[edge_slot], 0.0)  # [m, K, H]
    rows = np.asarray(network_nodes, int)

    def mechanism(x):
        hidden = jnp.einsum("...mk,mkh->...mh", x[..., parents], padded) + hidden_bias
        change = jnp.tanh(hidden) - jnp.tanh(hidden_bias)
        output = jnp.einsum("...mh,mh->...m", change, output_weights)
        return jnp.broadcast_to(bias_full, x.shape).at[..., rows].add(output)

    return mechanism


def check_named_data(structure: Structure, data, num_units):
    """Return ``({name: array [n]}, n)`` for the named form; clear errors for bad input."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise TypeError(
            "data of the named form must map node names to arrays of shape [num_units], got "
            f"{type(data).__name__}; use .vectorized for one [num_units, d] array."
        )
    resolved = {}
    for key, value in data.items():
        name = structure.names[structure.lookup(key, "data")]
        if value is not None:
            resolved[name] = jnp.asarray(value)
    expected = num_units
    for name, value in resolved.items():
        if expected is None and value.ndim == 1:
            expected = value.shape[0]
        if value.ndim != 1 or value.shape[0] != expected:
            wanted = "(num_units,)" if expected is None else f"({expected},)"
            raise ValueError(
                f"data[{name!r}] has shape {value.shape}; every observed node needs shape "
                f"{wanted}, one value per unit (num_units={num_units})."
            )
    return resolved, _units(expected)


def check_vector_data(structure: Structure, data, num_units):
    """Return ``(array [n, d] or None, n)`` for the vectorised form."""
    if data is None:
        return None, _units(num_units)
    data = jnp.asarray(data)
    size = len(structure.nodes)
    expected = (data.shape[0] if num_units is None and data.ndim else num_units, size)
    if data.shape != expected:
        raise ValueError(
            f"data has shape {data.shape}; the vectorised form needs shape {expected} "
            f"([num_units, d], columns in the order of .nodes; num_units={num_units})."
        )
    return data, _units(expected[0])


def _units(num_units) -> int:
    if num_units is None:
        raise ValueError(
            "The number of units is unknown: pass data or num_units (e.g. num_units=100 to "
            "simulate 100 units)."
        )
    if int(num_units) != num_units or num_units < 1:
        raise ValueError(f"num_units must be a positive integer, got {num_units!r}.")
    return int(num_units)
