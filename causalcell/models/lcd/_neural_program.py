"""The NumPyro program of LCD with neural drift (DESIGN 3.1), fitted through the KDS.

Drift ``f_j(x) = -exp(a_j) x_j + b_j + MLP_j(mask_j * (x - baseline))``: one tanh network per
gene over all other genes (``K = d`` parents; the prior mask, in drift orientation, and the
diagonal are masked out). The networks are bounded, so the linear decay dominates far out and
the diffusion has a stationary law for every parameter value; the bias is set so that the
noise-free control drift vanishes at ``baseline`` (as ``baseline`` is the control mean of the
linear program). Memory is ``O(d^2 H)`` per network evaluation, so keep ``d`` moderate (highly
variable genes or programs).

There is no closed-form stationary law. Each condition's latents get a learned diagonal
Gaussian base density (a nuisance density model that lets the counts be deconvolved), and the
stationarity of the SDE enters as a generalised-Bayes loss factor: minus the kernel deviation
from stationarity (:func:`causalcell.diffusion.kds`, V-statistic by default) of each condition's
latents under that condition's intervened drift, times the number of cells of the condition. See
:func:`lcd_neural_model` for the choices and their reasons.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from causalcell.diffusion import NeuralDrift, intervene, kds
from causalcell.models.lcd._kinds import (
    INTERVENTION_KINDS,
    condition_interventions,
    sample_screen_sites,
)
from causalcell.noise import NegativeBinomial, NoiseModel

__all__ = [
    "lcd_neural_model",
    "neural_drift_from_sites",
    "parent_mask",
    "within_condition_weights",
]

#: Prior scale (nats) of each condition's latent location around ``baseline_prior``: wider than
#: the moves perturbations cause (a knockout lowers a gene by ~3 nats), so the data decide it.
_LOCATION_SCALE = 3.0

#: The KDS estimates the factor can use (:func:`lcd_neural_model`, ``kds_statistic``).
KDS_STATISTICS = ("u", "v")


def parent_mask(genes: int, prior_mask=None) -> jnp.ndarray:
    """``[d, d]`` mask of each gene's network inputs: the prior mask without the diagonal.

    ``prior_mask[i, j] = 1`` allows gene ``j`` to regulate gene ``i`` (drift orientation); all
    pairs by default. A gene's own level acts through its decay only.
    """
    off_diagonal = 1.0 - jnp.eye(genes)
    if prior_mask is None:
        return off_diagonal
    return jnp.asarray(prior_mask, jnp.float32) * off_diagonal


def neural_drift_from_sites(sites: Mapping, prior_mask=None) -> NeuralDrift:
    """The neural drift of one draw of the global sites (``vmap`` it over many draws).

    Parameters
    ----------
    sites
        At least ``input_weights`` ``[d, d, H]``, ``hidden_bias`` ``[d, H]``,
        ``output_weights`` ``[d, H]``, ``log_decay`` ``[d]`` and ``baseline`` ``[d]``, as
        sampled by :func:`lcd_neural_model` (a posterior draw).
    prior_mask
        The ``prior_mask`` the model was fitted with (``None``: all pairs).

    Returns
    -------
    NeuralDrift
        With ``parents = arange(d)`` for every gene, ``center = baseline``, and the bias that
        makes ``f(baseline) = 0`` (the control fixed point of the noise-free drift).
    """
    log_decay = sites["log_decay"]
    baseline = sites["baseline"]
    genes = log_decay.shape[-1]
    mask = parent_mask(genes, prior_mask)
    drift = NeuralDrift(
        log_decay=log_decay,
        bias=jnp.zeros_like(baseline),
        center=baseline,
        parents=jnp.broadcast_to(jnp.arange(genes), (genes, genes)),
        parent_mask=mask,
        input_weights=sites["input_weights"] * mask[:, :, None],
        hidden_bias=sites["hidden_bias"],
        output_weights=sites["output_weights"],
    )
    # At x = baseline the networks see zeros, so regulation(baseline) = sum_h v tanh(c).
    bias = jnp.exp(log_decay) * baseline - drift.regulation(baseline)
    return drift._replace(bias=bias)


@functools.partial(jax.jit, static_argnums=1, static_argnames="statistic")
def within_condition_weights(condition, num_conditions: int, condition_sizes, statistic="u"):
    """Pair weights ``[B, B]`` of a batch for ``kds(..., weights=..., statistic=statistic)``.

    ``m_p`` cells of condition ``p`` are in the batch and ``N_p`` in the data; pairs across
    conditions get 0, and so does every pair of a condition with fewer than two cells in the
    batch. ``"u"``: ``N_p / (m_p (m_p - 1))`` for distinct pairs within condition ``p``, so that
    :func:`causalcell.diffusion.kds` returns ``sum_p N_p U_p``, each ``U_p`` the U-statistic of
    the condition's batch cells (unbiased for the population KDS given ``m_p >= 2``). ``"v"``:
    ``(N_p - 1) / (m_p (m_p - 1))`` for distinct pairs and ``1 / m_p`` on the diagonal, so that
    ``kds(..., statistic="v")`` returns ``sum_p N_p V_p``, each ``V_p`` the unbiased estimate
    from the batch of the V-statistic of all ``N_p`` latents of the condition,
    ``((N_p - 1) U + mean(diagonal)) / N_p``. Its expectation over batches is ``>= 0`` (the
    diagonal bias is ``1 / N_p``, not ``1 / m_p``); one batch's value need not be.
    """
    in_batch = jnp.sum(jax.nn.one_hot(condition, num_conditions), axis=0)
    pairs = in_batch * (in_batch - 1.0)
    counted = pairs > 0
    same = condition[:, None] == condition[None, :]
    if statistic == "u":
        per_pair = jnp.where(counted, condition_sizes / jnp.maximum(pairs, 1.0), 0.0)
        return jnp.where(same, per_pair[condition][:, None], 0.0)
    per_pair = jnp.where(counted, (condition_sizes - 1.0) / jnp.maximum(pairs, 1.0), 0.0)
    per_point = jnp.where(counted, 1.0 / jnp.maximum(in_batch, 1.0), 0.0)
    diagonal = jnp.eye(condition.shape[0], dtype=bool)
    weights = jnp.where(same, per_pair[condition][:, None], 0.0)
    return jnp.where(diagonal, per_point[condition][:, None], weights)


@functools.partial(jax.jit, static_argnums=2)
def _bandwidth(latent, condition, num_conditions: int, fallback_squared):
    """RMS distance of two cells of one condition in the batch, under ``stop_gradient``.

    ``h^2 = 2 sum_j v_j`` with ``v_j`` gene ``j``'s pooled within-condition variance, i.e.
    ``E|x - y|^2`` for two cells of the same condition: ``O(B d)`` instead of the median
    heuristic's sort of ``B^2`` distances. A batch without two cells of one condition falls back
    to ``fallback_squared``.
    """
    latent = jax.lax.stop_gradient(latent)
    one_hot = jax.nn.one_hot(condition, num_conditions)
    cells_per_condition = jnp.sum(one_hot, axis=0)
    means = (one_hot.T @ latent) / jnp.maximum(cells_per_condition, 1.0)[:, None]
    squares = jnp.sum(jnp.square(latent - means[condition]))
    degrees = jnp.sum(jnp.maximum(cells_per_condition - 1.0, 0.0))
    squared = jnp.where(degrees > 0, 2.0 * squares / jnp.maximum(degrees, 1.0), fallback_squared)
    return jnp.sqrt(jnp.maximum(squared, 1e-8))


def lcd_neural_model(
    counts=None,
    *,
    condition_index,
    condition_targets,
    size_factors,
    baseline_prior,
    prior_mask=None,
    intervention: str = "shift",
    noise: NoiseModel | None = None,
    weight_scale: float = 0.3,
    hidden: int = 8,
    kds_weight: float = 10.0,
    kds_statistic: str = "v",
):
    """LCD with neural drift: latents made stationary for their condition's SDE by a KDS factor.

    Same data signature as the linear program (:func:`._program.lcd_model`), so the same
    wrapper can fit either.

    Parameters
    ----------
    counts
        ``[cells, genes]`` observed counts, or None to simulate (then the latents are draws of
        the Gaussian base densities, not of the stationary law: for predictions simulate the
        SDE with :func:`causalcell.diffusion.simulate_chains` and
        :func:`neural_drift_from_sites`).
    condition_index
        ``[cells]`` index of each cell's condition into ``condition_targets``.
    condition_targets
        ``[conditions, genes]`` multi-hot targets (row 0 the control by convention).
    size_factors
        ``[cells]`` library sizes.
    baseline_prior
        ``[genes]`` prior mean of the control fixed point (e.g. log mean fractions), and of
        every condition's latent location.
    prior_mask
        Optional ``[genes, genes]`` 0/1 mask in drift orientation (``mask[i, j] = 1`` allows
        gene ``j`` to regulate gene ``i``); all pairs by default.
    intervention
        ``"shift"``, ``"knockdown"`` or ``"knockout"``, with the linear program's sites,
        priors and meaning (:func:`._program.condition_interventions`).
    noise
        Observation model; negative binomial by default.
    weight_scale
        Scale of the Laplace (sparsity) prior on the networks' input weights.
    hidden
        Hidden units ``H`` per gene's network.
    kds_weight
        Inverse temperature of the KDS factor (1: one unit of time-scaled KDS per cell weighs
        like one nat of log-likelihood). The default 10 was measured on the 12-gene neural
        screens of ``benchmarks/lcd_screen.py`` (seeds 0 and 1): held-out energy distance
        0.075 -> 0.028 and 0.065 -> 0.038 from weight 1, the latents' widths unchanged; at 1
        the drift priors outweigh the KDS and the drift under-fits the latents' law.
    kds_statistic
        ``"v"`` (default): each condition's KDS is the V-statistic of its latents, bounded
        below by zero, the one to train on; ``"u"``: the U-statistic, unbiased but unbounded
        below as a loss (:func:`causalcell.diffusion.kds`).

    Notes
    -----
    Modelling choices:

    - *Base density of the latents*: ``x_c ~ Normal(m_p, diag(s_p^2))`` for a cell of condition
      ``p``, with learned ``latent_location`` ``m_p`` and ``latent_log_scale`` ``log s_p``. It
      depends on no drift parameter, so the drift is learned through the KDS alone (a base
      built from the drift, e.g. the Gaussian law of its linearisation, would pull the networks
      toward linear behaviour). It is a hierarchical density model of each condition's cells:
      it shrinks each cell's latent toward its condition by the right amount, i.e. it
      deconvolves biological from count noise, which a fixed broad base cannot do (with
      ``Normal(baseline_prior, 3)`` instead, a 5-gene screen's latents came out ~1.5 times too
      spread and the KDS then fitted the noise-inflated law). It also keeps the joint density
      proper, so the encoder's Gaussian has a density to match.
    - *KDS factor*: ``-kds_weight * sum_p N_p KDS_p / tau^2`` with ``N_p`` the cells of
      condition ``p`` in the data and ``KDS_p`` the KDS of the condition's latents under
      ``intervene(drift, intervention_p)`` and noise ``sigma * noise_scale_p``, estimated from
      its cells in the batch (:func:`within_condition_weights`); pairs across conditions never
      count (they follow different SDEs). It is a generalised-Bayes loss (Bissiri et al. 2016)
      in place of ``sum_c log p_stationary(x_c)``: a population discrepancy times the number of
      cells, so it grows with the data like a log-likelihood and keeps its weight relative to
      the counts term (which the cell plate scales by ``N / B``) whatever the batch size. By
      default ``KDS_p`` is the V-statistic of the condition's ``N_p`` latents, a squared RKHS
      norm: the factor is then bounded above by zero for every drift and set of latents (in
      expectation over batches), where the U-statistic's is not and a fit can exploit
      directions in which it runs off (the U-statistic of a fixed sample is indefinite in the
      drift). Its bias, ``(mean diagonal - U_p) / N_p`` per condition, is one term of order
      one per condition against ``N_p`` terms. Either estimate needs two or more cells of a
      condition in the batch; conditions with fewer are skipped in that step, so use batches
      several times the number of conditions.
    - *Time unit*: a stationary law does not see time: ``(c f, sqrt(c) sigma)`` has the same law
      and ``c^2`` times the KDS, so an unscaled factor would push every rate and ``sigma`` to
      zero (weakening itself). Dividing by ``tau^2``, ``tau = exp(mean(log_decay))``, makes the
      factor exactly invariant along that direction, which is then left to the priors, as the
      exact likelihood of the linear program does.
    - *Bandwidth*: the RMS distance of two cells of one condition in the batch
      (``stop_gradient``): the kernel's length scale follows the latents' own spread.

    Sample sites
    ------------
    Globals: ``input_weights`` [d, d, H], ``hidden_bias`` [d, H], ``output_weights`` [d, H],
    ``log_decay``, ``baseline``, ``log_sigma`` [d], the intervention parameter [d]
    (``intervention_effect``, ``knockdown_strength`` or ``knockout_depth``), the noise
    parameters, ``latent_location`` and ``latent_log_scale`` [conditions, d]. Per cell (plate
    ``"cells"``): ``latent`` [d], ``counts`` [d]. Factor ``kds``.

    References
    ----------
    Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
    AISTATS.
    Bissiri, P. G., Holmes, C. C. & Walker, S. G. (2016). A general framework for updating
    belief distributions. JRSS B 78(5).
    """
    if intervention not in INTERVENTION_KINDS:
        raise ValueError(f"intervention must be one of {INTERVENTION_KINDS}, got {intervention!r}.")
    noise = noise if noise is not None else NegativeBinomial()
    num_conditions, genes = condition_targets.shape
    sites = _drift_sites(genes, hidden, weight_scale, baseline_prior, intervention)
    noise_parameters = noise.sample_parameters(genes)
    location = numpyro.sample(
        "latent_location",
        dist.Normal(baseline_prior, _LOCATION_SCALE).expand([num_conditions, genes]).to_event(2),
    )
    log_scale = numpyro.sample(
        "latent_log_scale",
        dist.Normal(jnp.log(0.5), 1.0).expand([num_conditions, genes]).to_event(2),
    )
    num_cells = condition_index.shape[0]
    with numpyro.plate("cells", num_cells) as index:
        condition = condition_index[index]
        base = dist.Normal(location[condition], jnp.exp(log_scale[condition]))
        latent = numpyro.sample("latent", base.to_event(1))
        observed = None if counts is None else counts[index]
        numpyro.sample(
            "counts",
            noise.distribution(latent, size_factors[index], **noise_parameters).to_event(1),
            obs=observed,
        )
    if kds_statistic not in KDS_STATISTICS:
        raise ValueError(f"kds_statistic must be one of {KDS_STATISTICS}, got {kds_statistic!r}.")
    deviation = _scaled_kds(
        sites,
        condition_targets,
        prior_mask,
        latent,
        condition,
        condition_index,
        intervention,
        kds_statistic,
    )
    numpyro.factor("kds", -kds_weight * deviation)


# Jitted so that the eager runs of the program (guide set-up, initialisation) compile one
# computation rather than each of its ~100 operations; under the SVI step's jit it is inlined.
@functools.partial(jax.jit, static_argnames=("intervention", "statistic"))
def _scaled_kds(
    sites,
    condition_targets,
    prior_mask,
    latent,
    condition,
    condition_index,
    intervention,
    statistic,
):
    """``sum_p N_p KDS_p / tau^2`` of the batch's latents (``condition`` their conditions)
    under each condition's intervened drift (see :func:`lcd_neural_model`, Notes)."""
    num_conditions = condition_targets.shape[0]
    drift = neural_drift_from_sites(sites, prior_mask)
    interventions = condition_interventions(condition_targets, intervention, sites, drift)
    sigma = jnp.exp(sites["log_sigma"])
    # jnp indexing: a knockout mask may be a NumPy constant (Intervention.identity).
    rows = jax.tree_util.tree_map(lambda field: jnp.asarray(field)[condition], interventions)
    condition_sizes = jnp.bincount(condition_index, length=num_conditions).astype(sigma.dtype)
    fallback = jax.lax.stop_gradient(jnp.sum(sigma**2 / drift.decay))
    deviation = kds(
        intervene(drift, rows),
        sigma * rows.noise_scale,
        latent,
        bandwidth=_bandwidth(latent, condition, num_conditions, fallback),
        weights=within_condition_weights(
            condition, num_conditions, condition_sizes, statistic=statistic
        ),
        statistic=statistic,
    )
    time_scale = jnp.exp(jnp.mean(sites["log_decay"]))  # see Notes: "Time unit"
    return deviation / time_scale**2


def _drift_sites(genes: int, hidden: int, weight_scale: float, baseline_prior, intervention):
    """The global sites of the drift, then those shared with the linear program, by name."""
    shape = [genes, genes, hidden]
    return {
        # Laplace: sparse regulation; masked entries are ignored by neural_drift_from_sites.
        "input_weights": numpyro.sample(
            "input_weights", dist.Laplace(0.0, weight_scale).expand(shape).to_event(3)
        ),
        "hidden_bias": numpyro.sample(
            "hidden_bias", dist.Normal(0.0, 1.0).expand([genes, hidden]).to_event(2)
        ),
        # A network shifts its gene by at most sum_h |v_h| / decay nats (~0.8 H under N(0, 1)).
        "output_weights": numpyro.sample(
            "output_weights", dist.Normal(0.0, 1.0).expand([genes, hidden]).to_event(2)
        ),
        "log_decay": numpyro.sample("log_decay", dist.Normal(0.0, 0.5).expand([genes]).to_event(1)),
        **sample_screen_sites(genes, baseline_prior, intervention),
    }
