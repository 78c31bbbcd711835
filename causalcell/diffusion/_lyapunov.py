"""Continuous Lyapunov equation ``A X + X A^T + Q = 0`` in JAX, differentiable, GPU-friendly.

The solver is the matrix-sign-function Newton iteration (Roberts 1980; Benner & Quintana-Orti
1999): for a Hurwitz ``A`` the pair ``(A_k, Q_k)`` with

    A_{k+1} = (c A_k + (c A_k)^{-1}) / 2,
    Q_{k+1} = (c Q_k + c^{-1} A_k^{-1} Q_k A_k^{-T}) / 2,

keeps ``A_k X + X A_k^T + Q_k = 0`` for the same ``X`` while ``A_k -> -I``, so
``X = Q_inf / 2``. ``c = |det A_k|^{-1/n}`` (determinant scaling) makes the first iterations
fast when eigenvalues span several orders of magnitude. Each step is one inverse, so it
runs on GPU (unlike a Schur-based Bartels-Stewart solver) and costs ``O(n^3)`` per step with
quadratic convergence (typically 6-12 steps). The inverses come from :mod:`causalcell._core.linalg`
(LAPACK LU, or Gauss-Jordan loops where jaxlib's batched CPU LAPACK calls can deadlock).

Gradients use the adjoint identity: if ``G`` solves ``A^T G + G A + Xbar = 0`` then
``Qbar = G`` and ``Abar = G X^T + G^T X``, so reverse mode costs one more Lyapunov solve.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from causalcell._core.linalg import inv, inv_and_log_abs_det

__all__ = ["UnstableDriftError", "check_stable", "solve_continuous_lyapunov", "spectral_abscissa"]

#: Upper bound on Newton steps; quadratic convergence needs far fewer for any matrix whose
#: eigenvalues are not within ~1e-6 of the imaginary axis.
_MAX_STEPS = 60


class UnstableDriftError(ValueError):
    """The drift matrix is not Hurwitz, so the diffusion has no stationary law."""


def _newton_step(state, scale: bool):
    drift, noise, _, step = state
    if scale:
        inverse, log_abs_det = inv_and_log_abs_det(drift)
        factor = jnp.exp(-log_abs_det / drift.shape[-1])
    else:
        inverse = inv(drift)
        factor = jnp.ones((), drift.dtype)
    new_drift = 0.5 * (factor * drift + inverse / factor)
    new_noise = 0.5 * (factor * noise + (inverse @ noise @ inverse.T) / factor)
    change = jnp.linalg.norm(new_drift - drift) / jnp.linalg.norm(new_drift)
    return new_drift, new_noise, change, step + 1


def _solve(drift, noise):
    dtype = jnp.result_type(drift.dtype, noise.dtype, jnp.float32)
    drift = drift.astype(dtype)
    noise = noise.astype(dtype)
    # Stop the scaled phase once the relative change is below sqrt(machine epsilon); two
    # unscaled steps then reach machine precision because convergence is quadratic.
    threshold = float(np.sqrt(np.finfo(dtype).eps))

    def keep_going(state):
        _, _, change, step = state
        return (change > threshold) & (step < _MAX_STEPS)

    state = (drift, noise, jnp.array(jnp.inf, dtype), jnp.array(0))
    state = jax.lax.while_loop(keep_going, functools.partial(_newton_step, scale=True), state)
    state = _newton_step(_newton_step(state, scale=False), scale=False)
    limit, accumulated, _, _ = state
    # For a Hurwitz matrix the iteration converges to -I; anything else means an eigenvalue
    # with non-negative real part, and the answer would be meaningless: return NaN, loudly.
    identity = jnp.eye(drift.shape[-1], dtype=dtype)
    converged = jnp.max(jnp.abs(limit + identity)) < 1e3 * jnp.finfo(dtype).eps * drift.shape[-1]
    return jnp.where(converged, 0.5 * accumulated, jnp.nan)


@jax.custom_vjp
def _lyapunov(drift, noise):
    return _solve(drift, noise)


def _lyapunov_forward(drift, noise):
    solution = _solve(drift, noise)
    return solution, (drift, solution)


def _lyapunov_backward(residuals, cotangent):
    drift, solution = residuals
    adjoint = _solve(drift.T, cotangent)
    return adjoint @ solution.T + adjoint.T @ solution, adjoint


_lyapunov.defvjp(_lyapunov_forward, _lyapunov_backward)


def solve_continuous_lyapunov(drift, noise):
    """Solve ``drift @ X + X @ drift.T + noise = 0`` for ``X``.

    Parameters
    ----------
    drift
        Hurwitz matrix ``[..., n, n]`` (every eigenvalue has a negative real part). Leading
        axes are batch axes.
    noise
        Matrix ``[..., n, n]``; for a diffusion ``dx = A x dt + S dW`` it is ``S S^T``.

    Returns
    -------
    jax.Array
        ``X`` of shape ``[..., n, n]``: the stationary covariance of ``dx = A x dt + S dW`` when
        ``noise = S S^T``. All NaN for a batch member whose ``drift`` is not Hurwitz.

    Notes
    -----
    Note the sign: scipy's ``solve_continuous_lyapunov(a, q)`` solves ``a X + X a^H = q``, so
    ``solve_continuous_lyapunov(A, Q)`` here equals scipy's with ``q = -Q``. Works under
    ``jit``, ``vmap`` and reverse-mode autodiff (adjoint Lyapunov solve).

    References
    ----------
    Roberts, J. D. (1980). Linear model reduction and solution of the algebraic Riccati equation
    by use of the sign function. International Journal of Control 32(4).
    Benner, P. & Quintana-Orti, E. S. (1999). Solving stable generalized Lyapunov equations with
    the matrix sign function. Numerical Algorithms 20.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> X = solve_continuous_lyapunov(jnp.array([[-1.0]]), jnp.array([[2.0]]))
    >>> float(X[0, 0])
    1.0
    """
    drift = jnp.asarray(drift)
    noise = jnp.asarray(noise)
    if drift.ndim < 2 or drift.shape[-1] != drift.shape[-2]:
        raise ValueError(f"drift must be square [..., n, n], got shape {drift.shape}.")
    if noise.shape[-2:] != drift.shape[-2:]:
        raise ValueError(
            f"noise has shape {noise.shape} but drift has shape {drift.shape}: "
            "their last two axes must match."
        )
    batch = jnp.broadcast_shapes(drift.shape[:-2], noise.shape[:-2])
    drift = jnp.broadcast_to(drift, (*batch, *drift.shape[-2:]))
    noise = jnp.broadcast_to(noise, (*batch, *noise.shape[-2:]))
    solver = _lyapunov
    for _ in batch:
        solver = jax.vmap(solver)
    return solver(drift, noise)


def spectral_abscissa(drift) -> np.ndarray:
    """Largest real part of the eigenvalues of ``drift`` ``[..., n, n]`` (computed on the host).

    numpy in float64 rather than ``jnp.linalg.eigvals``: this is a check on concrete values, and
    batched LAPACK calls through jaxlib 0.10's CPU runtime can deadlock
    (:mod:`causalcell._core.linalg`).
    """
    eigenvalues = np.linalg.eigvals(np.asarray(drift, dtype=np.float64))
    return eigenvalues.real.max(axis=-1)


def unstable_drift_error(
    abscissa: float, *, margin: float = 0.0, name: str = "drift", where: str = ""
) -> UnstableDriftError:
    """The :class:`UnstableDriftError` for a matrix whose spectral abscissa is ``abscissa``.

    One wording for every caller (``check_stable``, ``stationary_moments``, ``simulate_chains``):
    what is wrong (the eigenvalue), why it matters (no stationary law) and how to fix it.
    ``where`` locates the matrix in a batch, e.g. ``" (batch index 2)"``.
    """
    bound = -margin + 0.0  # + 0.0 turns -0.0 into 0.0, so the message reads ">= 0", not ">= -0"
    why = (
        "so the diffusion has no stationary law (its states grow without bound)"
        if margin == 0.0
        else f"but the required margin {margin:.4g} needs every eigenvalue below {bound:.4g}"
    )
    return UnstableDriftError(
        f"The {name} matrix{where} is not stable: its largest eigenvalue real part is "
        f"{abscissa:.4g} >= {bound:.4g}, {why}. Make the drift stable: increase the self-decay "
        "(a more negative diagonal) or shrink the off-diagonal weights, e.g. so that each row's "
        "sum of |off-diagonal| is below its decay."
    )


def check_stable(drift, *, margin: float = 0.0, name: str = "drift") -> None:
    """Raise :class:`UnstableDriftError` unless every eigenvalue has real part below ``-margin``.

    A linear diffusion ``dx = (A x + b) dt + S dW`` has a stationary law only if ``A`` is
    Hurwitz; this is the host-side (numpy, float64) check for concrete matrices.

    Parameters
    ----------
    drift
        Matrix ``[..., n, n]`` of a linear drift ``dx = A x dt``; leading axes are batch axes.
    margin
        Required distance of the spectrum from the imaginary axis.
    name
        What to call the matrix in the message.

    Raises
    ------
    ValueError
        If ``drift`` is not a square ``[..., n, n]`` array or holds NaN or infinite values.
    UnstableDriftError
        Naming the spectral abscissa (and the batch index of the first unstable matrix, with
        how many are unstable).
    """
    matrices = np.asarray(drift, dtype=np.float64)
    if matrices.ndim < 2 or matrices.shape[-1] != matrices.shape[-2]:
        raise ValueError(f"The {name} matrix must be square [..., n, n], got {matrices.shape}.")
    if not np.isfinite(matrices).all():
        raise ValueError(f"The {name} matrix holds NaN or infinite values.")
    abscissa = spectral_abscissa(matrices)
    bad = np.argwhere(np.atleast_1d(abscissa >= -margin))
    if bad.size:
        first = tuple(int(i) for i in bad[0])
        if abscissa.ndim == 0:
            where = ""
        else:
            index = first[0] if len(first) == 1 else first
            others = f", the first of {len(bad)} unstable" if len(bad) > 1 else ""
            where = f" (batch index {index}{others})"
        value = float(abscissa[first] if abscissa.ndim else abscissa)
        raise unstable_drift_error(value, margin=margin, name=name, where=where)
