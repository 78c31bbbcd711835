"""Random gene-regulatory drifts that are stable by construction (ground truth for simulations)."""

from __future__ import annotations

import jax.numpy as jnp
import networkx as nx
import numpy as np

from causalcell.diffusion import LinearDrift, NeuralDrift

__all__ = ["random_adjacency", "random_linear_drift", "random_neural_drift"]

#: Off-diagonal weights of a cyclic graph are shrunk until each row's sum of |weights| is at
#: most this fraction of the row's decay; strict row diagonal dominance keeps every eigenvalue
#: in the left half plane (Gershgorin) and survives knockouts (principal submatrices inherit it).
_CYCLIC_DOMINANCE = 0.9


def random_adjacency(
    rng: np.random.Generator, num_genes: int, expected_parents: float, *, acyclic: bool = True
) -> np.ndarray:
    """Random sparse 0/1 adjacency ``[d, d]`` (``A[i, j] = 1`` iff ``i -> j``), no self-loops.

    Acyclic graphs draw each edge of a random topological order with probability
    ``2 * expected_parents / (d - 1)``; cyclic ones allow both directions with half that.
    """
    if num_genes < 2:
        return np.zeros((num_genes, num_genes), dtype=np.int8)
    probability = min(1.0, 2.0 * expected_parents / (num_genes - 1))
    draws = rng.random((num_genes, num_genes))
    if acyclic:
        order = rng.permutation(num_genes)
        rank = np.empty(num_genes, dtype=int)
        rank[order] = np.arange(num_genes)
        allowed = rank[:, None] < rank[None, :]
    else:
        probability /= 2.0
        allowed = ~np.eye(num_genes, dtype=bool)
    return ((draws < probability) & allowed).astype(np.int8)


def _decay(rng, num_genes, decay_range):
    low, high = decay_range
    return np.exp(rng.uniform(np.log(low), np.log(high), num_genes))


def _signed_magnitudes(rng, shape, weight_range, activation_probability):
    sign = np.where(rng.random(shape) < activation_probability, 1.0, -1.0)
    return sign * rng.uniform(*weight_range, size=shape)


def random_linear_drift(
    rng: np.random.Generator,
    mask: np.ndarray,
    baseline: np.ndarray,
    *,
    decay_range=(0.5, 2.0),
    weight_range=(0.3, 1.0),
    activation_probability: float = 0.5,
) -> LinearDrift:
    """Linear drift on a graph whose control stationary mean is exactly ``baseline``.

    ``mask`` is the graph in drift orientation (``mask[j, i] = 1`` iff ``i -> j``, see
    :func:`causalcell.graph.drift_mask`).

    The weight of edge ``i -> j`` is ``decay_j * u / sqrt(k_j)`` with ``|u|`` uniform in
    ``weight_range``, a random sign and ``k_j`` the in-degree of ``j``: an edge moves its target
    by an amount comparable to the target's own variation, while long chains and hubs do not
    amplify perturbations without bound (which would make a few genes dominate the library).
    Acyclic graphs give a triangular (hence stable) drift for any weights; cyclic graphs are
    shrunk to strict diagonal dominance. The bias is ``-A @ baseline``.
    """
    num_genes = mask.shape[0]
    decay = _decay(rng, num_genes, decay_range)
    signed = _signed_magnitudes(rng, mask.shape, weight_range, activation_probability)
    in_degree = np.maximum(mask.sum(axis=1), 1.0)
    weights = mask * signed * (decay / np.sqrt(in_degree))[:, None]
    row_sum = np.abs(weights).sum(axis=1)
    limit = _CYCLIC_DOMINANCE * decay
    if not nx.is_directed_acyclic_graph(nx.DiGraph(mask)):
        weights *= np.minimum(1.0, limit / np.maximum(row_sum, 1e-12))[:, None]
    matrix = weights - np.diag(decay)
    return LinearDrift(
        jnp.asarray(np.log(decay), jnp.float32),
        jnp.asarray(weights, jnp.float32),
        jnp.asarray(-matrix @ baseline, jnp.float32),
    )


def random_neural_drift(
    rng: np.random.Generator,
    mask: np.ndarray,
    baseline: np.ndarray,
    *,
    hidden: int = 4,
    decay_range=(0.5, 2.0),
    weight_range=(0.5, 1.5),
    input_scale: float = 1.5,
) -> NeuralDrift:
    """Nonlinear drift with a random tanh network per gene over its parents (``mask[j]``).

    Each gene's network output is scaled to ``decay_j * u`` (``|u|`` in ``weight_range``) so
    that regulation is comparable to the gene's own variation; ``input_scale`` sets how far a
    parent must move (in log-expression) to saturate it, which makes combinations of
    perturbations interact non-additively. The bias makes ``baseline`` a fixed point of the
    unperturbed, noise-free drift.
    """
    num_genes = mask.shape[0]
    decay = _decay(rng, num_genes, decay_range)
    in_degree = mask.sum(axis=1)
    width = max(int(in_degree.max(initial=0)), 1)
    # Parents first in each row (stable sort of "is not a parent"), padded with index 0.
    order = np.argsort(mask == 0, axis=1, kind="stable")[:, :width]
    parent_mask = (np.arange(width)[None, :] < in_degree[:, None]).astype(np.float32)
    parents = np.where(parent_mask > 0, order, 0).astype(np.int32)
    input_weights = rng.normal(0.0, input_scale, (num_genes, width, hidden))
    input_weights /= np.sqrt(np.maximum(in_degree, 1))[:, None, None]
    hidden_bias = rng.normal(0.0, 0.5, (num_genes, hidden))
    output = rng.normal(0.0, 1.0, (num_genes, hidden))
    output /= np.abs(output).sum(axis=1, keepdims=True)
    magnitude = _signed_magnitudes(rng, (num_genes,), weight_range, 0.5) * decay
    output *= (magnitude * (in_degree > 0))[:, None]
    drift = NeuralDrift(
        log_decay=jnp.asarray(np.log(decay), jnp.float32),
        bias=jnp.zeros(num_genes, jnp.float32),
        center=jnp.asarray(baseline, jnp.float32),
        parents=jnp.asarray(parents),
        parent_mask=jnp.asarray(parent_mask),
        input_weights=jnp.asarray(input_weights, jnp.float32),
        hidden_bias=jnp.asarray(hidden_bias, jnp.float32),
        output_weights=jnp.asarray(output, jnp.float32),
    )
    at_baseline = drift.regulation(jnp.asarray(baseline, jnp.float32))
    return drift._replace(bias=jnp.asarray(decay * baseline, jnp.float32) - at_baseline)
