"""Inverses of ``I - M`` for contractions ``M`` by matrix products only (Neumann series).

On jaxlib 0.10's CPU runtime an inverse is a sequential loop of one step per column
(:mod:`causalcell._core.linalg`): 0.1 s at order 208 however small the batch. When
``||M|| <= rho < 1`` in some operator norm, ``(I - M)^{-1} = sum_k M^k`` and the partial sums
double with each squaring: ``(I - M)^{-1} = prod_{k < K} (I + M^(2^k)) + O(rho^(2^K))``, so
``K`` squarings cost ``2 (K - 1)`` matrix products at the hardware's matmul speed, on CPU and
GPU alike. The derivative is the closed-form rule ``d(I - M)^{-1} = X dM X``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["DOUBLINGS", "neumann_inverse"]

#: Squarings by default: ``2^10`` terms, so a contraction of norm up to 0.95 leaves a remainder
#: below ``0.95^1024 / 0.05 ~ 3e-22``, far under float32 rounding.
DOUBLINGS = 10


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def neumann_inverse(contraction, doublings: int = DOUBLINGS):
    """``(I - M)^{-1}`` for ``M = contraction`` ``[..., n, n]`` whose operator norm (any) is
    below one, e.g. a matrix whose absolute row sums are below one, or similar to one by a
    diagonal scaling ``S`` (the remainder then grows by ``cond(S)``, still far below float
    rounding after :data:`DOUBLINGS`). Outside that condition the result is not an inverse:
    callers guarantee it by construction.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> neumann_inverse(jnp.array([[0.0, 0.5], [0.0, 0.0]]))
    Array([[1. , 0.5],
           [0. , 1. ]], dtype=float32)
    """
    identity = jnp.eye(contraction.shape[-1], dtype=contraction.dtype)

    def square(_, state):
        power, product = state
        power = power @ power
        return power, product + product @ power  # product (I + M^(2^k))

    start = (contraction, identity + contraction)
    return lax.fori_loop(0, doublings - 1, square, start)[1]


@neumann_inverse.defjvp
def _neumann_inverse_jvp(doublings, primals, tangents):
    (contraction,), (contraction_dot,) = primals, tangents
    inverse = neumann_inverse(contraction, doublings)
    return inverse, inverse @ contraction_dot @ inverse
