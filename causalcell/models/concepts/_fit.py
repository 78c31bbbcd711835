"""The set-up of a concept model's fit: the concept graph checked against the columns, the
model's data and keyword arguments, and the guide's encoder features and starting scales."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from causalcell.data import MISSING_LEVEL, concept_arrays
from causalcell.graph import validate_dag
from causalcell.inference import default_encoder_inputs
from causalcell.models.concepts._program import DECODER_SITES, MAX_COMBINATIONS
from causalcell.models.concepts._scm import ConceptSpec
from causalcell.noise import noise_model

__all__ = [
    "DECODER_POSTERIORS",
    "LOW_RANK",
    "check_sizes",
    "concept_graph",
    "encoder_inputs",
    "guide_kwargs",
    "mechanism_start",
    "missing_concepts",
    "model_data",
    "model_kwargs",
    "point_sites",
    "query_data",
    "start_scales",
]


def concept_graph(concepts, graph) -> nx.DiGraph:
    """The concept DAG, checked against ``concepts`` before any data is read."""
    if isinstance(concepts, str):
        raise ValueError(f"concepts must be a list of column names, got the string {concepts!r}.")
    concepts = list(concepts)
    if graph is None:
        graph = nx.DiGraph()
        graph.add_nodes_from(concepts)
    if not isinstance(graph, nx.DiGraph):
        raise ValueError(f"graph must be a networkx.DiGraph, got {type(graph).__name__}.")
    validate_dag(graph)
    if set(graph.nodes) != set(concepts) or len(set(concepts)) != len(concepts):
        raise ValueError(
            f"The graph's nodes {sorted(map(str, graph.nodes))} must be the concepts "
            f"{concepts}, each once; add isolated concepts with graph.add_node(name)."
        )
    return graph


def mechanism_start(labels, spec: ConceptSpec) -> dict:
    """Where the mechanisms' logit tables start: the labels' log frequencies (one pseudo-count
    per level), each parent's table the log ratio ``log P(c | p = a) - log P(c)`` (additive over
    parents, as naive Bayes). Started at zero, the tables need thousands of Adam steps to reach
    logits of a few units: 400 steps left held-out labels 1.1 nats per cell less likely than
    under the true mechanisms."""
    labels = np.asarray(labels)
    start = {}
    for concept, (name, size) in enumerate(zip(spec.names, spec.sizes, strict=True)):
        known = labels[:, concept] >= 0
        marginal = np.log(np.bincount(labels[known, concept], minlength=size) + 1.0)
        marginal = marginal - np.log(marginal.size + known.sum())
        start[spec.bias_site(name)] = (marginal - marginal.mean()).astype(np.float32)
        for parent in spec.parents[concept]:
            both = known & (labels[:, parent] >= 0)
            table = np.ones((spec.sizes[parent], size))
            np.add.at(table, (labels[both, parent], labels[both, concept]), 1.0)
            conditional = np.log(table / table.sum(axis=1, keepdims=True))
            start[spec.weight_site(spec.names[parent], name)] = (
                conditional - marginal - (conditional - marginal).mean()
            ).astype(np.float32)
    return start


def guide_kwargs(spec: ConceptSpec, settings: Mapping, log_mean, labels=None) -> dict:
    """Arguments of the :class:`causalcell.inference.AmortizedGuide` of a fit (and of its
    reload): the encoder, mean-field globals, the decoder's treatment, where the baseline and
    (given the training ``labels``) the mechanisms start."""
    decoder, hidden = settings["decoder_posterior"], settings["hidden"]
    start = {} if labels is None else mechanism_start(labels, spec)
    kwargs = {
        "encoder_inputs": encoder_inputs(spec, noise_model(settings["noise"]).is_count_model),
        "hidden": tuple(settings["encoder_hidden"]),
        "global_guide": "normal",
        "init_values": {"baseline": log_mean, **start},
        "key": settings["key"],
    }
    if decoder == "lowrank":  # every global in one low-rank Gaussian: no per-site scales
        return {**kwargs, "global_guide": "lowrank", "rank": LOW_RANK}
    return {
        **kwargs,
        "point_estimates": point_sites(decoder, hidden),
        "init_scales": start_scales(decoder, hidden),
    }


#: The decoder's posteriors ``ConceptModel.fit`` offers.
DECODER_POSTERIORS = ("laplace", "normal", "lowrank", "point")
#: Rank of the globals' guide under ``decoder_posterior="lowrank"`` (a larger rank gave the
#: same intervals, design section 4.8).
LOW_RANK = 20


def point_sites(decoder_posterior: str, hidden: int) -> tuple[str, ...]:
    """The decoder sites estimated as points (none for a Bayesian decoder)."""
    if decoder_posterior in ("normal", "laplace"):  # the Laplace readout starts from "normal"
        return ()
    return DECODER_SITES if hidden else DECODER_SITES[2:]


def start_scales(decoder_posterior: str, hidden: int) -> dict[str, float]:
    """Start a Bayesian decoder near a point estimate (posterior sd 0.001): the default start
    of 0.1 is as large as the weights' prior scale and drowns the fit's first steps in noise."""
    if decoder_posterior == "point":
        return {}
    return dict.fromkeys(DECODER_SITES if hidden else DECODER_SITES[2:], 1e-3)


def check_sizes(dimension, num_steps, unexplained, hidden, decoder_posterior) -> None:
    """Raise before any work for sizes that are not (non-negative) integers or an unknown
    decoder posterior."""
    for name, value in (("dimension", dimension), ("num_steps", num_steps)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name, value in (("unexplained", unexplained), ("hidden", hidden)):
        if not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
    if decoder_posterior not in DECODER_POSTERIORS:
        raise ValueError(
            f"decoder_posterior must be one of {DECODER_POSTERIORS}, got {decoder_posterior!r}."
        )


def model_data(labels, counts, size_factors, noise) -> dict:
    counts = np.asarray(counts, np.float32)
    sizes = np.asarray(size_factors, np.float32)
    scaled = counts / sizes[:, None] if noise.is_count_model else counts
    mean = scaled.mean(axis=0)
    log_mean = np.log(np.maximum(mean, 1e-6)) if noise.is_count_model else mean
    return {
        "labels": jnp.asarray(labels, jnp.int32),
        "counts": jnp.asarray(counts),
        "size_factors": jnp.asarray(sizes),
        "log_mean": jnp.asarray(log_mean, jnp.float32),
    }


def model_kwargs(spec: ConceptSpec, num_genes: int, settings: Mapping) -> dict:
    return {
        "spec": spec,
        "num_genes": num_genes,
        "dimension": settings["dimension"],
        "unexplained": settings["unexplained"],
        "hidden": settings["hidden"],
        "noise": noise_model(settings["noise"]),
        "own_noise": settings["concept_noise"],
        "missing": tuple(settings.get("missing", ())),
    }


def encoder_inputs(spec: ConceptSpec, count_data: bool):
    """Encoder features: log1p-normalised counts (or the values themselves, for continuous
    data) and each concept's one-hot label."""
    sizes = spec.sizes

    def inputs(data, index):
        labels = data["labels"][index]
        hots = [jax.nn.one_hot(labels[:, k], size) for k, size in enumerate(sizes)]
        values = default_encoder_inputs(data, index) if count_data else data["counts"][index]
        return jnp.concatenate([values, *hots], axis=-1)

    return inputs


def query_data(adata, spec: ConceptSpec, genes, settings: Mapping, log_mean, allow_missing=False):
    """``(data, labels)``: a fitted model's program data of the cells of ``adata`` (its genes,
    levels, layer and size factors; ``log_mean`` the fit's); cells lacking a label are refused
    unless ``allow_missing``."""
    noise = noise_model(settings["noise"])
    arrays = concept_arrays(
        adata,
        spec.names,
        layer=settings["layer"],
        size_factor_key=settings["size_factor_key"],
        levels=dict(zip(spec.names, spec.levels, strict=True)),
        genes=genes,
        count_data=noise.is_count_model,
    )
    if not allow_missing and (arrays.labels == MISSING_LEVEL).any():
        raise ValueError(
            "Every cell needs a label of every concept for this query; predict_labels "
            "gives the missing ones' probabilities."
        )
    data = model_data(arrays.labels, arrays.counts, arrays.size_factors, noise)
    data["log_mean"] = log_mean
    return data, arrays.labels


def missing_concepts(labels, names, sizes) -> tuple[int, ...]:
    """The concepts ``(index, ...)`` that some cells lack (``MISSING_LEVEL`` in ``labels``
    ``[n, K]``), checked: their joint levels, summed out per cell, are at most
    ``MAX_COMBINATIONS``."""
    missing = tuple(int(k) for k in np.flatnonzero((labels == MISSING_LEVEL).any(axis=0)))
    combinations = int(np.prod([sizes[k] for k in missing]))
    if missing and combinations > MAX_COMBINATIONS:
        raise ValueError(
            f"Cells lack labels of {[names[k] for k in missing]}: summing out their "
            f"{combinations} joint levels per cell is over {MAX_COMBINATIONS}; drop the cells "
            "without a label of the concepts with most levels (adata[adata.obs[name].notna()])."
        )
    return missing
