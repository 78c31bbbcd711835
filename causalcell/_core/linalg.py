"""Small dense linear algebra that cannot deadlock jaxlib 0.10's CPU runtime.

jaxlib 0.10 runs a batched LAPACK custom call (``potrf``, ``getrf``, ``trsm``, ...) through
``jax::ParallelBatchMap``: when the batch is large enough (batch times per-matrix work above
about ``2e5``) it splits the batch into one chunk per intra-op thread, queues every chunk on
the intra-op thread pool and blocks in ``BlockingCounter::Wait`` until they are done. XLA's
thunk executor runs independent thunks on that same pool, so when as many such calls run at
once as the pool has threads (two on a two-core machine), every thread waits for chunks that
no thread is free to run, and the process hangs at 0% CPU. Open-source jaxlib builds dropped
the parallel path in 0.11.1.

This module gives the few factorisations causalcell needs inside a fit, by one of three
routes (:data:`MODES`), chosen once at import for the CPU backend (other backends take
LAPACK's, i.e. the vendor's, batched calls):

- ``"sequential"`` (the default on the affected runtime): LAPACK one matrix at a time
  (:mod:`.sequential`). A batch of one matrix runs inline, never on the pool, so it cannot
  hang, and it runs at LAPACK's speed (timings against the loops: design section 6).
- ``"loops"``: plain JAX loops with no custom call at all (:mod:`.loops`, :mod:`.gauss_jordan`;
  ``n`` sequential steps per factorisation, blocked from order 128), the route of every fit
  before the sequential one; kept as the fallback.
- ``"lapack"`` (every other runtime): ``jnp.linalg`` / ``jax.scipy.linalg``, batched.

The choice cannot depend on the batch shape: under ``vmap`` a function sees one matrix while
the primitive it emits is batched; the sequential route carries its own batching rule for that
reason. Every function supports ``jit``, ``vmap`` and forward- and reverse-mode autodiff;
derivatives come from the closed-form rules of each factorisation (custom JVPs, and
:func:`jax.lax.custom_linear_solve` for the sequential triangular solve, whose transpose is
the transposed solve), not from differentiating the loops or the calls. Real matrices only.
Set ``CAUSALCELL_LINALG`` to one of :data:`MODES` before import to force a route whatever the
jaxlib version.
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

from causalcell._core import sequential
from causalcell._core.gauss_jordan import gauss_jordan
from causalcell._core.loops import (
    BLOCK,
    blocked_cholesky,
    blocked_forward_substitution,
    nan_unless_definite,
)

__all__ = [
    "BLOCK",
    "CPU_MODE",
    "MODES",
    "avoids_batched_lapack",
    "cho_solve",
    "cholesky",
    "covariance_factor",
    "inv",
    "mode",
    "solve",
    "solve_triangular",
]

#: The routes of the factorisations (see the module's docstring).
MODES = ("lapack", "sequential", "loops")


def _version(text: str) -> tuple[int, ...]:
    """Leading numeric components of a version string, ``"0.10.2rc1"`` -> ``(0, 10, 2)``."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def _cpu_mode() -> str:
    forced = os.environ.get("CAUSALCELL_LINALG", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(
                f"CAUSALCELL_LINALG={forced!r} is not a route of causalcell's linear algebra; "
                f"set it to one of {MODES} or unset it."
            )
        return forced
    affected = (0, 10, 0) <= _version(jaxlib.version.__version__) < (0, 11, 1)
    return "sequential" if affected else "lapack"


#: The route on the CPU backend, decided once, at import, from the jaxlib version or
#: ``CAUSALCELL_LINALG``.
CPU_MODE = _cpu_mode()


def mode() -> str:
    """The route factorisations take in the current setting: :data:`CPU_MODE` on the CPU
    backend, ``"lapack"`` on any other."""
    return CPU_MODE if jax.default_backend() == "cpu" else "lapack"


def avoids_batched_lapack() -> bool:
    """Whether this setting must keep batched LAPACK calls out of a program (so callers route
    their factorisations through this module rather than ``jnp.linalg``)."""
    return mode() != "lapack"


def _as_real(array):
    array = jnp.asarray(array)
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


def _broadcast_batches(matrix, rhs):
    batch = jnp.broadcast_shapes(matrix.shape[:-2], rhs.shape[:-2])
    return (
        jnp.broadcast_to(matrix, batch + matrix.shape[-2:]),
        jnp.broadcast_to(rhs, batch + rhs.shape[-2:]),
    )


# Triangular solves -----------------------------------------------------------------------------


@jax.custom_jvp
def _loop_lower_solve(lower, rhs):
    return blocked_forward_substitution(lower, rhs)


@_loop_lower_solve.defjvp
def _loop_lower_solve_jvp(primals, tangents):
    lower, rhs = primals
    lower_dot, rhs_dot = tangents
    solution = blocked_forward_substitution(lower, rhs)
    # X = L^{-1} B  =>  dX = L^{-1} (dB - dL X), with dL restricted to the part that is read.
    tangent = rhs_dot - jnp.tril(lower_dot) @ solution
    return solution, blocked_forward_substitution(lower, tangent)


def _sequential_lower_solve(lower, rhs, transpose: bool):
    """``X`` with ``L X = B`` (``L^T X = B`` with ``transpose``) by one-at-a-time LAPACK solves,
    as a :func:`jax.lax.custom_linear_solve` of ``X -> tril(L) X``: JAX differentiates it in
    ``B`` and in ``L`` (``dX = op(L)^{-1} (dB - op(dL) X)``) and transposes it by the
    transposed solve, so no derivative goes through the calls themselves."""
    lower, rhs = _broadcast_batches(lower, rhs)
    read = jnp.tril(lower)
    operator = jnp.swapaxes(read, -1, -2) if transpose else read

    def solve(_, right):
        return sequential.lower_solve(lower, right, transpose=transpose)

    def transpose_solve(_, right):
        return sequential.lower_solve(lower, right, transpose=not transpose)

    return lax.custom_linear_solve(
        lambda x: operator @ x, rhs, solve=solve, transpose_solve=transpose_solve
    )


# Jitted so that calls outside jit (NumPyro traces models eagerly) compile each loop once per
# shape instead of once per call; inside an outer jit they are inlined.
_loop_lower_solve_jit = jax.jit(_loop_lower_solve)
_sequential_lower_solve_jit = jax.jit(_sequential_lower_solve, static_argnames="transpose")


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
    route = mode()
    if route == "lapack":
        matrix, rhs = _broadcast_batches(matrix, rhs)
        return jsl.solve_triangular(matrix, rhs, lower=lower, trans=1 if transpose else 0)
    if route == "sequential":
        # U X = B is L^T X = B with L = U^T, and U^T X = B is L X = B.
        if not lower:
            matrix, transpose = jnp.swapaxes(matrix, -1, -2), not transpose
        return _sequential_lower_solve_jit(matrix, rhs, transpose=transpose)
    if transpose:
        matrix, lower = jnp.swapaxes(matrix, -1, -2), not lower
    if lower:
        return _loop_lower_solve_jit(matrix, rhs)
    # U X = B  <=>  (J U J)(J X) = J B with J the order reversal, and J U J is lower.
    flipped = _loop_lower_solve_jit(matrix[..., ::-1, ::-1], rhs[..., ::-1, :])
    return flipped[..., ::-1, :]


# Cholesky --------------------------------------------------------------------------------------


def _with_jvp(kernel, tangent):
    """``kernel`` (a function of one ``[..., n, n]`` matrix) with the custom JVP
    ``tangent(value, matrix_dot)`` from the closed-form rule, at the value the function itself
    returns (so higher derivatives use the rule again); jitted so that calls outside jit
    compile once per shape."""

    @jax.custom_jvp
    def function(matrix):
        return kernel(matrix)

    @function.defjvp
    def _function_jvp(primals, tangents):
        (matrix,), (matrix_dot,) = primals, tangents
        value = function(matrix)
        return value, tangent(value, matrix_dot)

    return jax.jit(function)


def _cholesky_tangent(lower_solve):
    """The JVP of ``A = L L^T``: ``dL = L Phi(L^{-1} dA L^{-T})``, ``Phi`` the lower triangle
    with halved diagonal (Murray 2016), with ``lower_solve(L, B) = L^{-1} B`` linear in ``B``
    (so JAX transposes it). ``dA`` is symmetric because :func:`cholesky` symmetrizes its input
    first."""

    def tangent(factor, matrix_dot):
        half = lower_solve(factor, matrix_dot)
        middle = lower_solve(factor, jnp.swapaxes(half, -1, -2))
        phi = jnp.tril(middle) - 0.5 * jnp.eye(factor.shape[-1], dtype=factor.dtype) * middle
        return factor @ phi

    return tangent


def _sequential_factor(matrix):
    # LAPACK's failed factor is NaN in its lower triangle only; all NaN, as the other routes.
    return nan_unless_definite(sequential.cholesky(matrix))


_cholesky_of = {
    "loops": _with_jvp(blocked_cholesky, _cholesky_tangent(blocked_forward_substitution)),
    "sequential": _with_jvp(
        _sequential_factor,
        _cholesky_tangent(lambda lower, rhs: _sequential_lower_solve(lower, rhs, False)),
    ),
}


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
    route = mode()
    if route == "lapack":
        return jnp.linalg.cholesky(matrix)
    return _cholesky_of[route](0.5 * (matrix + jnp.swapaxes(matrix, -1, -2)))


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


def _inverse_tangent(inverse, matrix_dot):
    """The JVP of ``A^{-1}``: ``-A^{-1} dA A^{-1}``."""
    return -inverse @ matrix_dot @ inverse


_inverse_of = {
    "loops": _with_jvp(gauss_jordan, _inverse_tangent),
    "sequential": _with_jvp(sequential.inverse, _inverse_tangent),
}


def inv(matrix):
    """Inverse of square matrices ``[..., n, n]`` (LU or, on the loops' route, Gauss-Jordan,
    with partial pivoting). Singular matrices give non-finite entries.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> inv(jnp.array([[0.0, 2.0], [4.0, 0.0]]))
    Array([[0.  , 0.25],
           [0.5 , 0.  ]], dtype=float32)
    """
    matrix = _as_real(matrix)
    route = mode()
    if route == "lapack":
        return jnp.linalg.inv(matrix)
    return _inverse_of[route](matrix)


def solve(matrix, rhs):
    """Solve ``A X = B`` for square ``A`` ``[..., n, n]`` and ``B`` ``[..., n, k]``.

    Where batched LAPACK is avoided this is ``inv(A) @ B``: its error grows with ``cond(A)``
    like a solve with an LU factorisation does, which is all the well-conditioned stable drifts
    here need.
    """
    matrix = _as_real(matrix)
    rhs = _as_real(rhs)
    if mode() == "lapack":
        return jnp.linalg.solve(*_broadcast_batches(matrix, rhs))
    return inv(matrix) @ rhs
