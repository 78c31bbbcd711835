"""Small real datasets that ship inside installed packages (read from disk, never downloaded)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import anndata
import networkx as nx
import numpy as np
import pandas as pd

from causalcell.graph import to_adjacency

__all__ = ["krumsiek11", "krumsiek11_graph", "pbmc68k_reduced"]


def _scanpy_file(folder: str, name: str) -> Path:
    """Path of ``scanpy/<folder>/<name>`` in the installed scanpy package, without importing it."""
    spec = importlib.util.find_spec("scanpy")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The dataset file {name!r} ships with scanpy, which is not installed; install it with "
            "`pip install 'causalcell[datasets]'` (no download happens at run time)."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{folder}/{name} is not inside the installed scanpy package.")


def pbmc68k_reduced() -> anndata.AnnData:
    """700 PBMCs x 765 genes, preprocessed (scaled log-expression), as shipped with scanpy.

    ``obs["bulk_labels"]`` holds cell-type labels, ``obs["louvain"]`` clusters. ``X`` is
    scaled, not counts: register it with ``count_data=False``.

    References
    ----------
    Zheng, G. X. Y. et al. (2017). Massively parallel digital transcriptional profiling of
    single cells. Nature Communications 8.
    """
    with warnings.catch_warnings():
        # The shipped file predates current AnnData encodings; anndata converts it on read and
        # says so (FutureWarning, OldFormatWarning). Nothing for the user to act on.
        warnings.simplefilter("ignore")
        return anndata.read_h5ad(_scanpy_file("datasets", "10x_pbmc68k_reduced.h5ad"))


def krumsiek11() -> anndata.AnnData:
    """640 simulated myeloid progenitor cells x 11 transcription factors (scanpy's simulation).

    Cells come from four realisations of 160 time steps of the Krumsiek et al. (2011) Boolean
    network; ``obs["cell_type"]`` marks the last 80 steps of each realisation with its fate
    (``Mo``, ``Ery``, ``Mk``, ``Neu``) and the rest ``progenitor``, ``obs["time"]`` the step.
    ``uns["graph"]`` holds the curated regulatory graph (see :func:`krumsiek11_graph`).

    References
    ----------
    Krumsiek, J., Marr, C., Schroeder, T. & Theis, F. J. (2011). Hierarchical differentiation
    of myeloid progenitors is encoded in the transcription factor network. PLoS ONE 6(8).
    Wolf, F. A., Angerer, P. & Theis, F. J. (2018). SCANPY. Genome Biology 19.
    """
    lines = _scanpy_file("datasets", "krumsiek11.txt").read_text().splitlines()
    header = next(line for line in lines if line.startswith("# it")).split()[2:]
    table = np.loadtxt(lines, comments="#")
    time = table[:, 0].astype(int)
    fates = np.array(["Mo", "Ery", "Mk", "Neu"])
    realisation = np.arange(time.size) // 160
    late = (time % 160) >= 80
    cell_type = np.where(late, fates[np.minimum(realisation, 3)], "progenitor")
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(cell_type), "time": time},
        index=[f"cell{index}" for index in range(time.size)],
    )
    adata = anndata.AnnData(
        X=table[:, 1:].astype(np.float32), obs=obs, var=pd.DataFrame(index=header)
    )
    adata.uns["graph"] = to_adjacency(krumsiek11_graph(), header, weight="sign").astype(np.int8)
    return adata


def krumsiek11_graph() -> nx.DiGraph:
    """The curated myeloid regulatory graph of Krumsiek et al. (2011) as a ``networkx.DiGraph``.

    Edges carry ``sign`` = +1 (activation) or -1 (inhibition), read from the Boolean update
    rules that scanpy ships (``sim_models/krumsiek11.txt``; Table 1 of the paper).
    """
    graph = nx.DiGraph()
    for target, regulators in _krumsiek_rules().items():
        graph.add_node(target)
        for regulator, sign in regulators:
            graph.add_edge(regulator, target, sign=sign)
    return graph


def _krumsiek_rules() -> dict[str, list[tuple[str, int]]]:
    """Parse ``target = boolean expression`` lines into (regulator, sign) lists.

    A regulator under an odd number of ``not`` is an inhibitor (sign -1), else an activator.
    Self-regulation is dropped (the graph has no self-loops).
    """
    rules = {}
    path = _scanpy_file("sim_models", "krumsiek11.txt")
    for line in path.read_text().splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        target, expression = (part.strip() for part in line.split("=", 1))
        tokens = expression.replace("(", " ( ").replace(")", " ) ").split()
        found: dict[str, int] = {}
        _parse_group(tokens, 0, False, found)
        rules[target] = [(name, sign) for name, sign in found.items() if name != target]
    return rules


def _parse_group(tokens, position, negated, found) -> int:
    """Read operands joined by and/or until ``)`` or the end; return the next position."""
    while position < len(tokens) and tokens[position] != ")":
        if tokens[position] in ("and", "or"):
            position += 1
            continue
        position = _parse_operand(tokens, position, negated, found)
    return position


def _parse_operand(tokens, position, negated, found) -> int:
    token = tokens[position]
    if token == "not":
        return _parse_operand(tokens, position + 1, not negated, found)
    if token == "(":
        return _parse_group(tokens, position + 1, negated, found) + 1
    found.setdefault(token, -1 if negated else 1)
    return position + 1
