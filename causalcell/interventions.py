"""Interventions on a diffusion's genes as arrays: one pytree, composable, jit/vmap-friendly.

An :class:`Intervention` holds one entry per gene (leading batch axes allowed, e.g. one row per
perturbation condition). The identity entries mean "not intervened":

============  ==========================================================  ========
field         effect on gene ``j``'s drift row (DESIGN 2.3)               identity
============  ==========================================================  ========
shift         ``b_j += shift_j``                                          0
knockdown     production times ``exp(knockdown_j)``: ``b_j += d_j k_j``  0
noise_scale   ``sigma_j *= noise_scale_j``                                1
knockout      row becomes ``-d_j (x_j - knockout_level_j)``               False
============  ==========================================================  ========

``d_j`` is gene ``j``'s self-decay rate. Latent ``x`` is log-expression, so multiplying a gene's
production by ``r`` (a knockdown to fraction ``r``) moves its level, with its regulators held
fixed, by ``log r``: a knockdown is stored as ``knockdown_j = log r <= 0``. A knockout replaces
the gene's regulation by a pull toward ``knockout_level_j`` at the gene's own decay rate (a
hard ``do`` when the noise is small). Combinations compose member interventions with
:func:`compose`: shifts and log-knockdowns add, noise scales multiply, knockouts win.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["INTERVENTION_KINDS", "Intervention", "compose", "from_targets"]

#: Names accepted by :func:`from_targets`.
INTERVENTION_KINDS = ("shift", "knockdown", "knockout", "noise_scale")


class Intervention(NamedTuple):
    """Per-gene intervention arrays, each of shape ``[..., genes]``. See the module docstring."""

    shift: jnp.ndarray
    knockdown: jnp.ndarray
    noise_scale: jnp.ndarray
    knockout: jnp.ndarray
    knockout_level: jnp.ndarray

    @classmethod
    def identity(cls, num_genes: int, batch_shape: tuple[int, ...] = ()) -> Intervention:
        """The "no intervention" value for ``num_genes`` genes.

        Its knockout mask is a read-only NumPy array, so it stays concrete inside ``jit``: a
        program can read which genes an intervention knocks out while it is traced (e.g. the
        rank of :func:`causalcell.diffusion.stationary_moments_of_knockouts`'s updates), where
        ``jnp.zeros`` would be a tracer there."""
        shape = (*batch_shape, num_genes)
        zeros = jnp.zeros(shape, jnp.float32)
        return cls(zeros, zeros, jnp.ones(shape, jnp.float32), _mask(np.zeros(shape, bool)), zeros)

    @property
    def num_genes(self) -> int:
        return self.shift.shape[-1]

    @property
    def targets(self) -> jnp.ndarray:
        """Boolean mask of the genes this intervention touches."""
        return (self.shift != 0) | (self.knockdown != 0) | (self.noise_scale != 1) | self.knockout


def compose(first: Intervention, second: Intervention) -> Intervention:
    """Apply both interventions (the combination ``first + second``).

    Shifts and log-knockdowns add, noise scales multiply, a knockout in either is kept (with
    ``second``'s level where both knock the gene out). Commutative except for that level.
    """
    return Intervention(
        shift=first.shift + second.shift,
        knockdown=first.knockdown + second.knockdown,
        noise_scale=first.noise_scale * second.noise_scale,
        knockout=first.knockout | second.knockout,
        knockout_level=jnp.where(second.knockout, second.knockout_level, first.knockout_level),
    )


def from_targets(
    num_genes: int,
    targets: Sequence[int],
    kind: str,
    value=None,
) -> Intervention:
    """Build an intervention of one kind on some genes.

    Parameters
    ----------
    num_genes
        Number of genes ``d``.
    targets
        Indices of the intervened genes.
    kind
        One of ``"shift"`` (value: additive change of the bias), ``"knockdown"`` (value: the
        remaining production fraction ``r`` in ``(0, 1]``), ``"knockout"`` (value: the pinned
        log-expression level) or ``"noise_scale"`` (value: a positive factor on ``sigma``).
    value
        A scalar or one value per target; may be traced (``jit``/``vmap`` over doses), in which
        case the range checks are skipped.

    Raises
    ------
    ValueError
        For an unknown kind, a target index out of range, or a value of the wrong shape or range.

    Examples
    --------
    >>> iv = from_targets(3, [1], "knockdown", 0.5)
    >>> [round(float(v), 4) for v in iv.knockdown]
    [0.0, -0.6931, 0.0]
    """
    if kind not in INTERVENTION_KINDS:
        raise ValueError(f"Unknown intervention kind {kind!r}; choose one of {INTERVENTION_KINDS}.")
    index = np.asarray(targets, dtype=int).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= num_genes):
        raise ValueError(f"Target indices {index.tolist()} are out of range for {num_genes} genes.")
    if value is None:
        raise ValueError(
            f"A {kind} intervention needs a value (see the docstring for its meaning)."
        )
    values = jnp.asarray(value, dtype=jnp.float32)
    if values.ndim > 1 or (values.ndim == 1 and values.shape[0] not in (1, index.size)):
        raise ValueError(
            f"A {kind} intervention on {index.size} target(s) needs a scalar or {index.size} "
            f"value(s), got shape {values.shape}."
        )
    values = jnp.broadcast_to(values, index.shape)
    if not isinstance(values, jax.core.Tracer):  # range checks only where values are concrete
        concrete = np.asarray(values)
        if kind == "knockdown" and np.any((concrete <= 0) | (concrete > 1)):
            raise ValueError(f"Knockdown fractions must lie in (0, 1], got {concrete.tolist()}.")
        if kind == "noise_scale" and np.any(concrete <= 0):
            raise ValueError(f"Noise scales must be positive, got {concrete.tolist()}.")
    base = Intervention.identity(num_genes)
    if kind == "shift":
        return base._replace(shift=base.shift.at[index].set(values))
    if kind == "knockdown":
        return base._replace(knockdown=base.knockdown.at[index].set(jnp.log(values)))
    if kind == "noise_scale":
        return base._replace(noise_scale=base.noise_scale.at[index].set(values))
    knocked = np.zeros(num_genes, bool)  # concrete under jit, as the identity's
    knocked[index] = True
    return base._replace(
        knockout=_mask(knocked),
        knockout_level=base.knockout_level.at[index].set(values),
    )


def _mask(array: np.ndarray) -> np.ndarray:
    """``array``, read-only: a knockout mask is a constant (as jax arrays are immutable)."""
    array.setflags(write=False)
    return array
