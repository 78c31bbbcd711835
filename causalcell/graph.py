"""Causal graphs: validate a ``networkx.DiGraph``, fix a node order, convert to matrices and back.

A ``networkx.DiGraph`` is the user-facing graph. Every matrix in this module is indexed by a
fixed node order (the graph's insertion order unless the caller passes ``nodes``).

Conventions
-----------
**Adjacency** (graph orientation): ``adjacency[i, j] = 1`` (or the edge's weight) iff there is an
edge ``i -> j``; row ``i`` is the *parent*, column ``j`` the *child*.

**Drift** (dynamics orientation, DESIGN 2.3): the drift acts as ``dx = drift @ x dt``, so
``drift[i, j]`` is the effect of gene ``j`` on gene ``i`` (row = *target*). That is the transpose
of the adjacency. The conversion between the two happens only in :func:`swap_orientation`
(which :func:`drift_mask` and :func:`graph_from_drift` use); everything else in causalcell uses
one orientation or the other and never transposes by hand.

Examples
--------
>>> import networkx as nx
>>> graph = nx.DiGraph([("a", "b")])  # gene a activates gene b
>>> to_adjacency(graph)  # row = parent, column = child
array([[0., 1.],
       [0., 0.]])
>>> drift_mask(graph)  # row = target, column = regulator
array([[0., 0.],
       [1., 0.]])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from causalcell._data_checks import DataKeyError, did_you_mean

__all__ = [
    "CyclicGraphError",
    "ancestors",
    "descendants",
    "drift_mask",
    "from_adjacency",
    "graph_from_drift",
    "node_order",
    "swap_orientation",
    "to_adjacency",
    "topological_order",
    "validate_dag",
]


class CyclicGraphError(ValueError):
    """The graph has a directed cycle (or a self-loop) where a DAG is required."""


def _check_digraph(graph) -> None:
    if isinstance(graph, nx.MultiDiGraph):
        raise TypeError(
            "Expected a networkx.DiGraph, got a MultiDiGraph: parallel edges have no causal "
            "meaning here; convert with networkx.DiGraph(graph)."
        )
    if not isinstance(graph, nx.DiGraph):
        hint = (
            "an undirected graph has no causal orientation; build a networkx.DiGraph"
            if isinstance(graph, nx.Graph)
            else "build one with networkx.DiGraph(edges) or causalcell.graph.from_adjacency"
        )
        raise TypeError(f"Expected a networkx.DiGraph, got {type(graph).__name__}: {hint}.")


def _format_path(nodes: Sequence[Hashable]) -> str:
    return " -> ".join(str(node) for node in nodes)


def validate_dag(graph: nx.DiGraph) -> None:
    """Check that ``graph`` is a directed acyclic graph; raise a clear error if not.

    Parameters
    ----------
    graph
        The causal graph.

    Raises
    ------
    TypeError
        If ``graph`` is not a ``networkx.DiGraph`` (undirected and multi-graphs are rejected).
    CyclicGraphError
        If a node has a self-loop, or the graph has a directed cycle; the message names one
        cycle, starting from its node that comes first in the graph's node order.

    Examples
    --------
    >>> validate_dag(nx.DiGraph([("a", "b"), ("b", "c")]))
    >>> validate_dag(nx.DiGraph([("a", "b"), ("b", "a")]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    causalcell.graph.CyclicGraphError: The graph has a directed cycle: a -> b -> a. ...
    """
    _check_digraph(graph)
    loops = list(nx.nodes_with_selfloops(graph))
    if loops:
        raise CyclicGraphError(
            f"Node {loops[0]!r} has a self-loop ({loops[0]} -> {loops[0]}); {len(loops)} node(s) "
            "in all. Self-regulation is the decay on the drift's diagonal, not an edge: remove "
            "them with graph.remove_edges_from(list(networkx.selfloop_edges(graph)))."
        )
    try:
        edges = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    cycle = [source for source, _ in edges]
    position = {node: index for index, node in enumerate(graph.nodes)}
    start = min(range(len(cycle)), key=lambda index: position[cycle[index]])
    cycle = cycle[start:] + cycle[:start]
    raise CyclicGraphError(
        f"The graph has a directed cycle: {_format_path([*cycle, cycle[0]])}. A DAG is required "
        "here: remove or reverse one of these edges (e.g. graph.remove_edge"
        f"({cycle[-1]!r}, {cycle[0]!r})), or use a model that allows feedback "
        "(causalcell.diffusion)."
    )


def node_order(graph: nx.DiGraph, nodes: Iterable[Hashable] | None = None) -> tuple:
    """Return the fixed node order that indexes every matrix built from ``graph``.

    Parameters
    ----------
    graph
        The graph.
    nodes
        The order to use; it must contain exactly the graph's nodes. By default, the graph's
        insertion order (``tuple(graph.nodes)``).

    Raises
    ------
    ValueError
        If ``nodes`` has duplicates, misses nodes of the graph, or names nodes it lacks.

    Examples
    --------
    >>> graph = nx.DiGraph([("b", "a")])
    >>> node_order(graph)
    ('b', 'a')
    >>> node_order(graph, ["a", "b"])
    ('a', 'b')
    """
    _check_digraph(graph)
    if nodes is None:
        return tuple(graph.nodes)
    order = tuple(nodes)
    occurrences = Counter(order)
    duplicated = [node for node, count in occurrences.items() if count > 1]
    missing = [node for node in graph.nodes if node not in occurrences]
    extra = [node for node in occurrences if node not in graph]
    if duplicated or missing or extra:
        problems = []
        if duplicated:
            problems.append(f"duplicated: {duplicated}")
        if missing:
            problems.append(f"missing from nodes: {missing}")
        if extra:
            problems.append(f"not in the graph: {extra}")
        raise ValueError(
            f"nodes must list each node of the graph exactly once ({'; '.join(problems)}). "
            "Pass nodes=None to use the graph's own order, or add the missing nodes to the "
            "graph with graph.add_nodes_from(...)."
        )
    return order


def topological_order(graph: nx.DiGraph) -> tuple:
    """Return the nodes in a topological order (parents before children), deterministically.

    Ties are broken by the graph's node order, so the result depends only on the graph.

    Raises
    ------
    CyclicGraphError
        If the graph is not a DAG (see :func:`validate_dag`).

    Examples
    --------
    >>> topological_order(nx.DiGraph([("c", "a"), ("b", "a")]))
    ('c', 'b', 'a')
    """
    validate_dag(graph)
    position = {node: index for index, node in enumerate(graph.nodes)}
    return tuple(nx.lexicographical_topological_sort(graph, key=position.__getitem__))


def to_adjacency(
    graph: nx.DiGraph, nodes: Iterable[Hashable] | None = None, *, weight: str | None = None
) -> np.ndarray:
    """Return the adjacency matrix: ``adjacency[i, j]`` is nonzero iff ``i -> j`` (parent i).

    Parameters
    ----------
    graph
        The graph (cycles and self-loops are allowed here and appear in the matrix).
    nodes
        Node order of rows and columns; see :func:`node_order`.
    weight
        Edge attribute to use as the entry; ``1.0`` for every edge when ``None``.

    Returns
    -------
    numpy.ndarray
        Float array ``[d, d]``.

    Raises
    ------
    KeyError
        If an edge lacks the ``weight`` attribute.

    Examples
    --------
    >>> graph = nx.DiGraph()
    >>> graph.add_edge("a", "b", weight=0.5)
    >>> to_adjacency(graph, weight="weight")
    array([[0. , 0.5],
           [0. , 0. ]])
    """
    order = node_order(graph, nodes)
    index = {node: position for position, node in enumerate(order)}
    adjacency = np.zeros((len(order), len(order)))
    for parent, child, attributes in graph.edges(data=True):
        if weight is None:
            value = 1.0
        elif weight in attributes:
            value = attributes[weight]
        else:
            raise KeyError(
                f"Edge {parent!r} -> {child!r} has no {weight!r} attribute (it has "
                f"{sorted(attributes)}); set it on every edge or pass weight=None."
            )
        adjacency[index[parent], index[child]] = value
    return adjacency


def _check_square(matrix, nodes: Sequence[Hashable], name: str) -> np.ndarray:
    array = np.asarray(matrix, dtype=float)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {array.shape}.")
    if array.shape[0] != len(nodes):
        raise ValueError(
            f"{name} has shape {array.shape} but {len(nodes)} nodes were given; "
            "pass one node name per row."
        )
    if not np.isfinite(array).all():
        raise ValueError(
            f"{name} has {int((~np.isfinite(array)).sum())} non-finite entries; "
            "replace them (e.g. numpy.nan_to_num) before building a graph."
        )
    return array


def from_adjacency(
    matrix,
    nodes: Iterable[Hashable],
    *,
    threshold: float = 0.0,
    edge_attributes: Mapping[str, np.ndarray] | None = None,
) -> nx.DiGraph:
    """Build a graph with an edge ``i -> j`` wherever ``|matrix[i, j]| > threshold``.

    Parameters
    ----------
    matrix
        Adjacency-oriented matrix ``[d, d]`` (row = parent, column = child).
    nodes
        Names of the ``d`` nodes, in matrix order; all are added, isolated or not.
    threshold
        Entries with absolute value at most ``threshold`` give no edge.
    edge_attributes
        Further matrices of the same shape and orientation (e.g. ``"lower"``/``"upper"``
        credible bounds, ``"probability"``); each becomes an edge attribute of that name.

    Returns
    -------
    networkx.DiGraph
        Edges carry ``weight=matrix[i, j]`` and one float attribute per extra matrix.

    Examples
    --------
    >>> graph = from_adjacency([[0.0, 0.8], [0.05, 0.0]], ["a", "b"], threshold=0.1)
    >>> list(graph.edges(data=True))
    [('a', 'b', {'weight': 0.8})]
    """
    return _build_graph(*_checked_matrices(matrix, nodes, edge_attributes, "matrix"), threshold)


def _checked_matrices(matrix, nodes, edge_attributes, name: str):
    """Node order, the checked matrix and the checked attribute matrices (same orientation)."""
    order = tuple(nodes)
    if len(set(order)) != len(order):
        raise ValueError(f"nodes must be unique, got {list(order)}.")
    weights = _check_square(matrix, order, name)
    extra = {}
    for attribute, values in (edge_attributes or {}).items():
        if attribute == "weight":
            raise ValueError(f"edge_attributes may not be named 'weight': that is {name} itself.")
        extra[attribute] = _check_square(values, order, f"edge_attributes[{attribute!r}]")
    return order, weights, extra


def _build_graph(order, weights, extra, threshold) -> nx.DiGraph:
    """Edge ``order[i] -> order[j]`` wherever ``|weights[i, j]| > threshold`` (adjacency)."""
    graph = nx.DiGraph()
    graph.add_nodes_from(order)
    for parent, child in zip(*np.nonzero(np.abs(weights) > threshold)):
        attributes = {"weight": float(weights[parent, child])}
        attributes.update({name: float(values[parent, child]) for name, values in extra.items()})
        graph.add_edge(order[parent], order[child], **attributes)
    return graph


def swap_orientation(matrix) -> np.ndarray:
    """Drift orientation ``[target, source]`` <-> graph orientation ``[source, target]``.

    The transpose with a zero diagonal (self-decay is not an edge); NaN entries are kept. The
    only place the two orientations are converted (:func:`drift_mask` and
    :func:`graph_from_drift` use it).

    Examples
    --------
    >>> swap_orientation([[-1.0, 0.0], [0.7, -1.0]])  # drift: a acts on b -> edge a -> b
    array([[0. , 0.7],
           [0. , 0. ]])
    """
    array = np.asarray(matrix, dtype=float)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"matrix must be a square matrix, got shape {array.shape}.")
    swapped = array.T.copy()
    np.fill_diagonal(swapped, 0.0)
    return swapped


def drift_mask(graph: nx.DiGraph, nodes: Iterable[Hashable] | None = None) -> np.ndarray:
    """Return the drift-oriented 0/1 mask: ``mask[i, j] = 1`` iff the graph has ``j -> i``.

    This is ``to_adjacency(graph, nodes).T`` with a zero diagonal (self-regulation is the
    drift's decay term, never masked out), ready to multiply the off-diagonal drift weights.

    Examples
    --------
    >>> drift_mask(nx.DiGraph([("a", "b")]))  # mask[b, a]: a acts on b
    array([[0., 0.],
           [1., 0.]])
    """
    return swap_orientation(to_adjacency(graph, nodes))


def graph_from_drift(
    drift,
    nodes: Iterable[Hashable],
    *,
    threshold: float = 0.0,
    edge_attributes: Mapping[str, np.ndarray] | None = None,
) -> nx.DiGraph:
    """Build the graph of a drift matrix: edge ``j -> i`` with weight ``drift[i, j]``.

    Parameters
    ----------
    drift
        Drift-oriented matrix ``[d, d]`` (``drift[i, j]`` = effect of gene ``j`` on gene ``i``).
        The diagonal (self-decay) is ignored.
    nodes
        Gene names in matrix order.
    threshold
        Off-diagonal entries with absolute value at most ``threshold`` give no edge.
    edge_attributes
        Further drift-oriented matrices (credible bounds, edge probabilities), stored as edge
        attributes.

    Examples
    --------
    >>> drift = [[-1.0, 0.0], [0.7, -1.0]]  # a activates b
    >>> list(graph_from_drift(drift, ["a", "b"]).edges(data=True))
    [('a', 'b', {'weight': 0.7})]
    """
    order, matrix, extra = _checked_matrices(drift, nodes, edge_attributes, "drift")
    transposed = {name: values.T for name, values in extra.items()}
    return _build_graph(order, swap_orientation(matrix), transposed, threshold)


def _in_node_order(graph: nx.DiGraph, node: Hashable, search) -> tuple:
    """``search(graph, node)`` (a networkx reachability query) as a tuple in the graph's order."""
    _check_digraph(graph)
    if node not in graph:
        raise DataKeyError(
            f"Node {node!r} is not in the graph ({graph.number_of_nodes()} nodes)."
            f"{did_you_mean(node, graph.nodes)}"
        )
    found = search(graph, node)
    return tuple(candidate for candidate in graph.nodes if candidate in found)


def ancestors(graph: nx.DiGraph, node: Hashable) -> tuple:
    """Return the nodes with a directed path to ``node``, in the graph's node order.

    Raises
    ------
    KeyError
        If ``node`` is not in the graph; the message suggests close matches.

    Examples
    --------
    >>> ancestors(nx.DiGraph([("a", "b"), ("b", "c")]), "c")
    ('a', 'b')
    """
    return _in_node_order(graph, node, nx.ancestors)


def descendants(graph: nx.DiGraph, node: Hashable) -> tuple:
    """Return the nodes reachable from ``node`` by a directed path, in the graph's node order.

    Raises
    ------
    KeyError
        If ``node`` is not in the graph; the message suggests close matches.

    Examples
    --------
    >>> descendants(nx.DiGraph([("a", "b"), ("b", "c")]), "a")
    ('b', 'c')
    """
    return _in_node_order(graph, node, nx.descendants)
