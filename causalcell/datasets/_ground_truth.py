"""Rebuild the ground-truth objects stored by :func:`simulate_screen` in ``uns["simulation"]``."""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import networkx as nx
import numpy as np

from causalcell.diffusion import LinearDrift, NeuralDrift
from causalcell.graph import drift_mask, from_adjacency, graph_from_drift
from causalcell.interventions import Intervention

__all__ = ["GroundTruth", "ground_truth"]


class GroundTruth(NamedTuple):
    """The causal truth behind a simulated screen.

    Attributes
    ----------
    drift
        :class:`~causalcell.diffusion.LinearDrift` or :class:`~causalcell.diffusion.NeuralDrift`.
    sigma
        ``[d]`` diffusion scales.
    graph
        ``networkx.DiGraph`` over gene names; edge ``i -> j`` carries ``weight`` = the drift
        entry ``[j, i]`` (for neural drift, of the Jacobian at the baseline).
    conditions
        Canonical condition labels, control first.
    interventions
        :class:`~causalcell.interventions.Intervention` with one row per condition.
    stationary_means
        ``[conditions, d]`` (exact for linear drift, empirical for neural).
    """

    drift: LinearDrift | NeuralDrift
    sigma: jnp.ndarray
    graph: nx.DiGraph
    conditions: tuple[str, ...]
    interventions: Intervention
    stationary_means: np.ndarray


def ground_truth(adata) -> GroundTruth:
    """Read the ground truth of an AnnData made by :func:`simulate_screen` (also after h5ad I/O).

    Raises
    ------
    KeyError
        If ``adata.uns`` has no ``"simulation"`` entry (the data were not simulated here).
    """
    if "simulation" not in adata.uns:
        raise KeyError(
            "adata.uns has no 'simulation' entry: ground truth exists only for screens made by "
            "causalcell.datasets.simulate_screen."
        )
    stored = adata.uns["simulation"]
    fields = {name: jnp.asarray(value) for name, value in stored["drift"].items()}
    drift_class = LinearDrift if stored["drift_kind"] == "linear" else NeuralDrift
    drift = drift_class(**fields)
    genes = list(map(str, adata.var_names))
    edges = drift_mask(from_adjacency(np.asarray(stored["graph"]), genes), genes)
    graph = graph_from_drift(np.asarray(stored["drift_matrix"]) * edges, genes)
    interventions = Intervention(
        **{name: jnp.asarray(value) for name, value in stored["interventions"].items()}
    )
    return GroundTruth(
        drift=drift,
        sigma=jnp.asarray(stored["sigma"]),
        graph=graph,
        conditions=tuple(map(str, stored["conditions"])),
        interventions=interventions,
        stationary_means=np.asarray(stored["stationary_means"]),
    )
