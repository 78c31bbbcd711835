"""Small dense linear algebra that cannot deadlock jaxlib 0.10's CPU runtime.

jaxlib 0.10 runs a batched LAPACK custom call (``potrf``, ``getrf``, ``trsm``, ...) through
``jax::ParallelBatchMap``: when the batch is large enough (batch times per-matrix work above
about ``2e5``) it splits the batch into one chunk per intra-op thread, queues every chunk on
the intra-op thread pool and blocks in ``BlockingCounter::Wait`` until they are done. XLA's
thunk executor runs independent thunks on that same pool, so when as many such calls run at
once as the pool has threads (two on a two-core machine), every thread waits for chunks that
no thread is free to run, and the process hangs at 0% CPU. Open-source jaxlib builds dropped
the parallel path in 0.11.1.

This module gives the few factorisations causalcell needs inside a fit. On the affected
runtime (CPU backend, ``0.10.0 <= jaxlib < 0.11.1``), at every order, they are plain JAX loops
(``lax.fori_loop`` over columns, each step a vectorised update of the whole batch), which XLA
compiles to ordinary fused kernels with no custom call; elsewhere they are the ``jnp.linalg`` /
``jax.scipy.linalg`` functions. The choice cannot depend on the batch shape: under ``vmap`` a
function sees one matrix while the primitive it emits is batched, so the pure path is taken for
single matrices too. Nor does it depend on the order: the loops run one step per column (``n``
sequential steps of ``O(batch n^2)`` work), so past about 128 columns they are slower than
LAPACK's blocked kernels (by one to two orders of magnitude at order 150), but with a cap at
128 an LCD fit of 150 coordinates took the batched LAPACK path and hung; slow is better than a
hang.

Every function supports ``jit``, ``vmap`` and forward- and reverse-mode autodiff; derivatives
come from the closed-form rules of each factorisation (custom JVPs), not from differentiating
the loops. Real matrices only. Set ``CAUSALCELL_PURE_LINALG=1`` (or ``0``) before import to
force the pure path on (or off) whatever the jaxlib version.
"""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jaxlib.version
from jax import lax

from causalcell._core.gauss_jordan import column_of, entry_of, pure_inverse, row_of

__all__ = [
    "PURE_ON_CPU",
    "cho_solve",
    "cholesky",
    "covariance_factor",
    "inv",
    "solve",
    "solve_triangular",
    "uses_pure",
]


def _version(text: str) -> tuple[int, ...]:
    """Leading numeric components of a version string, ``"0.10.2rc1"`` -> ``(0, 10, 2)``."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _pure_on_cpu() -> bool:
    forced = os.environ.get("CAUSALCELL_PURE_LINALG", "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    return (0, 10, 0) <= _version(jaxlib.version.__version__) < (0, 11, 1)


#: Whether this jaxlib's CPU LAPACK calls can deadlock, so that CPU computations use the loops
#: (decided once, at import, from the jaxlib version or ``CAUSALCELL_PURE_LINALG``).
PURE_ON_CPU = _pure_on_cpu()


def uses_pure() -> bool:
    """Whether factorisations go through the pure-JAX loops in the current setting (the
    affected jaxlib on the CPU backend, or ``CAUSALCELL_PURE_LINALG=1``)."""
    return PURE_ON_CPU and jax.default_backend() == "cpu"


def _as_real(array):
    array = jnp.asarray(array)
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


# Triangular solves -----------------------------------------------------------------------------


def _forward_substitution(lower, rhs):
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


def _blocked_forward_substitution(lower, rhs):
    """``L^{-1} B`` by blocks of :data:`BLOCK` rows: each block's solve is the one-row loop
    on a ``BLOCK x BLOCK`` diagonal block, after a matrix product subtracts the solved blocks
    (most of the work, at matmul speed, instead of ``n`` sequential row updates)."""
    if lower.shape[-1] < 2 * BLOCK:
        return _forward_substitution(lower, rhs)
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
        blocks.append(_forward_substitution(lower[..., start:stop, start:stop], right))
    return jnp.concatenate(blocks, axis=-2)


@jax.custom_jvp
def _lower_solve(lower, rhs):
    return _blocked_forward_substitution(lower, rhs)


@_lower_solve.defjvp
def _lower_solve_jvp(primals, tangents):
    lower, rhs = primals
    lower_dot, rhs_dot = tangents
    solution = _blocked_forward_substitution(lower, rhs)
    # X = L^{-1} B  =>  dX = L^{-1} (dB - dL X), with dL restricted to the part that is read.
    tangent = rhs_dot - jnp.tril(lower_dot) @ solution
    return solution, _blocked_forward_substitution(lower, tangent)


# Jitted so that calls outside jit (NumPyro traces models eagerly) compile each loop once per
# shape instead of once per call; inside an outer jit they are inlined.
_lower_solve_jit = jax.jit(_lower_solve)


def _shared_solve(matrix, rhs, lower: bool, transpose: bool):
    """:func:`solve_triangular` of one matrix (batch axes of size one) against a batch of
    right-hand sides ``[..., n, k]``, as one solve with the batch folded into the columns:
    broadcasting the matrix instead would copy it once per batch member (a shared ``[m, m]``
    posterior factor against a minibatch of cells: ``cells x m^2`` entries, and as many
    row updates)."""
    order, columns = rhs.shape[-2:]
    batch = jnp.broadcast_shapes(matrix.shape[:-2], rhs.shape[:-2])
    stacked = jnp.broadcast_to(rhs, (*batch, order, columns)).reshape(-1, order, columns)
    folded = jnp.moveaxis(stacked, 0, -2).reshape(order, -1)  # [n, batch * k]
    solution = solve_triangular(
        matrix.reshape(order, order), folded, lower=lower, transpose=transpose
    )
    return jnp.moveaxis(solution.reshape(order, -1, columns), -2, 0).reshape(
        (*batch, order, columns)
    )


def solve_triangular(matrix, rhs, *, lower: bool = True, transpose: bool = False):
    """Solve ``T X = B`` (or ``T^T X = B``) for triangular ``T``.

    Parameters
    ----------
    matrix
        Triangular ``[..., n, n]``; only its lower (``lower=True``) or upper triangle is read.
    rhs
        Right-hand sides ``[..., n, k]``; batch axes broadcast against ``matrix``'s.
    lower
        Whether ``matrix`` is lower triangular.
    transpose
        Solve with ``matrix.T`` instead.

    Returns
    -------
    jax.Array
        ``X`` ``[..., n, k]``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> solve_triangular(jnp.array([[2.0, 0.0], [1.0, 1.0]]), jnp.array([[2.0], [3.0]])).ravel()
    Array([1., 2.], dtype=float32)
    """
    matrix = _as_real(matrix)
    rhs = _as_real(rhs)
    dtype = jnp.result_type(matrix, rhs)
    matrix, rhs = matrix.astype(dtype), rhs.astype(dtype)
    if rhs.ndim > 2 and math.prod(matrix.shape[:-2]) == 1:
        return _shared_solve(matrix, rhs, lower, transpose)
    if not uses_pure():
        batch = jnp.broadcast_shapes(matrix.shape[:-2], rhs.shape[:-2])
        return jsl.solve_triangular(
            jnp.broadcast_to(matrix, batch + matrix.shape[-2:]),
            jnp.broadcast_to(rhs, batch + rhs.shape[-2:]),
            lower=lower,
            trans=1 if transpose else 0,
        )
    if transpose:
        matrix, lower = jnp.swapaxes(matrix, -1, -2), not lower
    if lower:
        return _lower_solve_jit(matrix, rhs)
    # U X = B  <=>  (J U J)(J X) = J B with J the order reversal, and J U J is lower.
    flipped = _lower_solve_jit(matrix[..., ::-1, ::-1], rhs[..., ::-1, :])
    return flipped[..., ::-1, :]


# Cholesky --------------------------------------------------------------------------------------


def _right_looking_cholesky(matrix):
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
    return _nan_unless_definite(factor)


def _nan_unless_definite(factor):
    """As ``jnp.linalg.cholesky``: the factor of a matrix that is not positive definite (a
    non-positive or NaN pivot) is all NaN."""
    diagonal = jnp.diagonal(factor, axis1=-2, axis2=-1)
    definite = jnp.all(diagonal > 0, axis=-1)[..., None, None]
    return jnp.where(definite, factor, jnp.nan)


def _blocked_cholesky(matrix):
    """Lower Cholesky factor by blocks of :data:`BLOCK` columns (right-looking): factor the
    diagonal block with the one-column loop, solve the panel below it, and update the trailing
    Schur complement by one matrix product, where most of the ``n^3 / 3`` work then runs."""
    order = matrix.shape[-1]
    if order < 2 * BLOCK:
        return _right_looking_cholesky(matrix)
    columns = []
    complement = matrix
    for start in range(0, order, BLOCK):
        size = min(BLOCK, order - start)
        diagonal = _right_looking_cholesky(complement[..., :size, :size])
        below = complement[..., size:, :size]
        # L21 = A21 L11^{-T}: (L11^{-1} A21^T)^T
        panel = jnp.swapaxes(_forward_substitution(diagonal, jnp.swapaxes(below, -1, -2)), -1, -2)
        columns.append(
            jnp.concatenate(
                [jnp.zeros((*matrix.shape[:-2], start, size), matrix.dtype), diagonal, panel],
                axis=-2,
            )
        )
        complement = complement[..., size:, size:] - panel @ jnp.swapaxes(panel, -1, -2)
    return _nan_unless_definite(jnp.concatenate(columns, axis=-1))


@jax.custom_jvp
def _pure_cholesky(matrix):
    return _blocked_cholesky(matrix)


@_pure_cholesky.defjvp
def _pure_cholesky_jvp(primals, tangents):
    (matrix,), (matrix_dot,) = primals, tangents
    factor = _blocked_cholesky(matrix)
    # A = L L^T  =>  dL = L Phi(L^{-1} dA L^{-T}), Phi = lower triangle with halved diagonal
    # (Murray 2016); dA is symmetric because cholesky symmetrizes its input first.
    half = _blocked_forward_substitution(factor, matrix_dot)
    middle = _blocked_forward_substitution(factor, jnp.swapaxes(half, -1, -2))
    phi = jnp.tril(middle) - 0.5 * jnp.eye(matrix.shape[-1], dtype=matrix.dtype) * middle
    return factor, factor @ phi


_pure_cholesky_jit = jax.jit(_pure_cholesky)


def cholesky(matrix):
    """Lower Cholesky factor ``L`` (``A = L L^T``) of symmetric positive-definite matrices.

    Parameters
    ----------
    matrix
        ``[..., n, n]``; symmetrized as ``(A + A^T) / 2`` first, as ``jnp.linalg.cholesky``.

    Returns
    -------
    jax.Array
        ``L`` ``[..., n, n]``; all NaN for a batch member that is not positive definite.

    References
    ----------
    Murray, I. (2016). Differentiation of the Cholesky decomposition. arXiv:1602.07527.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> cholesky(jnp.array([[4.0, 2.0], [2.0, 5.0]]))
    Array([[2., 0.],
           [1., 2.]], dtype=float32)
    """
    matrix = _as_real(matrix)
    if not uses_pure():
        return jnp.linalg.cholesky(matrix)
    return _pure_cholesky_jit(0.5 * (matrix + jnp.swapaxes(matrix, -1, -2)))


def cho_solve(factor_and_lower, rhs):
    """Solve ``A X = B`` given ``(c, lower)`` with ``A = c c^T`` (lower) or ``c^T c``, as
    ``jax.scipy.linalg.cho_solve``; ``rhs`` is ``[..., n, k]``."""
    factor, lower = factor_and_lower
    half = solve_triangular(factor, rhs, lower=lower, transpose=not lower)
    return solve_triangular(factor, half, lower=lower, transpose=lower)


# Inverse ---------------------------------------------------------------------------------------


def covariance_factor(precision):
    """A lower-triangular ``T`` with ``T T^T = precision^{-1}``, from one Cholesky factorisation.

    With ``J`` the order reversal and ``J P J = L L^T``, ``T = J L^{-T} J`` is lower triangular
    and ``T T^T = J L^{-T} L^{-1} J = P^{-1}``: a Cholesky factor, a triangular inverse, no
    full inverse and no second Cholesky (the route through the covariance costs about twice as
    much, and squares the condition number before its second factorisation).
    """
    precision = _as_real(precision)
    reversed_factor = cholesky(precision[..., ::-1, ::-1])
    eye = jnp.broadcast_to(jnp.eye(precision.shape[-1], dtype=precision.dtype), precision.shape)
    inverse = solve_triangular(reversed_factor, eye, lower=True)
    return jnp.swapaxes(inverse, -1, -2)[..., ::-1, ::-1]


def inv(matrix):
    """Inverse of square matrices ``[..., n, n]`` (Gauss-Jordan with partial pivoting on the
    pure path). Singular matrices give non-finite entries.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> inv(jnp.array([[0.0, 2.0], [4.0, 0.0]]))
    Array([[0.  , 0.25],
           [0.5 , 0.  ]], dtype=float32)
    """
    matrix = _as_real(matrix)
    if not uses_pure():
        return jnp.linalg.inv(matrix)
    return pure_inverse(matrix)


def solve(matrix, rhs):
    """Solve ``A X = B`` for square ``A`` ``[..., n, n]`` and ``B`` ``[..., n, k]``.

    On the pure path this is ``inv(A) @ B``: its error grows with ``cond(A)`` like a solve with
    an LU factorisation does, which is all the well-conditioned stable drifts here need.
    """
    matrix = _as_real(matrix)
    rhs = _as_real(rhs)
    if not uses_pure():
        batch = jnp.broadcast_shapes(matrix.shape[:-2], rhs.shape[:-2])
        return jnp.linalg.solve(
            jnp.broadcast_to(matrix, batch + matrix.shape[-2:]),
            jnp.broadcast_to(rhs, batch + rhs.shape[-2:]),
        )
    return pure_inverse(matrix) @ rhs
