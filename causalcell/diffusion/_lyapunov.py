"""Continuous Lyapunov equation ``A X + X A^T + Q = 0`` in JAX, differentiable, GPU-friendly.

The solver is Smith's squared iteration on the Cayley transform (Smith 1968; Penzl 1999): for a
Hurwitz ``A`` and a shift ``p > 0``, ``B = p I - A`` is invertible and the equation is the
Stein equation ``X = S X S^T + T`` with ``S = B^{-1} (p I + A)`` (spectral radius below one)
and ``T = 2 p B^{-1} Q B^{-T}``, so ``X = sum_k S^k T S^kT``. Doubling sums it:
``X <- X + S X S^T``, ``S <- S^2``, until ``S`` vanishes; each doubling adds as many terms as
there are, so ``J`` doublings sum ``2^J`` terms (typically 7-12 to float precision).

The cost is one inverse, then three matrix products per doubling: the products run at the
hardware's matmul speed on CPU and GPU alike. An earlier version used the matrix-sign Newton
iteration (Roberts 1980), one inverse per step (6-12 of them); on jaxlib 0.10's CPU runtime
inverses are plain loops (:mod:`causalcell._core.linalg`), one to two orders of magnitude
slower than a product, and the Lyapunov solves of a knockout screen dominated its fit.

Gradients use the adjoint identity: if ``G`` solves ``A^T G + G A + Xbar = 0`` then
``Qbar = G`` and ``Abar = G X^T + G^T X``, so reverse mode costs one more doubling sum (the
adjoint's Cayley transform reuses the forward inverse, transposed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from causalcell._core.linalg import inv

__all__ = [
    "UnstableDriftError",
    "cayley_resolvent",
    "cayley_shift",
    "check_stable",
    "solve_continuous_lyapunov",
    "solve_lyapunov_resolved",
    "spectral_abscissa",
]

#: Upper bound on doublings: ``2^50`` terms of the series reach float precision for any
#: Cayley transform whose spectral radius is below ``1 - 1e-13``.
_MAX_STEPS = 50


class UnstableDriftError(ValueError):
    """The drift matrix is not Hurwitz, so the diffusion has no stationary law."""


def _doubling(stein, forcing):
    """``X = sum_k S^k T S^kT`` by repeated squaring: ``X <- X + S X S^T``, ``S <- S^2``."""
    # Stop once ||S||_F < sqrt(eps): what is left of the series is then below eps ||X||.
    threshold = float(np.sqrt(np.finfo(stein.dtype).eps))

    def keep_going(state):
        power, _, step = state
        return (jnp.linalg.norm(power) > threshold) & (step < _MAX_STEPS)

    def double(state):
        power, accumulated, step = state
        return power @ power, accumulated + power @ accumulated @ power.T, step + 1

    power, accumulated, _ = jax.lax.while_loop(keep_going, double, (stein, forcing, 0))
    # For a Hurwitz drift the Cayley transform has spectral radius below one, so its powers
    # vanish; anything else means an eigenvalue with non-negative real part, and the answer
    # would be meaningless: return NaN, loudly.
    return jnp.where(jnp.linalg.norm(power) <= threshold, accumulated, jnp.nan)


def _cayley(drift):
    """``(p, (p I - A)^{-1})``: the shift of the Cayley transform and the one inverse it needs.

    ``p`` is the root-mean-square singular value ``||A||_F / sqrt(n)``, a scale of the
    spectrum: eigenvalues ``lambda`` map to ``(p + lambda) / (p - lambda)``, whose modulus is
    far from one unless ``|lambda|`` is far from ``p`` or near the imaginary axis.
    """
    shift = cayley_shift(drift)
    return shift, inv(shift * jnp.eye(drift.shape[-1], dtype=drift.dtype) - drift)


def cayley_shift(drift):
    """The solver's Cayley shift ``p = ||A||_F / sqrt(n)`` of a drift ``[n, n]`` (see
    :func:`_cayley`), for callers that build the resolvent themselves."""
    size = drift.shape[-1]
    return jnp.maximum(jnp.linalg.norm(drift) / np.sqrt(size), jnp.finfo(drift.dtype).tiny)


def _stein(drift, noise, shift, resolvent):
    """Solve the Lyapunov equation as the Stein equation ``X = S X S^T + T`` of its Cayley
    transform ``S = (p I - A)^{-1} (p I + A)``, ``T = 2 p (p I - A)^{-1} Q (p I - A)^{-T}``."""
    stein = resolvent @ (shift * jnp.eye(drift.shape[-1], dtype=drift.dtype) + drift)
    return _doubling(stein, 2.0 * shift * resolvent @ noise @ resolvent.T)


def _as_float(drift, noise):
    dtype = jnp.result_type(drift.dtype, noise.dtype, jnp.float32)
    return drift.astype(dtype), noise.astype(dtype)


def _lyapunov(drift, noise):
    drift, noise = _as_float(drift, noise)
    # The solution does not depend on the shift or on how the resolvent was computed, so
    # neither is differentiated (the adjoint below is the whole derivative).
    shift, resolvent = jax.lax.stop_gradient(_cayley(drift))
    return _resolved(drift, noise, shift, resolvent)


@jax.custom_vjp
def _resolved(drift, noise, shift, resolvent):
    """The Lyapunov solution given the Cayley shift ``p`` and resolvent ``(p I - A)^{-1}``."""
    return _resolved_forward(drift, noise, shift, resolvent)[0]


def _resolved_forward(drift, noise, shift, resolvent):
    solution = _stein(drift, noise, shift, resolvent)
    return solution, (drift, solution, shift, resolvent)


def _resolved_backward(residuals, cotangent):
    drift, solution, shift, resolvent = residuals
    # The adjoint equation has drift A^T: same shift, transposed resolvent (no new inverse).
    adjoint = _stein(drift.T, cotangent.astype(drift.dtype), shift, resolvent.T)
    drift_bar = adjoint @ solution.T + adjoint.T @ solution
    return drift_bar, adjoint, jnp.zeros_like(shift), jnp.zeros_like(resolvent)


_resolved.defvjp(_resolved_forward, _resolved_backward)


def cayley_resolvent(drift):
    """``(p, (p I - A)^{-1})`` for a drift ``[n, n]``: the Cayley shift the solver takes and
    the one inverse it needs (for :func:`solve_lyapunov_resolved`)."""
    return _cayley(jnp.asarray(drift))


def solve_lyapunov_resolved(drift, noise, shift, resolvent):
    """:func:`solve_continuous_lyapunov` given a shift ``p > 0`` and the resolvent
    ``(p I - drift)^{-1}`` ``[..., n, n]``, computed by the caller (e.g. by low-rank updates of
    one inverse for many drifts that differ in a few rows). Any ``p > 0`` converges for a
    Hurwitz drift. Neither ``p`` nor the resolvent is differentiated: the solution does not
    depend on them, and its derivative in ``drift`` and ``noise`` is the adjoint solve."""
    drift, noise = _as_float(jnp.asarray(drift), jnp.asarray(noise))
    shift, resolvent = jax.lax.stop_gradient(
        (jnp.asarray(shift, drift.dtype), jnp.asarray(resolvent, drift.dtype))
    )
    return _batched(_resolved, (drift, 2), (noise, 2), (shift, 0), (resolvent, 2))


def _batched(solver, *arguments):
    """``solver`` mapped over the leading axes of its arguments, given as ``(array, rank)``
    pairs (``rank`` trailing axes belong to one problem), broadcast against each other."""
    batch = jnp.broadcast_shapes(*(value.shape[: value.ndim - rank] for value, rank in arguments))
    arrays = [
        jnp.broadcast_to(value, (*batch, *value.shape[value.ndim - rank :]))
        for value, rank in arguments
    ]
    for _ in batch:
        solver = jax.vmap(solver)
    return solver(*arrays)


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
    Smith, R. A. (1968). Matrix equation XA + BX = C. SIAM Journal on Applied Mathematics 16(1).
    Penzl, T. (1999). A cyclic low-rank Smith method for large sparse Lyapunov equations. SIAM
    Journal on Scientific Computing 21(4).

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
    return _batched(_lyapunov, (drift, 2), (noise, 2))


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
