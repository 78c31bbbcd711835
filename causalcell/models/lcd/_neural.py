"""Queries of LCD with neural drift behind :class:`causalcell.models.lcd.LCD`: predictions,
stationary laws and linearised direct effects (DESIGN 2.3, 3.1, 4); the fit is in
:mod:`._neural_fit`.

The program is :func:`._neural_program.lcd_neural_model`. Its stationary laws have no closed form,
so every query simulates the fitted SDE with :func:`causalcell.diffusion.simulate_chains`:

- *Draws*: posterior draw ``s`` drives its own chains (for predictions, chain ``c`` of every
  perturbation uses draw ``c``, as the linear path's cell ``c`` does). The chains of all draws
  and all perturbations advance as one state ``[draws * perturbations * replicates, d]`` in a
  single ``diffeqsolve``; the draws' networks act on their own rows through ``vmap``
  (:class:`DrawDrifts`), so no network parameter is copied per chain.
- *Interventions*: a perturbation's multi-hot targets give every target its learned
  parameter (:func:`._program.condition_interventions`), exactly as the program composes
  them during the fit, so an unseen combination of seen targets is the composition of its
  members' learned interventions, and it acts on the nonlinear drift (non-additive effects).
- *Noise*: each draw's ``sigma`` enters as the chains' ``noise_scale`` (times the
  intervention's), since ``simulate_chains`` takes one ``sigma`` for all chains.
- *Time grid*: Euler-Maruyama with ``dt = 0.05 / max(decay)`` (stationary variance biased by at
  most ``~2.5%``, the simulator's :func:`causalcell.datasets.simulate_screen` setting) and a
  burn-in of ``6 / min(decay)`` over the draws, each rounded to a half-octave grid
  (``2^(k/2)``, ``dt`` down, burn-in up) so that repeated queries reuse one compiled solve.
  Chains start at the baseline moved by each target's own-level change with its regulators
  held (``shift / decay + knockdown``, or the knockout level), so the burn-in only has to carry
  the change downstream. A drift whose slowest mode is slower than its slowest gene's decay
  (strong positive feedback) needs a longer ``burn_in``: pass it.
- *Effects*: the noise-free control drift vanishes at ``baseline`` by construction
  (:func:`._neural_program.neural_drift_from_sites`), so the control fixed point is known exactly;
  CLIPR uses the responses of the drift linearised there
  (:func:`causalcell.clipr.linearized_responses`), i.e. the limit of small in-silico shifts.

References
----------
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import anndata
import jax
import jax.numpy as jnp
import numpy as np

from causalcell._core.errors import CausalcellWarning
from causalcell.clipr import linearized_responses
from causalcell.diffusion import NeuralDrift, UnstableDriftError, simulate_chains
from causalcell.models.lcd._cells import generated_cells
from causalcell.models.lcd._kinds import condition_interventions
from causalcell.models.lcd._neural_program import neural_drift_from_sites
from causalcell.models.lcd._targets import perturbation_targets

__all__ = [
    "DrawDrifts",
    "control_jacobians",
    "drift_matrices",
    "neural_responses",
    "predict_neural",
    "responses",
    "simulate_draws",
    "stationary_neural",
    "time_grid",
]

#: Euler-Maruyama step times the fastest decay (stationary variance bias ``~ 1 + rate dt / 2``).
STEP_PER_DECAY = 0.05
#: Burn-in times the slowest decay: an initial offset of that gene shrinks by ``e^-6``.
BURN_IN_PER_DECAY = 6.0


class DrawDrifts(NamedTuple):
    """The drifts of ``S`` posterior draws acting on chains ``[S * M, d]``: draw ``s`` on rows
    ``s M .. (s + 1) M - 1``.

    Attributes
    ----------
    drifts
        A :class:`causalcell.diffusion.NeuralDrift` whose fields have a leading ``[S]`` axis.
    decay
        ``[S * M, d]`` each chain's decay rates (read by :func:`causalcell.diffusion.intervene`).
    """

    drifts: NeuralDrift
    decay: jnp.ndarray

    def __call__(self, x):
        per_draw = x.reshape(self.drifts.log_decay.shape[0], -1, x.shape[-1])
        values = jax.vmap(lambda drift, states: drift(states))(self.drifts, per_draw)
        return values.reshape(x.shape)


def _half_octave(value: float, rounding) -> float:
    return float(2.0 ** (rounding(2.0 * np.log2(value)) / 2.0))


def time_grid(draws: Mapping, dt: float | None = None, burn_in: float | None = None):
    """``(dt, burn_in)`` of the simulation: given values, or the module's defaults over the
    decay rates of ``draws`` (see the module docstring)."""
    decay = np.exp(np.asarray(draws["log_decay"], np.float64))
    if dt is None:
        dt = _half_octave(STEP_PER_DECAY / decay.max(), np.floor)
    if burn_in is None:
        burn_in = _half_octave(BURN_IN_PER_DECAY / decay.min(), np.ceil)
    return float(dt), float(burn_in)


@functools.partial(jax.jit, static_argnames=("kind", "replicates", "dt", "burn_in"))
def simulate_draws(key, draws, targets, prior_mask, *, kind, replicates, dt, burn_in):
    """Stationary draws of the latents ``[S, P, replicates, d]``: for each posterior draw ``s``
    and multi-hot target row ``p`` of ``targets`` ``[P, d]``, ``replicates`` chains of the SDE
    under the learned intervention, each read once after the burn-in.

    ``draws`` are global sites ``{site: [S, ...]}``; ``prior_mask`` the fit's (or None).
    """
    size, conditions, genes = draws["baseline"].shape[0], targets.shape[0], targets.shape[1]
    drifts = jax.vmap(neural_drift_from_sites, in_axes=(0, None))(draws, prior_mask)

    def rows_of(sites, drift):
        return condition_interventions(targets, kind, sites, drift)

    rows = jax.vmap(rows_of)(draws, drifts)  # fields [S, P, d]
    rows = rows._replace(noise_scale=rows.noise_scale * jnp.exp(draws["log_sigma"])[:, None])
    decay = jnp.broadcast_to(drifts.decay[:, None], (size, conditions, genes))
    held = draws["baseline"][:, None] + rows.shift / decay + rows.knockdown
    start = jnp.where(rows.knockout, rows.knockout_level, held)

    def chains(value):  # [S, P, d] -> [S * P * replicates, d], draw-major
        value = jnp.broadcast_to(value[:, :, None], (size, conditions, replicates, genes))
        return value.reshape(-1, genes)

    latent = simulate_chains(
        key,
        DrawDrifts(drifts, chains(decay)),
        1.0,  # each draw's sigma is in the chains' noise_scale
        chains(start),
        intervention=jax.tree_util.tree_map(chains, rows),
        dt=dt,
        burn_in=burn_in,
    )
    return latent[:, 0].reshape(size, conditions, replicates, genes)


def predict_neural(
    model,
    perturbations: Sequence[str],
    num_cells: int,
    *,
    key,
    allow_prior_only: bool,
    dt: float | None = None,
    burn_in: float | None = None,
) -> anndata.AnnData:
    """:meth:`LCD.predict` for neural drift: cell ``c`` of every perturbation is the end of a
    chain driven by posterior draw ``c`` (all chains in one solve), then counts.

    ``model`` is the fitted :class:`LCD`; ``dt`` and ``burn_in`` override the time grid.
    """
    requests = [perturbation_targets(model, label, allow_prior_only) for label in perturbations]
    rows = [request.row for request in requests]
    flags = [request.prior_only for request in requests]
    names = [request.label for request in requests]
    draw_key, latent_key, size_key, count_key = jax.random.split(key, 4)
    draws = model.posterior.sample(draw_key, num_cells)
    dt, burn_in = time_grid(draws, dt, burn_in)
    latent = simulate_draws(
        latent_key,
        draws,
        jnp.asarray(np.stack(rows), jnp.float32),
        model.prior_mask,
        kind=model.intervention,
        replicates=1,
        dt=dt,
        burn_in=burn_in,
    )[:, :, 0]
    latent = jnp.swapaxes(latent, 0, 1).reshape(-1, latent.shape[-1])  # perturbation-major
    parameters = {
        name: jnp.tile(value, (len(rows), 1))
        for name, value in model.noise.parameters_of(draws).items()
    }
    return generated_cells(
        latent,
        parameters,
        model.noise,
        model.library_sizes,
        names,
        flags,
        num_cells,
        model.genes,
        size_key,
        count_key,
    )


def stationary_neural(
    model,
    request,
    *,
    key,
    num_samples: int,
    chains: int = 100,
    dt: float | None = None,
    burn_in: float | None = None,
):
    """:meth:`LCD.stationary` for neural drift: per posterior draw, the empirical mean ``[S, d]``
    and covariance ``[S, d, d]`` (``ddof = 1``) of ``chains`` simulated stationary draws.

    These are Monte Carlo estimates (standard error of a mean ``~ sd / sqrt(chains)``) of the
    moments of a law that is not Gaussian; the draws themselves are ``predict``'s
    ``obsm["latent"]``.
    """
    if chains < 2:
        raise ValueError(f"chains must be at least 2 to estimate a covariance, got {chains}.")
    draw_key, chain_key = jax.random.split(key)
    draws = model.posterior.sample(draw_key, num_samples)
    dt, burn_in = time_grid(draws, dt, burn_in)
    latent = simulate_draws(
        chain_key,
        draws,
        jnp.asarray(np.asarray(request.row)[None], jnp.float32),
        model.prior_mask,
        kind=model.intervention,
        replicates=chains,
        dt=dt,
        burn_in=burn_in,
    )[:, 0]
    mean = latent.mean(axis=1)
    centred = latent - mean[:, None]
    covariance = jnp.einsum("sci,scj->sij", centred, centred) / (chains - 1)
    return np.asarray(mean), np.asarray(covariance)


@jax.jit
def control_jacobians(draws, prior_mask):
    """Jacobians ``[S, d, d]`` of each draw's drift at its control fixed point ``baseline``
    (row = target, as :meth:`LCD.drift`'s matrices)."""

    def one(sites):
        return jax.jacfwd(neural_drift_from_sites(sites, prior_mask))(sites["baseline"])

    return jax.vmap(one)(draws)


@jax.jit
def _drift_value(sites, prior_mask, x):
    return neural_drift_from_sites(sites, prior_mask)(x)


def responses(model, draws: Mapping, columns: Sequence[int]) -> np.ndarray:
    """CLIPR's input for :meth:`LCD.effects` of a neural-drift ``model``: the responses of
    the drift linearised at the control fixed point (:func:`neural_responses`)."""
    return neural_responses(draws, model.prior_mask, columns)


def drift_matrices(model, draws: Mapping, programs: bool) -> np.ndarray:
    """:meth:`LCD.drift` of neural drift: its Jacobians at the control fixed point (every gene
    is a coordinate, so ``programs`` changes nothing)."""
    del programs
    return np.asarray(control_jacobians(draws, model.prior_mask))


def neural_responses(draws: Mapping, prior_mask, columns: Sequence[int]) -> np.ndarray:
    """Responses ``[S, d, k]`` to small shifts of genes ``columns``, per posterior draw, by
    :func:`causalcell.clipr.linearized_responses` at the control fixed point ``baseline``.

    A draw whose linearised drift is not stable there (the fixed point is not attracting, so
    small shifts have no steady response) is left out with a :class:`CausalcellWarning`.

    Raises
    ------
    causalcell.diffusion.UnstableDriftError
        If no draw is stable at its control fixed point.
    """
    draws = {name: np.asarray(value) for name, value in draws.items()}
    size = next(iter(draws.values())).shape[0]
    responses = []
    for index in range(size):
        sites = {name: value[index] for name, value in draws.items()}
        drift = functools.partial(_drift_value, sites, prior_mask)
        try:
            responses.append(linearized_responses(drift, sites["baseline"], columns))
        except UnstableDriftError:
            continue
    if not responses:
        raise UnstableDriftError(
            "No posterior draw of the neural drift is stable at its control fixed point, so "
            "small shifts have no steady responses for CLIPR."
        )
    if len(responses) < size:
        warnings.warn(
            f"{size - len(responses)} of {size} posterior draws of the neural drift are not "
            "stable at their control fixed point and were left out of the effects.",
            CausalcellWarning,
            stacklevel=3,
        )
    return np.stack(responses)
