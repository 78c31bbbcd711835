"""Drift functions ``f(x)`` of ``dx = f(x) dt + diag(sigma) dW`` and how interventions act on them.

Orientation (DESIGN 2.3): ``drift.matrix()[i, j]`` is the effect of gene ``j`` on gene ``i``
(row = target), the transpose of the graph adjacency of :mod:`causalcell.graph`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from causalcell.interventions import Intervention

__all__ = ["LinearDrift", "NeuralDrift", "intervene", "intervene_linear"]


class LinearDrift(NamedTuple):
    """Linear drift ``f(x) = A x + b`` with ``A = -diag(exp(log_decay)) + weights`` (off-diagonal).

    Attributes
    ----------
    log_decay
        ``[d]`` log self-decay rates ``a`` (the diagonal of ``A`` is ``-exp(a)``).
    weights
        ``[d, d]`` regulation weights, row = target; the diagonal is ignored.
    bias
        ``[d]`` basal production ``b``.
    """

    log_decay: jnp.ndarray
    weights: jnp.ndarray
    bias: jnp.ndarray

    @classmethod
    def from_matrix(cls, matrix, bias) -> LinearDrift:
        """Split a drift matrix with a negative diagonal into decay and weights."""
        matrix = jnp.asarray(matrix)
        diagonal = jnp.diagonal(matrix, axis1=-2, axis2=-1)
        if not isinstance(diagonal, jax.core.Tracer) and np.any(np.asarray(diagonal) >= 0):
            raise ValueError(
                "A linear drift needs a negative diagonal (self-decay); got diagonal "
                f"{np.asarray(diagonal).tolist()}."
            )
        off_diagonal = matrix * (1.0 - jnp.eye(matrix.shape[-1], dtype=matrix.dtype))
        return cls(jnp.log(-diagonal), off_diagonal, jnp.asarray(bias, matrix.dtype))

    @property
    def decay(self) -> jnp.ndarray:
        return jnp.exp(self.log_decay)

    @property
    def num_genes(self) -> int:
        return self.bias.shape[-1]

    def matrix(self) -> jnp.ndarray:
        """The drift matrix ``A`` ``[d, d]``."""
        eye = jnp.eye(self.num_genes, dtype=self.weights.dtype)
        return self.weights * (1.0 - eye) - eye * self.decay[..., None, :]

    def __call__(self, x):
        return x @ jnp.swapaxes(self.matrix(), -1, -2) + self.bias


class NeuralDrift(NamedTuple):
    """Nonlinear drift ``f_j(x) = -exp(a_j) x_j + b_j + MLP_j(x_{parents(j)} - center)``.

    Each gene has its own one-hidden-layer tanh network over its (at most ``K``) parents,
    gathered by index, so memory is ``O(d K H)`` rather than ``O(d^2 H)``. The networks are
    bounded (``|MLP_j| <= sum_h |output_weights[j, h]|``), so the linear decay dominates far from
    the origin and the diffusion has a stationary law for any weights.

    Attributes
    ----------
    log_decay, bias, center
        ``[d]``: log self-decay, basal production, and the reference level subtracted from the
        parents' values before the networks see them.
    parents
        ``[d, K]`` int indices of each gene's parents (padding entries point anywhere).
    parent_mask
        ``[d, K]`` 1.0 for a real parent, 0.0 for padding.
    input_weights, hidden_bias, output_weights
        ``[d, K, H]``, ``[d, H]``, ``[d, H]`` network parameters.
    """

    log_decay: jnp.ndarray
    bias: jnp.ndarray
    center: jnp.ndarray
    parents: jnp.ndarray
    parent_mask: jnp.ndarray
    input_weights: jnp.ndarray
    hidden_bias: jnp.ndarray
    output_weights: jnp.ndarray

    @property
    def decay(self) -> jnp.ndarray:
        return jnp.exp(self.log_decay)

    @property
    def num_genes(self) -> int:
        return self.bias.shape[-1]

    def regulation(self, x):
        """The network part ``MLP_j(x_{parents(j)} - center)`` for ``x`` of shape ``[..., d]``."""
        inputs = (x - self.center)[..., self.parents] * self.parent_mask
        hidden = jnp.tanh(
            jnp.einsum("...jk,jkh->...jh", inputs, self.input_weights) + self.hidden_bias
        )
        return jnp.einsum("...jh,jh->...j", hidden, self.output_weights)

    def __call__(self, x):
        return -self.decay * x + self.bias + self.regulation(x)

    def linearize(self, at) -> LinearDrift:
        """First-order Taylor expansion ``f(x) ~ f(at) + J (x - at)`` as a :class:`LinearDrift`."""
        jacobian = jax.jacfwd(self.__call__)(at)
        bias = self(at) - jacobian @ at
        return LinearDrift.from_matrix(jacobian, bias)


def intervene(drift, intervention: Intervention | None):
    """Return the vector field ``x -> f(x; intervention)`` of any drift with a ``decay``.

    Works for :class:`LinearDrift`, :class:`NeuralDrift` and any callable drift with a ``decay``
    attribute; ``intervention`` fields broadcast against ``x`` (one row per chain is fine).
    """
    if intervention is None:
        return drift

    def field(x):
        natural = drift(x) + intervention.shift + drift.decay * intervention.knockdown
        pinned = -drift.decay * (x - intervention.knockout_level)
        return jnp.where(intervention.knockout, pinned, natural)

    return field


def intervene_linear(drift: LinearDrift, sigma, intervention: Intervention | None):
    """The intervened linear system: ``(matrix, bias, sigma)`` after ``intervention``.

    Same semantics as :func:`intervene`, written on the matrix so the stationary law stays in
    closed form. Batched interventions (``[..., d]``) give batched outputs.
    """
    matrix = drift.matrix()
    sigma = jnp.broadcast_to(jnp.asarray(sigma, matrix.dtype), drift.bias.shape)
    if intervention is None:
        return matrix, drift.bias, sigma
    decay = drift.decay
    knockout = intervention.knockout
    pinned_row = -jnp.eye(drift.num_genes, dtype=matrix.dtype) * decay[:, None]
    matrix = jnp.where(knockout[..., :, None], pinned_row, matrix)
    bias = jnp.where(
        knockout,
        decay * intervention.knockout_level,
        drift.bias + intervention.shift + decay * intervention.knockdown,
    )
    return matrix, bias, sigma * intervention.noise_scale
