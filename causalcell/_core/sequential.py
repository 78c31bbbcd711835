"""LAPACK factorisations one matrix at a time, which jaxlib 0.10's CPU runtime runs inline.

jaxlib 0.10's LAPACK kernels split a *batch* of matrices into chunks, queue them on the intra-op
thread pool and block until they are done, which can deadlock (:mod:`.linalg` says how). A
batch that fits in one chunk runs inline on the calling thread, and a single matrix always
does, so a call on one ``[n, n]`` matrix never waits on the pool. Each function here takes any
leading batch axes and loops over them with :func:`jax.lax.map`, whose body is one unbatched
call. ``vmap`` would batch that body again, so each function is a
:func:`jax.custom_batching.custom_vmap` whose batching rule is the same loop over the new axis:
no transformation turns these calls into a batched one.

They are not differentiable (``custom_vmap`` has no transpose rule): :mod:`.linalg` wraps them
in custom JVPs and :func:`jax.lax.custom_linear_solve`, which call them on primal values and
on cotangents only.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

__all__ = ["cholesky", "inverse", "lower_solve"]


def _one_at_a_time(kernel):
    """``kernel`` (of ``[n, n]`` and ``[n, k]`` arrays) over the leading axes its arguments
    share, one unbatched call per batch member, under ``vmap`` too."""

    @custom_vmap
    def call(*arrays):
        batch = arrays[0].shape[:-2]
        if not batch:
            return kernel(*arrays)
        flat = tuple(array.reshape(-1, *array.shape[-2:]) for array in arrays)
        solution = lax.map(lambda members: kernel(*members), flat)
        return solution.reshape(*batch, *solution.shape[-2:])

    @call.def_vmap
    def _rule(axis_size, in_batched, *arrays):
        arrays = [
            array if batched else jnp.broadcast_to(array, (axis_size, *array.shape))
            for array, batched in zip(arrays, in_batched, strict=True)
        ]
        return call(*arrays), True

    return call


@_one_at_a_time
def cholesky(matrix):
    """Lower Cholesky factor of ``[..., n, n]`` (the lower triangle is read); all NaN for a
    member that is not positive definite."""
    return lax.linalg.cholesky(matrix, symmetrize_input=False)


def _lower_solve(lower, rhs):
    return lax.linalg.triangular_solve(lower, rhs, left_side=True, lower=True)


def _lower_transposed_solve(lower, rhs):
    return lax.linalg.triangular_solve(lower, rhs, left_side=True, lower=True, transpose_a=True)


_solvers = {False: _one_at_a_time(_lower_solve), True: _one_at_a_time(_lower_transposed_solve)}


def lower_solve(lower, rhs, *, transpose: bool = False):
    """``L^{-1} B`` (``L^{-T} B`` with ``transpose``) for lower-triangular ``L`` ``[..., n, n]``
    (its upper triangle is not read) and ``B`` ``[..., n, k]`` with the same batch axes."""
    return _solvers[transpose](lower, rhs)


@_one_at_a_time
def inverse(matrix):
    """Inverse of ``[..., n, n]`` (LU with partial pivoting)."""
    return jnp.linalg.inv(matrix)
