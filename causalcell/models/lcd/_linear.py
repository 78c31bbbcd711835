"""Linear drift: the exact Gaussian stationary laws of a fitted LCD, its drift matrices, CLIPR
responses and generated cells (one :class:`._backends.DriftBackend`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import anndata
import jax
import jax.numpy as jnp
import numpy as np

from causalcell.clipr import linear_responses
from causalcell.models.lcd._cells import generated_cells
from causalcell.models.lcd._drift import linear_drift_from_sites
from causalcell.models.lcd._gene_space import reduce_programs
from causalcell.models.lcd._kinds import knockout_rank_of
from causalcell.models.lcd._pairs import request_pairs
from causalcell.models.lcd._program import condition_laws
from causalcell.models.lcd._targets import perturbation_targets

__all__ = [
    "PREDICT_DRAWS",
    "linear_drifts",
    "predict_linear",
    "responses",
    "stationary_laws",
    "stationary_linear",
]


def stationary_laws(model, draws: dict, rows, rank_of=None, pairs=None):
    """Per-draw stationary means ``[S, K, m]``, covariances and Cholesky factors of the latent
    state under the multi-hot targets ``rows`` ``[K, m]`` (and their :class:`._pairs.Pairs`,
    on a screen of perturbations named apart from their targets). On a knockout screen the
    laws come from low-rank updates of one inverse (:func:`._program.condition_laws`) whose
    rank is the most targets of one of ``rank_of`` (``rows`` by default: pass all rows when
    ``rows`` is a chunk of them, so that every chunk runs one compiled program)."""
    rows = np.asarray(rows, np.float32)
    return _stationary_laws(
        draws,
        jnp.asarray(rows),
        model.prior_mask,
        pairs,
        intervention=model.intervention,
        knockout_rank=knockout_rank_of(model.intervention, rows if rank_of is None else rank_of),
    )


@functools.partial(jax.jit, static_argnames=("intervention", "knockout_rank"))
def _stationary_laws(draws: dict, targets, prior_mask, pairs, *, intervention: str, knockout_rank):
    """:func:`stationary_laws` as one compiled program, cached across models of the same
    shapes (run op by op, each new shape compiled dozens of small programs: seconds)."""

    def one(draw):
        laws = condition_laws(draw, targets, intervention, prior_mask, None, knockout_rank, pairs)
        return laws.means, laws.covariances, laws.factors()

    return jax.vmap(one)(draws)


def linear_drifts(model, draws: dict, programs: bool) -> np.ndarray:
    """Drift matrices of the draws: of the whole state, or reduced to the modelled genes."""
    reduced = 0 if programs else model.space.programs

    def one(draw):
        matrix = linear_drift_from_sites(draw, model.prior_mask).matrix()
        return reduce_programs(matrix, reduced)

    return np.asarray(jax.vmap(one)(draws))


def responses(model, draws: dict, columns) -> np.ndarray:
    """Exact stationary responses ``-A^{-1} e_j`` of the modelled genes to unit shifts of the
    ``columns``, per draw of the drift (CLIPR's input for :meth:`LCD.effects`)."""
    return linear_responses(linear_drifts(model, draws, False), columns)


def _latent_draws(model, draws: dict, rows: np.ndarray, repeats: int, key, pairs=None):
    """Stationary means ``[S, K, m]`` and ``repeats`` latent draws ``[S, R, K, m]`` per draw and
    row, the laws computed :data:`LAW_CHUNK_BYTES` at a time (one chunk shape, the last
    padded with its last row, so one compilation)."""
    num_draws, (count, size) = len(next(iter(draws.values()))), rows.shape
    chunk = int(np.clip(LAW_CHUNK_BYTES // (4 * num_draws * size * size), 1, count))
    noise = jax.random.normal(key, (num_draws, repeats, count, size))
    means, latents = [], []
    for start in range(0, count, chunk):
        block = _padded(rows, start, chunk)
        block_pairs = (
            None if pairs is None else pairs._replace(active=_padded(pairs.active, start, chunk))
        )
        mean, _, factor = stationary_laws(model, draws, block, rows, block_pairs)  # [S, k, m(, m)]
        kept = min(chunk, count - start)
        mean, factor = mean[:, :kept], factor[:, :kept]
        local = noise[:, :, start : start + kept]
        latents.append(mean[:, None] + jnp.einsum("skij,srkj->srki", factor, local))
        means.append(mean)
    return jnp.concatenate(means, axis=1), jnp.concatenate(latents, axis=2)


def _padded(rows, start: int, chunk: int):
    """Rows ``start`` to ``start + chunk``, the last repeated to fill a short chunk."""
    block = rows[start : start + chunk]
    return np.concatenate([block, np.repeat(block[-1:], chunk - len(block), axis=0)])


def _no_simulation(simulation: dict) -> None:
    if simulation:
        raise TypeError(f"Simulation options {sorted(simulation)} need drift='neural'.")


def stationary_linear(model, request, *, key, num_samples: int, **simulation):
    """:meth:`LCD.stationary` of a :class:`._targets.Request`: the exact per-draw mean and
    covariance."""
    _no_simulation(simulation)
    draws = model.posterior.sample(key, num_samples)
    pairs, draws = request_pairs(model, [request.members], draws, jax.random.fold_in(key, 1))
    mean, covariance, _ = stationary_laws(model, draws, request.row[None], pairs=pairs)
    return np.asarray(mean[:, 0]), np.asarray(covariance[:, 0])


#: Most posterior draws one prediction uses: cells ``c`` and ``c + PREDICT_DRAWS`` share a
#: draw, so a prediction of thousands of cells solves at most this many Lyapunov equations
#: per perturbation (16,000 draws of 50 genes took 3 minutes and 0.6 GB for the factors).
PREDICT_DRAWS = 500
#: Bytes of one ``[draws, perturbations, m, m]`` array that :func:`predict_linear` computes at
#: once: the laws of many perturbations are computed a chunk of perturbations at a time, as
#: the Lyapunov solves hold several such arrays (50 knockout doubles at ``m = 208`` with 300
#: draws need 2.6 GB each, and the process ran out of 24 GB).
LAW_CHUNK_BYTES = 2**27


def predict_linear(
    model,
    perturbations: Sequence[str],
    num_cells: int,
    *,
    key,
    allow_prior_only: bool,
    **simulation,
) -> anndata.AnnData:
    """:meth:`LCD.predict` for linear drift: cell ``c`` of every perturbation uses posterior
    draw ``c mod PREDICT_DRAWS`` (one Lyapunov solve per draw and perturbation, all in one
    vectorised call); each cell is a draw of the posterior predictive law."""
    _no_simulation(simulation)
    requests = [perturbation_targets(model, label, allow_prior_only) for label in perturbations]
    rows = [request.row for request in requests]
    draw_key, latent_key, size_key, count_key = jax.random.split(key, 4)
    num_draws = min(num_cells, PREDICT_DRAWS)
    repeats = -(-num_cells // num_draws)  # cells per draw, rounded up
    draws = model.posterior.sample(draw_key, num_draws)
    members = [request.members for request in requests]
    pairs, draws = request_pairs(model, members, draws, jax.random.fold_in(draw_key, 1))
    mean, latent = _latent_draws(model, draws, np.stack(rows), repeats, latent_key, pairs)
    means = jnp.broadcast_to(mean[:, None], latent.shape)
    log_rate = model.space.decode_draws(latent, means, draws)  # every gene, AnnData order

    def perturbation_major(values):
        """``[S, R, K, ...]`` -> ``[K * num_cells, ...]``: cell ``s R + r`` of each perturbation."""
        values = jnp.moveaxis(values, 2, 0).reshape(len(rows), -1, *values.shape[3:])
        return values[:, :num_cells].reshape(-1, *values.shape[2:])

    parameters = {}
    for name, value in model.noise.parameters_of(draws).items():
        value = model.space.in_gene_order(value)  # [S, genes]
        shape = (num_draws, repeats, len(rows), value.shape[-1])
        parameters[name] = perturbation_major(jnp.broadcast_to(value[:, None, None], shape))
    return generated_cells(
        perturbation_major(latent),
        parameters,
        model.noise,
        model.library_sizes,
        [request.label for request in requests],
        [request.prior_only for request in requests],
        num_cells,
        model.genes,
        size_key,
        count_key,
        log_rate=perturbation_major(log_rate),
    )
