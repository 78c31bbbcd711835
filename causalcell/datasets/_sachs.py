"""Sachs et al. (2005): single-cell interventional flow cytometry with a consensus network,
shipped in the package (``data/README.md`` gives its provenance and licence)."""

from __future__ import annotations

from importlib import resources

import anndata
import networkx as nx
import numpy as np
import pandas as pd

from causalcell.graph import to_adjacency

__all__ = ["SACHS_CONDITIONS", "sachs", "sachs_graph"]

#: The 9 conditions in the order of the rows: (name, cells, stimulation, reagent, targeted
#: protein or None, direction of the reagent on it). Targets are the measured molecule that
#: each reagent acts on (Sachs et al. 2005, Table 1): an inhibitor of MEK targets ``pmek``, of
#: PI3K the lipid it makes (``PIP3``), of PLC-gamma's substrate ``PIP2``.
SACHS_CONDITIONS = (
    ("cd3cd28", 853, "CD3/CD28", "none", None, None),
    ("cd3cd28+icam2", 902, "CD3/CD28+ICAM-2", "none", None, None),
    ("cd3cd28+akt_inhibitor", 911, "CD3/CD28", "AKT inhibitor", "pakts473", "inhibition"),
    ("cd3cd28+g0076", 723, "CD3/CD28", "G06976", "PKC", "inhibition"),
    ("cd3cd28+psitectorigenin", 810, "CD3/CD28", "psitectorigenin", "PIP2", "inhibition"),
    ("cd3cd28+u0126", 799, "CD3/CD28", "U0126", "pmek", "inhibition"),
    ("cd3cd28+ly294002", 848, "CD3/CD28", "LY294002", "PIP3", "inhibition"),
    ("pma", 913, "PMA", "PMA", "PKC", "activation"),
    ("b2camp", 707, "b2cAMP", "b2cAMP", "PKA", "activation"),
)


def _read(name: str):
    return resources.files("causalcell.datasets").joinpath("data", name)


def sachs_graph() -> nx.DiGraph:
    """The literature consensus network of Sachs et al. (2005): 18 edges among the 11
    measured molecules (``cause -> effect``)."""
    with _read("sachs2005.csv.gz").open("rb") as file:
        genes = list(pd.read_csv(file, compression="gzip", nrows=0).columns)
    return _consensus(genes)


def _consensus(genes) -> nx.DiGraph:
    """The consensus edges over the nodes ``genes`` (the table's columns)."""
    with _read("sachs2005_consensus.csv").open("r") as file:
        edges = pd.read_csv(file)
    graph = nx.DiGraph()
    graph.add_nodes_from(genes)
    graph.add_edges_from(edges[["Cause", "Effect"]].itertuples(index=False, name=None))
    return graph


def sachs() -> anndata.AnnData:
    """7,466 T cells x 11 phosphoproteins and phospholipids in 9 conditions (Sachs et al. 2005).

    Read from a copy shipped inside causalcell (150 KB; no network). The conditions are the 9
    of the published data set, in its row order (:data:`SACHS_CONDITIONS`), checked against the
    reagents' signatures in the tests: U0126 lowers ``p44/42`` (ERK, below MEK),
    psitectorigenin lowers ``PIP2``, b2cAMP lowers ``pmek`` (PKA inhibits RAF).

    Returns
    -------
    anndata.AnnData
        ``X``: the measured intensities (float32, all at least 1); ``layers["log"]``: their
        natural log, a scale on which a Gaussian observation model is reasonable.
        ``obs["condition"]`` (the 9 names), ``obs["perturbation"]`` (the targeted molecule,
        ``"control"`` for the two conditions without a reagent; the same molecule can be
        targeted in opposite directions: ``PKC`` by G06976 and by PMA),
        ``obs["reagent"]``, ``obs["direction"]`` (``inhibition``, ``activation`` or
        ``none``), ``obs["stimulation"]`` (CD3/CD28, CD3/CD28+ICAM-2, PMA or b2cAMP).
        ``uns["consensus"]``: ``adjacency`` (``[i, j] = 1`` iff ``i -> j``, in ``var`` order) and
        ``edges`` of :func:`sachs_graph`.

    References
    ----------
    Sachs, K., Perez, O., Pe'er, D., Lauffenburger, D. A. & Nolan, G. P. (2005). Causal
    protein-signaling networks derived from multiparameter single-cell data. Science 308,
    523-529.
    """
    with _read("sachs2005.csv.gz").open("rb") as file:
        values = pd.read_csv(file, compression="gzip")
    sizes = [size for _, size, *_ in SACHS_CONDITIONS]
    if len(values) != sum(sizes):
        raise ValueError(f"The shipped Sachs data have {len(values)} rows, not {sum(sizes)}.")
    block = np.repeat(np.arange(len(SACHS_CONDITIONS)), sizes)

    def column(position, missing):
        return [missing if row[position] is None else row[position] for row in SACHS_CONDITIONS]

    obs = pd.DataFrame(
        {
            "condition": np.asarray([row[0] for row in SACHS_CONDITIONS])[block],
            "perturbation": np.asarray(column(4, "control"))[block],
            "reagent": np.asarray([row[3] for row in SACHS_CONDITIONS])[block],
            "direction": np.asarray(column(5, "none"))[block],
            "stimulation": np.asarray([row[2] for row in SACHS_CONDITIONS])[block],
        },
        index=[f"cell{index}" for index in range(len(values))],
    )
    for name in obs:
        obs[name] = pd.Categorical(obs[name], categories=list(dict.fromkeys(obs[name])))
    genes = list(values.columns)
    matrix = values.to_numpy(np.float32)
    graph = _consensus(genes)  # the table is read once
    adata = anndata.AnnData(
        X=matrix,
        obs=obs,
        var=pd.DataFrame(index=genes),
        layers={"log": np.log(matrix)},
    )
    adata.uns["consensus"] = {
        "adjacency": to_adjacency(graph, genes).astype(np.int8),
        "edges": np.asarray(list(graph.edges), dtype=object),
    }
    return adata
