"""Matrix inverse by Gauss-Jordan elimination as a plain JAX loop, and the dynamic slicing the
pure loops share (:mod:`causalcell._core.linalg` says why they exist and gives them JVPs)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

__all__ = ["column_of", "entry_of", "gauss_jordan", "row_of"]


def row_of(matrix, index):
    """Row ``index`` (traced) of ``matrix`` ``[..., n, k]``: ``[..., k]``."""
    return lax.dynamic_index_in_dim(matrix, index, axis=-2, keepdims=False)


def column_of(matrix, index):
    """Column ``index`` (traced) of ``matrix`` ``[..., n, k]``: ``[..., n]``."""
    return lax.dynamic_index_in_dim(matrix, index, axis=-1, keepdims=False)


def entry_of(vector, index):
    """Entry ``index`` (traced) of ``vector`` ``[..., n]``: ``[...]``."""
    return lax.dynamic_index_in_dim(vector, index, axis=-1, keepdims=False)


def _swap_rows(matrix, first, second):
    """Rows ``first`` (an int) and ``second`` (``[...]``, per batch member) exchanged."""
    rows = jnp.arange(matrix.shape[-2])[:, None]
    row_first = row_of(matrix, first)[..., None, :]
    row_second = jnp.take_along_axis(matrix, second[..., None, None], axis=-2)
    swapped = jnp.where(rows == second[..., None, None], row_first, matrix)
    return jnp.where(rows == first, row_second, swapped)


def gauss_jordan(matrix):
    """Inverse by Gauss-Jordan elimination with partial pivoting on
    ``[A | I]``: each step moves the largest remaining entry of a column onto the diagonal,
    scales its row to a unit pivot and clears the column in every other row."""
    order = matrix.shape[-1]
    rows = jnp.arange(order)

    def step(index, carry):
        reduced, inverse = carry
        candidates = jnp.where(rows >= index, jnp.abs(column_of(reduced, index)), -1.0)
        pivot_row = jnp.argmax(candidates, axis=-1)
        reduced = _swap_rows(reduced, index, pivot_row)
        inverse = _swap_rows(inverse, index, pivot_row)
        column = column_of(reduced, index)
        pivot = entry_of(column, index)[..., None]
        reduced_row = row_of(reduced, index) / pivot
        inverse_row = row_of(inverse, index) / pivot
        multipliers = jnp.where(rows == index, 0.0, column)[..., :, None]
        reduced = reduced - multipliers * reduced_row[..., None, :]
        inverse = inverse - multipliers * inverse_row[..., None, :]
        reduced = lax.dynamic_update_index_in_dim(reduced, reduced_row, index, axis=-2)
        inverse = lax.dynamic_update_index_in_dim(inverse, inverse_row, index, axis=-2)
        return reduced, inverse

    identity = jnp.broadcast_to(jnp.eye(order, dtype=matrix.dtype), matrix.shape)
    return lax.fori_loop(0, order, step, (matrix, identity))[1]
