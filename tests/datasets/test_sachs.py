"""The shipped Sachs et al. (2005) data: shape, condition blocks, consensus graph, and the
reagents' signatures that fix the order of the condition blocks."""

import gzip
import hashlib
from importlib import resources

import numpy as np
import pytest

from causalcell.data import register
from causalcell.datasets import SACHS_CONDITIONS, sachs, sachs_graph


@pytest.fixture(scope="module")
def data():
    return sachs()


def _median_log_change(data, condition, protein, reference="cd3cd28"):
    log = data[:, protein].layers["log"].ravel()
    labels = data.obs["condition"].to_numpy()
    return float(np.median(log[labels == condition]) - np.median(log[labels == reference]))


def test_the_shipped_file_is_the_published_table():
    packed = resources.files("causalcell.datasets").joinpath("data", "sachs2005.csv.gz")
    with packed.open("rb") as file:
        digest = hashlib.sha256(gzip.decompress(file.read())).hexdigest()
    # The SHA-256 of cdt 0.6.0's cyto_full_data.csv, recorded in data/README.md.
    assert digest == "fc331dcd0bc1d8765986b88cd1d23dd5a3f52e4ffc299fdf96de9d522ddf01aa"


def test_cells_conditions_and_graph(data):
    assert data.shape == (7466, 11)
    counts = data.obs["condition"].value_counts()
    assert [counts[name] for name, *_ in SACHS_CONDITIONS] == [
        853,
        902,
        911,
        723,
        810,
        799,
        848,
        913,
        707,
    ]
    assert (data.X >= 1).all() and np.allclose(data.layers["log"], np.log(data.X))
    graph = sachs_graph()
    assert graph.number_of_edges() == 18 and set(graph) == set(data.var_names)
    adjacency = data.uns["consensus"]["adjacency"]
    genes = list(data.var_names)
    for cause, effect in graph.edges:
        assert adjacency[genes.index(cause), genes.index(effect)] == 1
    assert adjacency.sum() == 18
    # Two reagents act on PKC in opposite directions; the labels name the molecule only.
    pkc = data.obs[data.obs["perturbation"] == "PKC"]
    assert set(pkc["reagent"]) == {"G06976", "PMA"}
    assert set(pkc["direction"]) == {"inhibition", "activation"}
    registry = register(data, count_data=False)
    assert set(registry.targets) == {"pmek", "PIP2", "PIP3", "pakts473", "PKA", "PKC"}


def test_the_reagents_signatures_match_the_condition_order(data):
    # Each inhibitor lowers what sits at or below its target, by several times the spread of
    # the other conditions' median changes (about 0.5 in log): these fix the block order.
    assert _median_log_change(data, "cd3cd28+u0126", "p44/42") < -1.0  # MEK -> ERK
    assert _median_log_change(data, "cd3cd28+psitectorigenin", "PIP2") < -2.0
    assert _median_log_change(data, "b2camp", "pmek") < -2.0  # PKA -| RAF -> MEK
