"""Responses of the stationary mean to small shift interventions, from a drift (DESIGN 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from causalcell.clipr._inputs import check_target_indices
from causalcell.diffusion import check_stable

__all__ = ["linear_responses", "linearized_responses"]


def linear_responses(drift_matrices, targets) -> np.ndarray:
    """Exact responses of a linear drift to unit shifts: ``-A^{-1}[:, targets]``.

    A shift ``b_j += delta`` on gene ``j`` moves the stationary mean ``-A^{-1} b`` of
    ``dx = (A x + b) dt + sigma dW`` by ``-A^{-1} e_j delta``; column ``p`` of the result is
    that move per unit ``delta`` for gene ``targets[p]``.

    Parameters
    ----------
    drift_matrices
        Hurwitz drift ``[d, d]`` or a stack ``[S, d, d]`` (e.g. posterior draws), row =
        target (DESIGN 2.3).
    targets
        Integer indices of the shifted genes, distinct.

    Returns
    -------
    numpy.ndarray
        float64 ``[d, k]`` or ``[S, d, k]``, ready for :func:`direct_effects` /
        :func:`posterior_direct_effects`.

    Raises
    ------
    ValueError
        If the matrices are not square or not finite, or ``targets`` are not distinct indices.
    causalcell.diffusion.UnstableDriftError
        If a drift is not Hurwitz (it has no stationary law to respond).

    Examples
    --------
    >>> linear_responses([[-1.0, 0.0], [0.5, -2.0]], [0])
    array([[1.  ],
           [0.25]])
    """
    matrices = np.array(drift_matrices, dtype=np.float64, copy=True)
    if matrices.ndim not in (2, 3) or matrices.shape[-1] != matrices.shape[-2]:
        raise ValueError(f"drift_matrices must be [d, d] or [S, d, d], got shape {matrices.shape}.")
    if not np.isfinite(matrices).all():
        raise ValueError("drift_matrices contains NaN or infinite values.")
    index = check_target_indices(targets, matrices.shape[-1])
    check_stable(matrices)
    return -np.linalg.inv(matrices)[..., index]


def linearized_responses(drift_fn, reference, targets) -> np.ndarray:
    """Responses of a nonlinear drift to small shifts, by linearising at ``reference``.

    With ``J`` the Jacobian of ``drift_fn`` at ``reference`` (``jax.jacfwd``), returns
    ``-J^{-1}[:, targets]``. When ``reference`` is a stable fixed point ``x*`` of the drift
    (``drift_fn(x*) = 0``, e.g. the deterministic steady state of a fitted model), this is the
    derivative ``d x*(delta) / d delta`` of the fixed point of ``f(x) + delta e_j = 0``: the limit
    of small in-silico shift interventions. For a linear drift it equals
    :func:`linear_responses` at any reference.

    Parameters
    ----------
    drift_fn
        JAX-traceable callable ``x [d] -> [d]``, e.g. a
        :class:`causalcell.diffusion.NeuralDrift` or :class:`~causalcell.diffusion.LinearDrift`.
    reference
        Point ``[d]`` to linearise at. The Jacobian is computed in the dtype JAX gives it
        (float32 unless x64 is enabled) and inverted in float64.
    targets
        Integer indices of the shifted genes, distinct.

    Returns
    -------
    numpy.ndarray
        float64 ``[d, k]``.

    Raises
    ------
    ValueError
        If ``reference`` is not a finite vector matching the drift, or the targets are invalid.
    causalcell.diffusion.UnstableDriftError
        If ``J`` is not Hurwitz (``reference`` is not a stable fixed point's neighbourhood, and
        small shifts would not settle to a new steady state).

    Examples
    --------
    >>> from causalcell.diffusion import LinearDrift
    >>> drift = LinearDrift.from_matrix(np.array([[-1.0, 0.0], [0.5, -2.0]]), np.zeros(2))
    >>> linearized_responses(drift, np.zeros(2), [0])
    array([[1.  ],
           [0.25]])
    """
    point = jnp.asarray(reference)
    if point.ndim != 1 or not bool(jnp.all(jnp.isfinite(point))):
        raise ValueError(f"reference must be a finite vector [d], got shape {point.shape}.")
    jacobian = np.asarray(jax.jacfwd(drift_fn)(point), dtype=np.float64)
    if jacobian.shape != (point.size, point.size):
        raise ValueError(
            f"drift_fn maps a [{point.size}] reference to an output whose Jacobian has shape "
            f"{jacobian.shape}; it must map [d] -> [d]."
        )
    index = check_target_indices(targets, point.size)
    check_stable(jacobian, name="linearised drift (Jacobian)")
    return -np.linalg.inv(jacobian)[..., index]
