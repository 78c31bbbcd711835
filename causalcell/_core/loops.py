"""Cholesky factors and triangular solves as plain JAX loops, with no LAPACK call at all.

One step per column (``lax.fori_loop``, each step a vectorised update of the whole batch),
blocked from order ``2 * BLOCK`` so that most of the work runs as matrix products. They are
the fallback of :mod:`.linalg` (``CAUSALCELL_LINALG=loops``), which says why they exist; the
inverse's loop is in :mod:`.gauss_jordan`. Not differentiated directly: :mod:`.linalg` gives
them custom JVPs.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from causalcell._core.gauss_jordan import column_of, entry_of, row_of

__all__ = [
    "BLOCK",
    "blocked_cholesky",
    "blocked_forward_substitution",
    "forward_substitution",
    "nan_unless_definite",
    "right_looking_cholesky",
]


def forward_substitution(lower, rhs):
    """``L^{-1} B`` for lower-triangular ``L`` ``[..., n, n]`` (upper part ignored) and
    ``B`` ``[..., n, k]``, one row per step. Linear in ``rhs``, so JAX transposes it."""
    batch = jnp.broadcast_shapes(lower.shape[:-2], rhs.shape[:-2])
    lower = jnp.broadcast_to(lower, batch + lower.shape[-2:])
    rhs = jnp.broadcast_to(rhs, batch + rhs.shape[-2:])

    columns = jnp.arange(lower.shape[-1])

    def step(index, solution):
        row = row_of(lower, index)
        # Only the solved rows (before ``index``) enter; masking keeps whatever the unread
        # upper triangle holds (even inf or NaN) out of the sum, as LAPACK does.
        known = jnp.einsum("...j,...jk->...k", jnp.where(columns < index, row, 0.0), solution)
        value = (row_of(rhs, index) - known) / entry_of(row, index)[..., None]
        return lax.dynamic_update_index_in_dim(solution, value, index, axis=-2)

    return lax.fori_loop(0, lower.shape[-1], step, jnp.zeros_like(rhs))


#: Block size of the blocked pure loops, and the order from which they are used: below it the
#: one-column loops are as fast (and stay bit for bit as before).
BLOCK = 64


def blocked_forward_substitution(lower, rhs):
    """``L^{-1} B`` by blocks of :data:`BLOCK` rows: each block's solve is the one-row loop
    on a ``BLOCK x BLOCK`` diagonal block, after a matrix product subtracts the solved blocks
    (most of the work, at matmul speed, instead of ``n`` sequential row updates)."""
    if lower.shape[-1] < 2 * BLOCK:
        return forward_substitution(lower, rhs)
    batch = jnp.broadcast_shapes(lower.shape[:-2], rhs.shape[:-2])
    lower = jnp.broadcast_to(lower, batch + lower.shape[-2:])
    rhs = jnp.broadcast_to(rhs, batch + rhs.shape[-2:])
    blocks = []
    for start in range(0, lower.shape[-1], BLOCK):
        stop = min(start + BLOCK, lower.shape[-1])
        right = rhs[..., start:stop, :]
        if blocks:
            solved = jnp.concatenate(blocks, axis=-2)
            right = right - lower[..., start:stop, :start] @ solved
        blocks.append(forward_substitution(lower[..., start:stop, start:stop], right))
    return jnp.concatenate(blocks, axis=-2)


def right_looking_cholesky(matrix):
    """Lower Cholesky factor, one column per step: take the column of the running Schur
    complement, scale it by the square root of its pivot, subtract its outer product."""
    order = matrix.shape[-1]
    rows = jnp.arange(order)

    def step(index, carry):
        complement, factor = carry
        column = column_of(complement, index)
        pivot = jnp.sqrt(entry_of(column, index))
        column = jnp.where(rows >= index, column / pivot[..., None], 0.0)
        complement = complement - column[..., :, None] * column[..., None, :]
        return complement, lax.dynamic_update_index_in_dim(factor, column, index, axis=-1)

    _, factor = lax.fori_loop(0, order, step, (matrix, jnp.zeros_like(matrix)))
    return nan_unless_definite(factor)


def nan_unless_definite(factor):
    """As ``jnp.linalg.cholesky``: the factor of a matrix that is not positive definite (a
    non-positive or NaN pivot) is all NaN."""
    diagonal = jnp.diagonal(factor, axis1=-2, axis2=-1)
    definite = jnp.all(diagonal > 0, axis=-1)[..., None, None]
    return jnp.where(definite, factor, jnp.nan)


def blocked_cholesky(matrix):
    """Lower Cholesky factor by blocks of :data:`BLOCK` columns (right-looking): factor the
    diagonal block with the one-column loop, solve the panel below it, and update the trailing
    Schur complement by one matrix product, where most of the ``n^3 / 3`` work then runs."""
    order = matrix.shape[-1]
    if order < 2 * BLOCK:
        return right_looking_cholesky(matrix)
    columns = []
    complement = matrix
    for start in range(0, order, BLOCK):
        size = min(BLOCK, order - start)
        diagonal = right_looking_cholesky(complement[..., :size, :size])
        below = complement[..., size:, :size]
        # L21 = A21 L11^{-T}: (L11^{-1} A21^T)^T
        panel = jnp.swapaxes(forward_substitution(diagonal, jnp.swapaxes(below, -1, -2)), -1, -2)
        columns.append(
            jnp.concatenate(
                [jnp.zeros((*matrix.shape[:-2], start, size), matrix.dtype), diagonal, panel],
                axis=-2,
            )
        )
        complement = complement[..., size:, size:] - panel @ jnp.swapaxes(panel, -1, -2)
    return nan_unless_definite(jnp.concatenate(columns, axis=-1))
