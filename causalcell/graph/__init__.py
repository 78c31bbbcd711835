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

from causalcell.graph._dag import (
    CyclicGraphError,
    ancestors,
    descendants,
    node_order,
    topological_order,
    validate_dag,
)
from causalcell.graph._matrices import (
    drift_mask,
    from_adjacency,
    graph_from_drift,
    swap_orientation,
    to_adjacency,
)

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
