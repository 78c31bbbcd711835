"""Tests of causalcell.graph: conventions, validation messages, round trips."""

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from causalcell.graph import (
    CyclicGraphError,
    ancestors,
    descendants,
    drift_mask,
    from_adjacency,
    graph_from_drift,
    node_order,
    swap_orientation,
    to_adjacency,
    topological_order,
    validate_dag,
)


def test_adjacency_convention_row_is_parent():
    graph = nx.DiGraph([("a", "b")])  # a -> b: a is the parent of b
    np.testing.assert_array_equal(to_adjacency(graph), [[0.0, 1.0], [0.0, 0.0]])
    # The same graph in the other node order: the entry moves with the nodes.
    np.testing.assert_array_equal(to_adjacency(graph, ["b", "a"]), [[0.0, 0.0], [1.0, 0.0]])


def test_to_adjacency_uses_weight_attribute():
    graph = nx.DiGraph()
    graph.add_edge("x", "y", weight=-0.25)
    graph.add_edge("y", "z", weight=2.0)
    expected = np.array([[0.0, -0.25, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(to_adjacency(graph, weight="weight"), expected)
    np.testing.assert_array_equal(to_adjacency(graph), expected != 0)


def test_to_adjacency_missing_weight_names_edge():
    graph = nx.DiGraph([("x", "y")])
    with pytest.raises(KeyError, match="'x' -> 'y' has no 'strength' attribute"):
        to_adjacency(graph, weight="strength")


def test_drift_orientation_activation_a_to_b():
    """Gene a activates gene b: drift[b, a] != 0 and the graph has a -> b."""
    genes = ["a", "b"]
    graph = nx.DiGraph([("a", "b")])
    mask = drift_mask(graph)
    np.testing.assert_array_equal(mask, [[0.0, 0.0], [1.0, 0.0]])
    assert mask[genes.index("b"), genes.index("a")] == 1.0

    drift = np.array([[-1.0, 0.0], [0.7, -2.0]])  # d b / dt gains 0.7 * a
    recovered = graph_from_drift(drift, genes)
    assert list(recovered.edges(data=True)) == [("a", "b", {"weight": 0.7})]
    assert not list(nx.selfloop_edges(recovered))  # the diagonal (decay) is not an edge


def test_graph_from_drift_attributes_follow_drift_orientation():
    drift = np.array([[-1.0, 0.0], [0.7, -1.0]])
    lower = np.array([[9.0, 9.0], [0.5, 9.0]])  # only [b, a] matters: the one edge a -> b
    upper = np.array([[9.0, 9.0], [0.9, 9.0]])
    graph = graph_from_drift(drift, ["a", "b"], edge_attributes={"lower": lower, "upper": upper})
    assert graph.edges["a", "b"] == {"weight": 0.7, "lower": 0.5, "upper": 0.9}


def test_drift_mask_zero_diagonal_and_round_trip():
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("b", "b")])  # feedback allowed
    mask = drift_mask(graph)
    assert np.all(np.diag(mask) == 0.0)
    np.testing.assert_array_equal(mask, (to_adjacency(graph) * (1 - np.eye(3))).T)
    back = graph_from_drift(mask, node_order(graph))
    assert set(back.edges) == set(graph.edges) - {("b", "b")}


def test_from_adjacency_threshold_and_attributes():
    matrix = np.array([[0.0, 0.8, -0.3], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]])
    probability = np.full((3, 3), 0.5)
    graph = from_adjacency(
        matrix, ["a", "b", "c"], threshold=0.1, edge_attributes={"probability": probability}
    )
    assert tuple(graph.nodes) == ("a", "b", "c")  # the isolated node c is kept
    assert dict(graph.edges) == {  # |0.1| is not > 0.1: no edge b -> a
        ("a", "b"): {"weight": 0.8, "probability": 0.5},
        ("a", "c"): {"weight": -0.3, "probability": 0.5},
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matrix": np.zeros((2, 3)), "nodes": ["a", "b"]}, "square"),
        ({"matrix": np.zeros((2, 2)), "nodes": ["a", "b", "c"]}, "3 nodes were given"),
        ({"matrix": np.zeros((2, 2)), "nodes": ["a", "a"]}, "unique"),
        ({"matrix": [[0.0, np.nan], [0.0, 0.0]], "nodes": ["a", "b"]}, "1 non-finite"),
        (
            {"matrix": np.eye(2), "nodes": ["a", "b"], "edge_attributes": {"weight": np.eye(2)}},
            "may not be named 'weight'",
        ),
    ],
)
def test_from_adjacency_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        from_adjacency(**kwargs)


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        (4, 4),
        elements=st.sampled_from([0.0, 0.5, -1.5, 2.0]),
    )
)
def test_matrix_round_trips(matrix):
    nodes = ["g0", "g1", "g2", "g3"]
    graph = from_adjacency(matrix, nodes)
    np.testing.assert_array_equal(to_adjacency(graph, weight="weight"), matrix)
    off_diagonal = matrix * (1 - np.eye(4))
    drift_graph = graph_from_drift(off_diagonal.T, nodes)
    np.testing.assert_array_equal(to_adjacency(drift_graph, weight="weight"), off_diagonal)
    np.testing.assert_array_equal(drift_mask(drift_graph), off_diagonal.T != 0)


def test_validate_dag_names_cycle_from_first_node():
    graph = nx.DiGraph()
    graph.add_nodes_from(["x", "A", "B", "C"])
    graph.add_edges_from([("B", "C"), ("C", "A"), ("A", "B"), ("x", "A")])
    with pytest.raises(CyclicGraphError, match=r"cycle: A -> B -> C -> A\. .*remove or reverse"):
        validate_dag(graph)
    assert issubclass(CyclicGraphError, ValueError)


def test_validate_dag_accepts_dag_and_rejects_self_loop():
    validate_dag(nx.DiGraph([("a", "b"), ("a", "c"), ("b", "c")]))
    with pytest.raises(CyclicGraphError, match=r"Node 'b' has a self-loop \(b -> b\)"):
        validate_dag(nx.DiGraph([("a", "b"), ("b", "b")]))


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (nx.Graph([("a", "b")]), "undirected graph has no causal orientation"),
        (nx.MultiDiGraph([("a", "b")]), "MultiDiGraph"),
        (np.zeros((2, 2)), "got ndarray"),
    ],
)
def test_validate_dag_rejects_other_types(graph, message):
    with pytest.raises(TypeError, match=message):
        validate_dag(graph)


def test_node_order_default_and_custom():
    graph = nx.DiGraph([("b", "a")])
    graph.add_node("c")
    assert node_order(graph) == ("b", "a", "c")
    assert node_order(graph, ["c", "a", "b"]) == ("c", "a", "b")
    with pytest.raises(ValueError, match=r"missing from nodes: \['b'\]; not in the graph: \['z'\]"):
        node_order(graph, ["a", "c", "z"])
    with pytest.raises(ValueError, match=r"duplicated: \['a'\]"):
        node_order(graph, ["a", "a", "b", "c"])


def test_topological_order_breaks_ties_by_node_order():
    graph = nx.DiGraph()
    graph.add_nodes_from(["c", "a", "b", "d"])
    graph.add_edges_from([("b", "a"), ("d", "c")])
    assert topological_order(graph) == ("b", "a", "d", "c")
    with pytest.raises(CyclicGraphError, match="a -> b -> a"):
        topological_order(nx.DiGraph([("a", "b"), ("b", "a")]))


def test_ancestors_and_descendants_in_node_order():
    graph = nx.DiGraph([("c", "d"), ("a", "b"), ("b", "d"), ("d", "e")])
    assert node_order(graph) == ("c", "d", "a", "b", "e")
    assert ancestors(graph, "d") == ("c", "a", "b")
    assert descendants(graph, "a") == ("d", "b", "e")
    assert ancestors(graph, "a") == ()


def test_unknown_node_suggests_close_matches():
    graph = nx.DiGraph([("GATA1", "CEBPA"), ("SPI1", "CEBPA")])
    with pytest.raises(KeyError, match=r"Node 'GATA' is not in the graph.*Did you mean 'GATA1'"):
        ancestors(graph, "GATA")
    with pytest.raises(KeyError, match="not in the graph"):
        descendants(graph, "unrelated")


def test_swap_orientation_is_the_transpose_without_the_diagonal_and_its_own_inverse():
    drift = np.array([[-1.0, 0.0, np.nan], [0.7, -2.0, 0.0], [0.0, -0.3, -1.0]])
    swapped = swap_orientation(drift)
    # Edge j -> i of drift[i, j] sits at [j, i]; the decays leave the diagonal.
    np.testing.assert_array_equal(swapped, [[0.0, 0.7, 0.0], [0.0, 0.0, -0.3], [np.nan, 0.0, 0.0]])
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_array_equal(swap_orientation(swapped)[off], drift[off])
    with pytest.raises(ValueError, match="square"):
        swap_orientation(np.zeros((2, 3)))
