"""Graphs as matrices: adjacency ``A[i, j] = 1`` iff ``i -> j``, and the one conversion to drift
orientation (``drift[i, j]`` = effect of ``j`` on ``i``)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from causalcell.graph._dag import node_order

__all__ = ["drift_mask", "from_adjacency", "graph_from_drift", "swap_orientation", "to_adjacency"]


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
