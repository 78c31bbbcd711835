"""Validated DAGs: cycle errors that name the cycle, node orders, ancestors and descendants."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import networkx as nx

from causalcell._core.errors import DataKeyError
from causalcell._core.names import did_you_mean

__all__ = [
    "CyclicGraphError",
    "ancestors",
    "descendants",
    "node_order",
    "topological_order",
    "validate_dag",
]


class CyclicGraphError(ValueError):
    """The graph has a directed cycle (or a self-loop) where a DAG is required."""


CyclicGraphError.__module__ = "causalcell.graph"  # its public home, as tracebacks print it


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
