"""Stationary law of a linear diffusion under interventions (closed form, Gaussian)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from causalcell._core.linalg import cholesky, inv, solve
from causalcell._core.tracing import is_concrete
from causalcell.diffusion._drift import LinearDrift, intervene_linear
from causalcell.diffusion._lyapunov import (
    cayley_resolvent,
    check_stable,
    solve_continuous_lyapunov,
    solve_lyapunov_resolved,
)
from causalcell.interventions import Intervention

__all__ = [
    "sample_stationary",
    "stationary_factor",
    "stationary_mean",
    "stationary_moments",
    "stationary_moments_of_knockouts",
    "stationary_moments_of_shifts",
]


def check_linear_shapes(drift: LinearDrift, sigma, intervention: Intervention | None) -> int:
    """Check that ``drift``, ``sigma`` and ``intervention`` agree on the number of genes ``d``.

    Shapes are static, so this runs (and may raise) under ``jit`` too, at no cost to the traced
    computation; it turns a broadcasting error deep inside the solver into a message naming the
    argument. Returns ``d``.

    Raises
    ------
    ValueError
        If ``drift.weights`` is not ``[..., d, d]``, ``drift.log_decay`` not ``[..., d]``
        (``d = drift.bias.shape[-1]``), ``sigma`` does not broadcast to ``drift.bias``, or an
        ``intervention`` field's last axis is neither ``d`` nor 1.
    """
    bias_shape = np.shape(drift.bias)
    if len(bias_shape) < 1:
        raise ValueError(f"drift.bias must have shape [d], got {bias_shape}.")
    genes = bias_shape[-1]
    if np.shape(drift.weights)[-2:] != (genes, genes):
        raise ValueError(
            f"drift.weights must be square [{genes}, {genes}] to match drift.bias [{genes}], "
            f"got shape {np.shape(drift.weights)}."
        )
    if np.shape(drift.log_decay)[-1:] != (genes,):
        raise ValueError(
            f"drift.log_decay must have shape [{genes}] to match drift.bias, "
            f"got {np.shape(drift.log_decay)}."
        )
    if not _broadcasts_to(np.shape(sigma), bias_shape):
        raise ValueError(
            f"sigma has shape {np.shape(sigma)}; it must be a scalar or [{genes}] (one scale "
            "per gene)."
        )
    if intervention is not None:
        for field, value in zip(intervention._fields, intervention, strict=True):
            if np.shape(value)[-1:] not in ((), (1,), (genes,)):
                raise ValueError(
                    f"intervention.{field} has shape {np.shape(value)} but the drift has "
                    f"{genes} genes: its last axis must be {genes}."
                )
    return genes


def _broadcasts_to(shape, target) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _check_stable_if_concrete(matrix, intervention: Intervention | None) -> None:
    """:func:`check_stable` on the intervened drift matrix, only where it is concrete.

    Under ``jit``/``vmap``/``grad`` the matrix is a tracer whose values cannot be read: the
    check is skipped there (a Python ``isinstance``, so the traced computation gains no op)
    and the results come back NaN as documented.
    """
    if is_concrete(matrix):
        check_stable(matrix, name="drift" if intervention is None else "intervened drift")


def stationary_mean(drift: LinearDrift, sigma, intervention: Intervention | None = None):
    """Mean ``-A^{-1} b`` of the stationary law of the (intervened) linear diffusion.

    One linear solve, no Lyapunov equation; batched interventions give ``[..., d]``.

    Raises
    ------
    ValueError
        If the shapes of ``drift``, ``sigma`` and ``intervention`` disagree.
    UnstableDriftError
        If the arguments are concrete (not traced) and the intervened drift matrix is not
        Hurwitz: ``-A^{-1} b`` is then a fixed point, but no stationary law has it as its mean.
    """
    check_linear_shapes(drift, sigma, intervention)
    matrix, bias, _ = intervene_linear(drift, sigma, intervention)
    _check_stable_if_concrete(matrix, intervention)
    return _fixed_point(matrix, bias)


def _fixed_point(matrix, bias):
    return -solve(matrix, bias[..., None])[..., 0]


def stationary_moments(drift: LinearDrift, sigma, intervention: Intervention | None = None):
    """Mean and covariance of the stationary law of ``dx = (A x + b) dt + diag(sigma) dW``.

    ``mu = -A^{-1} b`` and ``Sigma`` solves ``A Sigma + Sigma A^T + diag(sigma^2) = 0``, with
    ``A, b, sigma`` the intervened system (:func:`causalcell.diffusion.intervene_linear`).

    Parameters
    ----------
    drift
        The linear drift.
    sigma
        ``[d]`` (or scalar) diffusion scales.
    intervention
        Optional intervention ``[..., d]``; batch axes give batched moments.

    Returns
    -------
    mean, covariance
        ``[..., d]`` and ``[..., d, d]``. Under ``jit``/``vmap``/``grad`` (inside a model) the
        covariance is NaN where the intervened drift is not stable, since traced values cannot
        be checked.

    Raises
    ------
    ValueError
        If the shapes of ``drift``, ``sigma`` and ``intervention`` disagree (checked under
        tracing too: shapes are static).
    UnstableDriftError
        A :class:`ValueError`, if the arguments are concrete (an eager call) and an intervened
        drift matrix has an eigenvalue with real part ``>= 0``: the diffusion has no stationary
        law. The message gives the eigenvalue, the batch index of the first unstable matrix and
        the fix (more self-decay or weaker regulation). Checked in float64 with numpy on the
        host before the Lyapunov solve.

    Examples
    --------
    A knocked-out regulator pins its target's input, removing the correlation:

    >>> import jax.numpy as jnp
    >>> from causalcell.interventions import from_targets
    >>> drift = LinearDrift.from_matrix(jnp.array([[-1.0, 0.0], [0.5, -1.0]]), jnp.zeros(2))
    >>> mean, cov = stationary_moments(drift, 1.0, from_targets(2, [0], "knockout", 2.0))
    >>> [round(float(v), 4) for v in mean]
    [2.0, 1.0]
    """
    check_linear_shapes(drift, sigma, intervention)
    matrix, bias, sigma = intervene_linear(drift, sigma, intervention)
    _check_stable_if_concrete(matrix, intervention)
    mean = _fixed_point(matrix, bias)
    noise = sigma[..., :, None] ** 2 * jnp.eye(drift.num_genes, dtype=matrix.dtype)
    covariance = solve_continuous_lyapunov(matrix, noise)
    return mean, 0.5 * (covariance + jnp.swapaxes(covariance, -1, -2))


def stationary_moments_of_shifts(
    drift: LinearDrift, sigma, shifts, intervention: Intervention | None = None, inverses=None
):
    """Stationary laws of conditions that differ only by shifts of the bias: one covariance.

    Shift and knockdown interventions move the bias ``b`` only (a knockdown ``k_j`` is the
    shift ``decay_j k_j``), so every such condition of a screen has the same drift matrix ``A``
    and noise, hence the same stationary covariance: one Lyapunov solve serves them all, and
    the means ``mu_p = -A^{-1} (b + s_p)`` come from one solve with ``P`` right-hand sides.
    ``stationary_moments`` on the batch of interventions solves ``P`` Lyapunov equations.

    Parameters
    ----------
    drift, sigma
        The linear drift and ``[d]`` (or scalar) diffusion scales.
    shifts
        ``[P, d]`` additions to the bias, one row per condition.
    intervention
        An optional intervention ``[d]`` applied to every condition first (knockouts, noise
        scales, shifts shared by all rows); a gene it knocks out ignores the shifts, as a
        knockout composed with a shift does.
    inverses
        Optional ``(A^{-1}, s, (s I - A)^{-1})`` of the unintervened drift (any ``s > 0``), as
        for :func:`stationary_moments_of_knockouts`: the means and the covariance then come by
        matrix products (with Woodbury updates for the shared intervention's knockouts, when
        its mask is concrete) instead of two inverses of order ``d``, which are sequential
        loops on jaxlib 0.10's CPU runtime.

    Returns
    -------
    means, covariance
        ``[P, d]`` and the shared ``[d, d]``.

    Raises
    ------
    ValueError, UnstableDriftError
        As :func:`stationary_moments` (shapes; a drift that is not stable, on concrete inputs).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> drift = LinearDrift.from_matrix(jnp.array([[-1.0, 0.0], [0.5, -1.0]]), jnp.zeros(2))
    >>> means, cov = stationary_moments_of_shifts(drift, 1.0, jnp.array([[0.0, 0.0], [1.0, 0.0]]))
    >>> [round(float(v), 4) for v in means[1]]
    [1.0, 0.5]
    """
    shifts = jnp.asarray(shifts)
    if shifts.ndim != 2 or shifts.shape[-1] != drift.num_genes:
        raise ValueError(
            f"shifts must be [conditions, {drift.num_genes}] (one row per condition), got "
            f"{shifts.shape}."
        )
    if intervention is None:
        intervention = Intervention.identity(drift.num_genes)
    if any(jnp.ndim(field) > 1 for field in intervention):
        raise ValueError("intervention must be one [d] intervention shared by every condition.")
    check_linear_shapes(drift, sigma, intervention)
    # The shifts join the shared intervention's own: intervene_linear then gives one matrix
    # (knockouts are shared), the biases [P, d] (a knocked-out gene keeps its pinned level) and
    # one sigma.
    shifted = intervention._replace(shift=intervention.shift + shifts)
    matrix, biases, sigma = intervene_linear(drift, sigma, shifted)
    _check_stable_if_concrete(matrix, intervention)
    noise = sigma[:, None] ** 2 * jnp.eye(drift.num_genes, dtype=matrix.dtype)
    # Read before any jnp call, which would make even a NumPy mask a tracer under jit.
    knocked = intervention.knockout
    if inverses is None or not is_concrete(knocked):
        means = -solve(matrix, biases.T).T
        covariance = solve_continuous_lyapunov(matrix, noise)
    else:
        knocked = np.broadcast_to(np.asarray(knocked, bool), (drift.num_genes,))[None]
        rank = int(knocked.sum())
        inverse, shift, resolvent = _updated_inverses(drift, knocked, rank, inverses)
        means = -biases @ inverse[0].T
        covariance = solve_lyapunov_resolved(matrix, noise, shift, resolvent[0])
    return means, 0.5 * (covariance + covariance.T)


def stationary_moments_of_knockouts(
    drift: LinearDrift, sigma, intervention: Intervention, rank: int, inverses=None
):
    """:func:`stationary_moments` of a batch of conditions that each knock out at most ``rank``
    genes, from one inverse for all of them instead of one per condition.

    A knockout replaces row ``j`` of the drift matrix with ``-d_j e_j``, so a condition's
    matrix is ``A_p = A + U_p V_p``: ``U_p`` the identity's columns of its knocked-out genes,
    ``V_p`` the row changes. With ``A^{-1}`` and the Cayley resolvent ``(s I - A)^{-1}`` of the
    unintervened drift, the Woodbury identity gives each condition's mean ``-A_p^{-1} b_p`` and
    resolvent through ``rank x rank`` systems, and :func:`solve_lyapunov_resolved` its
    covariance (every condition with the shift ``s`` of ``A``): ``O(P rank d^2)`` plus the
    doublings' matrix products, where :func:`stationary_moments` inverts and solves ``P``
    matrices of order ``d``, which are sequential loops on jaxlib 0.10's CPU runtime
    (:mod:`causalcell._core.linalg`). Shifts, knockdowns and noise scales act as there.

    Parameters
    ----------
    drift, sigma
        The unintervened linear drift (stable, so invertible) and ``[d]`` diffusion scales.
    intervention
        Interventions ``[P, d]``.
    rank
        Most knocked-out genes in one condition (static). A condition with more gets NaN
        moments (checked on concrete inputs with an error).
    inverses
        Optional ``(A^{-1}, s, (s I - A)^{-1})`` of the unintervened drift (any ``s > 0``), for
        a caller with a cheaper route to them than two inverses of order ``d`` (e.g. a drift
        built diagonally dominant, :func:`causalcell._core.neumann.neumann_inverse`).

    Returns
    -------
    means, covariances
        ``[P, d]`` and ``[P, d, d]``, equal to :func:`stationary_moments`'s up to rounding.

    References
    ----------
    Woodbury, M. A. (1950). Inverting modified matrices. Memorandum Report 42, Statistical
    Research Group, Princeton University.
    """
    check_linear_shapes(drift, sigma, intervention)
    if np.ndim(intervention.knockout) != 2:
        raise ValueError(
            f"intervention must be a batch [P, d], got shape {np.shape(intervention.knockout)}."
        )
    # Read before any jnp call, which would make even a NumPy mask a tracer under jit.
    if is_concrete(intervention.knockout):
        most = int(np.asarray(intervention.knockout, bool).sum(-1).max(initial=0))
        if most > rank:
            raise ValueError(
                f"a condition knocks out {most} genes, more than rank={rank}: pass a larger rank."
            )
    knocked = jnp.asarray(intervention.knockout, bool)
    matrix, biases, sigma = intervene_linear(drift, sigma, intervention)
    _check_stable_if_concrete(matrix, intervention)
    inverse, shift, resolvent = _updated_inverses(drift, knocked, rank, inverses)
    means = -jnp.einsum("pij,pj->pi", inverse, biases)
    noise = sigma[..., :, None] ** 2 * jnp.eye(drift.num_genes, dtype=matrix.dtype)
    covariance = solve_lyapunov_resolved(matrix, noise, shift, resolvent)
    valid = (knocked.sum(-1) <= rank)[:, None]
    means = jnp.where(valid, means, jnp.nan)
    covariance = jnp.where(valid[..., None], covariance, jnp.nan)
    return means, 0.5 * (covariance + jnp.swapaxes(covariance, -1, -2))


def _updated_inverses(drift: LinearDrift, knocked, rank: int, inverses=None):
    """``(A_p^{-1}, s, (s I - A_p)^{-1})`` ``[P, d, d]`` of the drifts ``A_p`` that knock out
    the genes of each row of ``knocked`` ``[P, d]`` (at most ``rank``, static), by Woodbury
    updates of the unintervened drift's ``inverses`` (computed here when None).

    A knockout replaces row ``j`` of ``A`` by ``-d_j e_j``: ``A_p = A + U_p V_p`` with ``U_p``
    the columns of the identity at the knocked-out genes and ``V_p`` the row changes, so
    ``(M + sign U V)^{-1} = M^{-1} - sign M^{-1} U (I + sign V M^{-1} U)^{-1} V M^{-1}``
    through ``rank x rank`` systems, for ``M = A`` and for ``M = s I - A`` (``sign = -1``).
    """
    base = drift.matrix()
    size = base.shape[-1]
    if inverses is None:
        inverses = (inv(base), *cayley_resolvent(base))
    inverse, shift, resolvent = inverses
    if rank == 0:  # nothing is knocked out
        batch = (*knocked.shape, size)
        return jnp.broadcast_to(inverse, batch), shift, jnp.broadcast_to(resolvent, batch)
    # Row j of U V for a knocked-out j: the pinned row minus the drift's own.
    changes = -jnp.eye(size, dtype=base.dtype) * drift.decay[:, None] - base
    # Each condition's knocked-out genes first (a stable sort), padded with genes it does not
    # knock out whose row change is zeroed: the update is then exactly that condition's.
    slots = jnp.argsort(~knocked, axis=-1, stable=True)[:, :rank]  # [P, k]
    used = jnp.take_along_axis(knocked, slots, axis=-1)
    rows = changes[slots] * used[..., None]  # V_p [P, k, d]
    identity = jnp.eye(rank, dtype=base.dtype)

    def updated(matrix_inverse, sign):
        """``(M + sign U V)^{-1}`` for every condition from ``matrix_inverse = M^{-1}``."""
        left = jnp.moveaxis(matrix_inverse[:, slots], 0, 1)  # M^{-1} U_p [P, d, k]
        capacitance = identity + sign * rows @ left
        return matrix_inverse - sign * left @ solve(capacitance, rows @ matrix_inverse)

    return updated(inverse, 1.0), shift, updated(resolvent, -1.0)


def stationary_factor(drift: LinearDrift, sigma, intervention: Intervention | None = None):
    """Stationary mean and Cholesky factor ``L`` (``Sigma = L L^T``): draws are ``mean + L z``."""
    mean, covariance = stationary_moments(drift, sigma, intervention)
    return mean, cholesky(covariance)


def sample_stationary(
    key, drift: LinearDrift, sigma, intervention: Intervention | None = None, *, num_samples: int
):
    """Exact draws ``[num_samples, d]`` from the Gaussian stationary law of a linear diffusion.

    Raises
    ------
    UnstableDriftError
        If the intervened drift is not stable (from :func:`stationary_moments`); under ``jit``
        the draws are NaN instead.
    ValueError
        If the covariance is still not finite or not positive definite (e.g. a drift within
        round-off of the imaginary axis).
    """
    mean, factor = stationary_factor(drift, sigma, intervention)
    # Outside jit, fail loudly; under jit the draws come back NaN, as the moments do.
    if not isinstance(factor, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(factor))):
        raise ValueError(
            "The stationary covariance is not finite or not positive definite: the (intervened) "
            "drift is not stable; check it with causalcell.diffusion.check_stable(drift.matrix())."
        )
    noise = jax.random.normal(key, (num_samples, drift.num_genes), factor.dtype)
    return mean + noise @ factor.T
