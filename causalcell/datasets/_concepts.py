"""Concept-labelled cells with a known concept SCM, whose every counterfactual is known.

Each cell carries concepts (cell type, age, region, donor, batch...) drawn from a structural
causal model over a concept DAG, concept embeddings, an unexplained part, and counts. Every
exogenous variable is stored, so the true counterfactual of any cell under any concept
intervention follows exactly: the same noise, new concept values, descendants recomputed.

- Concept ``c`` with levels ``L_c`` and parents ``pa(c)``: a Gumbel-max mechanism,
  ``c = argmax_l (b_c[l] + sum_{p in pa(c)} W_pc[p, l] + g_c[l])``, ``g_c`` the cell's
  standard Gumbel noise (one per level). The Gumbel-max SCM is the usual way to give
  categorical variables counterfactuals (Oberst and Sontag 2019): an intervention on a parent
  moves a child exactly where the parent's new logits overturn the cell's own argmax.
- Embedding of concept ``c``: ``e_c = E_c[value] + s u_c``, ``u_c ~ N(0, I)`` per cell.
- Unexplained part ``h ~ N(0, I)`` per cell, independent of every concept.
- Log-rates: ``log_rate = baseline + W_2 tanh(W_1 [e, h] + b_1)``, a fixed random nonlinear
  map; counts ``~ NegativeBinomial(l exp(log_rate), theta_g)`` with library sizes ``l``.

References
----------
Pearl, J. (2009). Causality, 2nd ed., ch. 7 (abduction, action, prediction).
Oberst, M. & Sontag, D. (2019). Counterfactual off-policy evaluation with Gumbel-max
structural causal models. ICML.
Gao, S. et al. (2025). Causal disentanglement of single-cell concepts (CausCell). Nature
Communications.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import anndata
import networkx as nx
import numpy as np
import pandas as pd
from scipy import sparse

from causalcell.graph import topological_order, validate_dag

__all__ = ["DEFAULT_CONCEPTS", "ConceptTruth", "concept_truth", "simulate_concepts"]

#: Levels of each concept of the default simulation.
DEFAULT_CONCEPTS = {
    "age": ("4w", "90w"),
    "region": ("cortex", "hippocampus", "striatum"),
    "cell_type": ("neuron", "astrocyte", "oligodendrocyte"),
    "donor": ("d1", "d2", "d3", "d4"),
    "batch": ("b1", "b2"),
}
#: Edges of the default concept DAG: age and region drive cell type, donor decides batch.
DEFAULT_EDGES = (("age", "cell_type"), ("region", "cell_type"), ("donor", "batch"))
_UNS_KEY = "concept_simulation"


@dataclass(frozen=True)
class ConceptTruth:
    """The concept SCM, embeddings and decoder behind :func:`simulate_concepts`' cells.

    ``levels`` per concept; ``order``: concepts parents first; ``bias[c]`` ``[L_c]`` and
    ``weights[(p, c)]`` ``[L_p, L_c]`` of the Gumbel-max mechanisms; ``embeddings[c]``
    ``[L_c, dimension]``; ``embedding_scale``; the decoder ``w1 [D, H]``, ``b1 [H]``,
    ``w2 [H, genes]``, ``baseline [genes]``.
    """

    graph: nx.DiGraph
    levels: dict
    bias: dict
    weights: dict
    embeddings: dict
    embedding_scale: float
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    baseline: np.ndarray

    @property
    def order(self) -> tuple:
        return topological_order(self.graph)

    def concepts(self, gumbel: Mapping, fixed: Mapping | None = None) -> dict:
        """Each concept's level index per cell ``{c: [n]}`` from the cells' Gumbel noise
        ``{c: [n, L_c]}``, parents first; ``fixed`` sets concepts (``{c: [n] or index}``) by
        graph surgery (their mechanisms replaced, their descendants recomputed)."""
        fixed = dict(fixed or {})
        values = {}
        for concept in self.order:
            noise = np.asarray(gumbel[concept])
            if concept in fixed:
                values[concept] = np.broadcast_to(fixed[concept], noise.shape[:1]).astype(int)
                continue
            logits = self.bias[concept] + noise
            for parent in self.graph.predecessors(concept):
                logits = logits + self.weights[(parent, concept)][values[parent]]
            values[concept] = np.argmax(logits, axis=-1)
        return values

    def log_rates(self, values: Mapping, embedding_noise: Mapping, unexplained) -> np.ndarray:
        """``[n, genes]`` log-rates of cells with concept levels ``values``, embedding noise
        ``{c: [n, dimension]}`` and unexplained parts ``[n, k]``."""
        parts = [
            self.embeddings[concept][values[concept]]
            + self.embedding_scale * np.asarray(embedding_noise[concept])
            for concept in self.levels
        ]
        inputs = np.concatenate([*parts, np.asarray(unexplained)], axis=-1)
        return self.baseline + np.tanh(inputs @ self.w1 + self.b1) @ self.w2

    def counterfactual(self, adata: anndata.AnnData, intervention: Mapping) -> dict:
        """The true counterfactual of every cell of ``adata`` (made by
        :func:`simulate_concepts`) under ``intervention`` (``{"age": "90w"}``): the cells' own
        noise, the intervened concepts set, their descendants recomputed.

        Returns ``{"concepts": DataFrame of levels, "log_rate": [n, genes]}``.

        Raises
        ------
        KeyError
            For a concept that is not simulated.
        ValueError
            For a level that the concept does not have.
        """
        fixed = {}
        for concept, level in intervention.items():
            if concept not in self.levels:
                raise KeyError(f"No concept {concept!r}; concepts: {list(self.levels)}.")
            if level not in self.levels[concept]:
                raise ValueError(
                    f"{concept!r} has no level {level!r}; levels: {list(self.levels[concept])}."
                )
            fixed[concept] = self.levels[concept].index(level)
        gumbel, embedding_noise, unexplained = _noise_of(adata, self.levels)
        values = self.concepts(gumbel, fixed)
        frame = pd.DataFrame(
            {
                concept: pd.Categorical.from_codes(values[concept], list(self.levels[concept]))
                for concept in self.levels
            },
            index=adata.obs_names,
        )
        return {"concepts": frame, "log_rate": self.log_rates(values, embedding_noise, unexplained)}


def simulate_concepts(
    num_cells: int = 5000,
    num_genes: int = 200,
    *,
    concepts: Mapping | None = None,
    graph: nx.DiGraph | None = None,
    dimension: int = 4,
    unexplained: int = 4,
    hidden: int = 32,
    strength: float = 2.0,
    embedding_scale: float = 0.3,
    library_size: float = 2000.0,
    key: int = 0,
) -> anndata.AnnData:
    """Concept-labelled counts from a known concept SCM (module docstring), with all noise kept.

    Parameters
    ----------
    num_cells, num_genes
        Size of the data.
    concepts, graph
        Levels of each concept and the concept DAG over their names; by default
        :data:`DEFAULT_CONCEPTS` with age and region driving cell type and donor deciding batch.
    dimension, unexplained, hidden
        Size of each concept's embedding, of the unexplained part and of the decoder's hidden
        layer.
    strength
        Scale of the parents' effects on a child's logits (0: concepts independent).
    embedding_scale
        Within-level spread of the embeddings.
    library_size
        Median library size (log-normal spread 0.3).
    key
        Integer seed: the same key gives the same data.

    Returns
    -------
    anndata.AnnData
        ``X`` counts (CSR, float32); ``obs``: one categorical column per concept and
        ``size_factor``; ``layers["log_rate"]``: the true log-rates; ``obsm``:
        ``gumbel_<concept>``, ``embedding_noise_<concept>`` and ``unexplained`` (the cells'
        exogenous noise); ``uns["concept_simulation"]``: the truth, read by
        :func:`concept_truth`.

    Raises
    ------
    ValueError
        For a graph whose nodes are not the concepts, or non-positive sizes.
    causalcell.graph.CyclicGraphError
        For a cyclic graph.
    """
    levels = {
        name: tuple(map(str, values)) for name, values in (concepts or DEFAULT_CONCEPTS).items()
    }
    if graph is None:
        graph = nx.DiGraph()
        graph.add_nodes_from(levels)
        if concepts is None:
            graph.add_edges_from(DEFAULT_EDGES)
    validate_dag(graph)
    if set(graph.nodes) != set(levels):
        raise ValueError(
            f"The graph's nodes {sorted(graph.nodes)} are not the concepts {sorted(levels)}."
        )
    if min(num_cells, num_genes, dimension, hidden) < 1 or unexplained < 0:
        raise ValueError("num_cells, num_genes, dimension and hidden must be positive.")
    rng = np.random.default_rng(key)
    sizes_of = (dimension, unexplained, hidden, num_genes)
    truth = _draw_truth(rng, graph, levels, sizes_of, strength, embedding_scale)
    gumbel = {c: rng.gumbel(size=(num_cells, len(levels[c]))) for c in levels}
    embedding_noise = {c: rng.normal(size=(num_cells, dimension)) for c in levels}
    hidden_part = rng.normal(size=(num_cells, unexplained))
    values = truth.concepts(gumbel)
    log_rate = truth.log_rates(values, embedding_noise, hidden_part)
    sizes = library_size * np.exp(rng.normal(0.0, 0.3, num_cells))
    concentration = np.exp(rng.normal(np.log(5.0), 0.5, num_genes))
    mean = sizes[:, None] * np.exp(log_rate)
    counts = rng.negative_binomial(concentration, concentration / (concentration + mean))
    obs = pd.DataFrame(
        {c: pd.Categorical.from_codes(values[c], list(levels[c])) for c in levels},
        index=[f"cell{index}" for index in range(num_cells)],
    )
    obs["size_factor"] = sizes.astype(np.float32)
    adata = anndata.AnnData(
        sparse.csr_matrix(counts.astype(np.float32)),
        obs=obs,
        var=pd.DataFrame(index=[f"g{index}" for index in range(num_genes)]),
    )
    adata.layers["log_rate"] = log_rate.astype(np.float32)
    for concept in levels:
        adata.obsm[f"gumbel_{concept}"] = gumbel[concept]
        adata.obsm[f"embedding_noise_{concept}"] = embedding_noise[concept]
    adata.obsm["unexplained"] = hidden_part
    adata.uns[_UNS_KEY] = _stored(truth, concentration)
    return adata


def concept_truth(adata: anndata.AnnData) -> ConceptTruth:
    """The :class:`ConceptTruth` of an AnnData made by :func:`simulate_concepts` (also after
    an h5ad round trip).

    Raises
    ------
    KeyError
        If the data were not simulated by :func:`simulate_concepts`.
    """
    if _UNS_KEY not in adata.uns:
        raise KeyError(
            f"adata.uns has no {_UNS_KEY!r} entry: ground truth exists only for data made by "
            "causalcell.datasets.simulate_concepts."
        )
    stored = adata.uns[_UNS_KEY]
    levels = {c: tuple(map(str, stored["levels"][c])) for c in stored["concepts"]}
    graph = nx.DiGraph()
    graph.add_nodes_from(levels)
    graph.add_edges_from(zip(stored["edge_sources"], stored["edge_targets"], strict=True))
    weights = {
        (parent, child): np.asarray(stored["weights"][f"{parent}->{child}"])
        for parent, child in graph.edges
    }
    return ConceptTruth(
        graph=graph,
        levels=levels,
        bias={c: np.asarray(stored["bias"][c]) for c in levels},
        weights=weights,
        embeddings={c: np.asarray(stored["embeddings"][c]) for c in levels},
        embedding_scale=float(stored["embedding_scale"]),
        **{name: np.asarray(stored[name]) for name in ("w1", "b1", "w2", "baseline")},
    )


def _draw_truth(rng, graph, levels, sizes, strength, embedding_scale) -> ConceptTruth:
    """Mechanisms, embeddings and decoder; ``sizes``: embedding dimension, unexplained part,
    hidden layer and genes."""
    dimension, unexplained, hidden, genes = sizes
    bias = {c: rng.normal(0.0, 0.5, len(levels[c])) for c in levels}
    weights = {
        (parent, child): rng.normal(0.0, strength, (len(levels[parent]), len(levels[child])))
        for parent, child in graph.edges
    }
    embeddings = {c: rng.normal(0.0, 1.0, (len(levels[c]), dimension)) for c in levels}
    inputs = dimension * len(levels) + unexplained
    return ConceptTruth(
        graph=graph,
        levels=levels,
        bias=bias,
        weights=weights,
        embeddings=embeddings,
        embedding_scale=float(embedding_scale),
        w1=rng.normal(0.0, 1.0 / np.sqrt(inputs), (inputs, hidden)),
        b1=rng.normal(0.0, 0.3, hidden),
        w2=rng.normal(0.0, 0.8 / np.sqrt(hidden), (hidden, genes)),
        baseline=rng.normal(np.log(1e-3), 1.0, genes),
    )


def _stored(truth: ConceptTruth, concentration) -> dict:
    edges = list(truth.graph.edges)
    return {
        "concepts": list(truth.levels),
        "levels": {c: list(values) for c, values in truth.levels.items()},
        "edge_sources": [parent for parent, _ in edges],
        "edge_targets": [child for _, child in edges],
        "bias": truth.bias,
        "weights": {
            f"{parent}->{child}": value for (parent, child), value in truth.weights.items()
        },
        "embeddings": truth.embeddings,
        "embedding_scale": truth.embedding_scale,
        "w1": truth.w1,
        "b1": truth.b1,
        "w2": truth.w2,
        "baseline": truth.baseline,
        "concentration": concentration,
    }


def _noise_of(adata, levels):
    try:
        gumbel = {c: np.asarray(adata.obsm[f"gumbel_{c}"]) for c in levels}
        embedding_noise = {c: np.asarray(adata.obsm[f"embedding_noise_{c}"]) for c in levels}
        return gumbel, embedding_noise, np.asarray(adata.obsm["unexplained"])
    except KeyError as error:
        raise KeyError(
            f"The cells lack their exogenous noise (obsm {error}): pass cells of the AnnData "
            "simulate_concepts returned (a subset of its rows keeps them)."
        ) from None
