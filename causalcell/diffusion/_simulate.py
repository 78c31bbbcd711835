"""Simulate many chains of ``dx = f(x) dt + diag(sigma) dW`` in parallel with diffrax."""

from __future__ import annotations

import math

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np

from causalcell._core.tracing import is_concrete
from causalcell.diffusion._drift import LinearDrift, intervene, intervene_linear
from causalcell.diffusion._lyapunov import (
    UnstableDriftError,
    spectral_abscissa,
    unstable_drift_error,
)
from causalcell.diffusion._stationary import check_linear_shapes
from causalcell.interventions import Intervention

__all__ = ["simulate_chains"]

#: A chain state beyond this magnitude has diverged: far above any expression scale (raw counts
#: reach ~1e6, log-expression ~20) yet below where float32 squares overflow (~1.8e19), so the
#: draws could not even be summarised.
BLOWUP_LIMIT = 1e12


def _check_shapes(drift, sigma, initial, intervention: Intervention | None) -> None:
    """Static shape checks (they add nothing to a traced computation)."""
    if initial.ndim != 2:
        raise ValueError(f"initial must have shape [chains, genes], got {initial.shape}.")
    genes = initial.shape[-1]
    if isinstance(drift, LinearDrift):
        check_linear_shapes(drift, sigma, intervention)
    number = getattr(drift, "num_genes", None)
    if isinstance(number, int) and number != genes:
        raise ValueError(f"The drift has {number} genes but initial has {genes} ([chains, genes]).")
    if np.broadcast_shapes(np.shape(sigma), (1,)) not in ((1,), (genes,)):
        raise ValueError(f"sigma has shape {np.shape(sigma)}; it must be a scalar or [{genes}].")
    if intervention is not None:
        for field, value in zip(intervention._fields, intervention, strict=True):
            try:
                fits = np.broadcast_shapes(np.shape(value), initial.shape) == initial.shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(
                    f"intervention.{field} has shape {np.shape(value)}; it must be [{genes}] "
                    f"(all chains) or {list(initial.shape)} (one row per chain)."
                )


def _check_linear_stable(drift: LinearDrift, intervention: Intervention | None, chains: int):
    """Hurwitz check of a concrete linear drift under each chain's knockouts, before simulating.

    Only knockouts change the drift matrix, so the check runs once per distinct knockout
    pattern (the matrices of :func:`intervene_linear`, evaluated at once), not once per chain;
    eigenvalues in host numpy, float64. Nothing is added even where this runs while a ``jit``
    is being traced.
    """
    genes = drift.num_genes
    if intervention is None:
        patterns, first_chain = np.zeros((1, genes), bool), np.zeros(1, int)
    else:
        knockout = np.broadcast_to(np.asarray(intervention.knockout, bool), (chains, genes))
        patterns, first_chain = np.unique(knockout, axis=0, return_index=True)
        order = np.argsort(first_chain)
        patterns, first_chain = patterns[order], first_chain[order]
    with jax.ensure_compile_time_eval():  # concrete even while a jit is traced: no ops added
        pinned = Intervention.identity(genes, (len(patterns),))._replace(knockout=patterns)
        matrices, _, _ = intervene_linear(drift, 1.0, pinned)
    abscissa = spectral_abscissa(matrices)
    bad = np.flatnonzero(abscissa >= 0.0)
    if bad.size:
        chain = int(first_chain[bad[0]])
        where = "" if len(patterns) == 1 else f" (of chain {chain}, the first unstable one)"
        name = "drift" if intervention is None else "intervened drift"
        raise unstable_drift_error(float(abscissa[bad[0]]), name=name, where=where)


def _check_finite(draws, drift, dt: float, times, *, stable: bool) -> None:
    """Raise if concrete draws ``[chains, samples, d]`` are non-finite or astronomically large.

    ``stable``: the drift passed the Hurwitz check, so only the step size can be to blame.
    """
    values = np.asarray(draws)
    diverged = ~np.isfinite(values) | (np.abs(values) > BLOWUP_LIMIT)
    if not diverged.any():
        return
    chain, sample, _ = (int(i) for i in np.argwhere(diverged)[0])
    decay = getattr(drift, "decay", None)
    step = ""
    if decay is not None:
        largest = float(np.max(np.asarray(decay)))
        step = (
            f" Here dt * max(decay) = {dt * largest:.3g} (Euler-Maruyama diverges above 2); "
            f"try dt <= {0.1 / largest:.3g}."
        )
    cause = (
        "The linear drift is stable, so the step dt is too large for its decay: use a smaller dt."
        if stable
        else "The drift is unstable (it has no stationary law, e.g. an eigenvalue of its "
        "Jacobian with real part >= 0 or regulation outgrowing the decay) or the step dt is too "
        "large for its decay. Make the drift stable (more self-decay, weaker regulation) or use "
        "a smaller dt."
    )
    raise UnstableDriftError(
        f"simulate_chains diverged: chain {chain} reached a non-finite or astronomically large "
        f"state (|x| > {BLOWUP_LIMIT:.0e}) by time {float(times[sample]):.4g}. {cause}{step}"
    )


def simulate_chains(
    key,
    drift,
    sigma,
    initial,
    *,
    intervention: Intervention | None = None,
    dt: float = 0.01,
    burn_in: float = 10.0,
    num_samples: int = 1,
    thinning: float = 1.0,
    solver: diffrax.AbstractSolver | None = None,
):
    """Run chains from ``initial`` and return draws after a burn-in, ``thinning`` time apart.

    All chains advance together as one state ``[chains, d]`` in a single ``diffeqsolve``
    (``MultiTerm(ODETerm, ControlTerm)`` with a diagonal lineax operator for the noise), so the
    cost per step is one batched drift evaluation.

    Parameters
    ----------
    key
        PRNG key of the Brownian motion.
    drift
        Callable drift with a ``decay`` attribute (:class:`LinearDrift`, :class:`NeuralDrift`).
    sigma
        ``[d]`` or scalar diffusion scales.
    initial
        ``[chains, d]`` starting states; a start near the stationary law shortens the burn-in.
    intervention
        Optional; fields ``[d]`` (all chains) or ``[chains, d]`` (one per chain).
    dt
        Fixed step. Euler-Maruyama's stationary variance is biased by a factor ``~ 1 + d_j dt / 2``
        for a gene with decay ``d_j``, so keep ``dt * max(decay)`` small.
    burn_in
        Time simulated before the first draw; several times ``1 / min(decay)``.
    num_samples
        Draws per chain.
    thinning
        Time between consecutive draws of one chain.
    solver
        A diffrax SDE solver; ``diffrax.Euler()`` (Euler-Maruyama) by default.

    Returns
    -------
    jax.Array
        ``[chains, num_samples, d]``.

    Raises
    ------
    ValueError
        If the shapes disagree (``initial`` not ``[chains, d]``; ``sigma``, the drift or an
        ``intervention`` field not matching ``d``), or the time arguments are out of range.
    UnstableDriftError
        A :class:`ValueError`, only for concrete (eager, not traced) arguments: before
        simulating, if a :class:`LinearDrift` under some chain's intervention is not Hurwitz
        (no stationary law; the message names the eigenvalue and the first such chain); after
        simulating, for any drift, if a draw is non-finite or larger than
        :data:`BLOWUP_LIMIT` in magnitude (an unstable drift or too large a ``dt``). Under
        ``jit``/``vmap`` nothing is checked and nothing is added to the traced computation.

    References
    ----------
    Kidger, P. (2021). On Neural Differential Equations. PhD thesis, University of Oxford
    (diffrax).
    """
    initial = jnp.asarray(initial)
    _check_shapes(drift, sigma, initial, intervention)
    if dt <= 0 or burn_in < 0 or thinning <= 0 or num_samples < 1:
        raise ValueError("Need dt > 0, burn_in >= 0, thinning > 0 and num_samples >= 1.")
    knockout = None if intervention is None else intervention.knockout
    checked = (
        isinstance(drift, LinearDrift)
        and np.ndim(drift.log_decay) == 1  # one drift; a batched one is simulated unchecked
        and is_concrete(drift, knockout)
    )
    if checked:
        _check_linear_stable(drift, intervention, initial.shape[0])
    field = intervene(drift, intervention)
    scale = jnp.broadcast_to(jnp.asarray(sigma, initial.dtype), initial.shape[-1:])
    if intervention is not None:
        scale = scale * intervention.noise_scale
    scale = jnp.broadcast_to(scale, initial.shape)
    end = burn_in + (num_samples - 1) * thinning
    brownian = diffrax.UnsafeBrownianPath(shape=initial.shape, key=key)
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: field(y)),
        diffrax.ControlTerm(lambda t, y, args: lineax.DiagonalLinearOperator(scale), brownian),
    )
    times = burn_in + thinning * jnp.arange(num_samples, dtype=initial.dtype)
    solution = diffrax.diffeqsolve(
        terms,
        diffrax.Euler() if solver is None else solver,
        t0=0.0,
        t1=end,
        dt0=dt,
        y0=initial,
        saveat=diffrax.SaveAt(ts=times),
        max_steps=math.ceil(end / dt) + 16,
        # UnsafeBrownianPath draws increments on the fly (fast, fixed steps only) and does not
        # support reverse-mode checkpointing; simulation here is never differentiated backward.
        adjoint=diffrax.ForwardMode(),
    )
    draws = jnp.swapaxes(solution.ys, 0, 1)
    if is_concrete(draws):
        _check_finite(draws, drift, dt, times, stable=checked)
    return draws
