"""Stationary diffusions on the two stadion problems: exact Lyapunov likelihood against the KDS.

Usage::

    python benchmarks/stationary_diffusion.py [--problems small large] [--steps 2000]
                                              [--batch-size 128] [--seed 0] [--no-neural]
                                              [--no-u-statistic] [--timing-dims 5 20 100]
                                              [--timing-steps 20]

The problems of the issue: ``small`` is n = 1,000 training samples of d = 5 variables, ``large``
n = 5,000 of d = 20 (stadion, the KDS reference implementation of Lorch, Krause & Schölkopf 2024,
fits them in 35-80 s on this CPU). The data are modelled on the paper's synthetic linear-SDE
setting, continuous variables, no counts: a random DAG (2 expected parents) with signed weights
(``causalcell.datasets._regulatory.random_linear_drift``), diagonal noise
``sigma_j = exp(U(-1, 1))``, one observational environment and single-variable shift
interventions (3 for ``small``, 10 for ``large``) that move their target's mean by 2-5 of its
observational standard deviations; the training samples are split evenly over these
environments and drawn exactly from each environment's Gaussian stationary law
(:func:`causalcell.diffusion.stationary_moments`). Held out: fresh samples of every training
environment, and shift interventions on variables never intervened on in training (2 for
``small``, 10 for ``large``).

Methods, all from the same data-based start (``A = -I``, mean and variances matched to the
observational sample, shifts to the targets' mean changes), with Adam (cosine-decayed rate) in one
jitted ``lax.scan`` and the time scale fixed by centring the log self-decays (the laws are
unchanged by ``(A, b, sigma^2) -> c (A, b, sigma^2)``):

- ``exact likelihood``: the linear drift fitted through its exact stationary law: the Gaussian
  log-likelihood of each environment's sample moments
  (:func:`causalcell.diffusion.stationary_log_likelihood`, one Lyapunov solve per environment),
  as maximum likelihood and as MAP under a ``Laplace(0, 0.1)`` prior on the off-diagonal weights.
- ``KDS``: a :class:`~causalcell.diffusion.LinearDrift` or a dense
  :class:`~causalcell.diffusion.NeuralDrift` (every other variable a parent, 8 hidden units)
  minimising the KDS averaged over environments plus stadion's sparsity penalty (group lassos,
  strength 1e-3), as stadion does: each step draws ``--batch-size`` points per environment; RBF
  kernel with each environment's median distance. The main rows use the V-statistic
  (``causalcell.diffusion.kds(..., statistic="v")``, with :func:`minibatch_v_weights`); the
  ``U-statistic`` row uses the U-statistic, whose loss is unbounded below (see
  :func:`causalcell.diffusion.kds`).

A held-out shift hits a variable whose shift size no method has seen: each method estimates that
one number from 100 calibration samples of the held-out environment with the drift frozen, by its
own objective (likelihood or KDS V-statistic; both are quadratic in the shift, so three
evaluations give the exact minimiser); everything else about the held-out law is predicted. The
``true drift`` row does the same with the true drift: the error that calibration alone leaves.

Metrics, averaged over environments (training ones, held-out ones): relative Frobenius error of
the stationary covariance, RMSE of the stationary mean, and the energy distance
(:func:`causalcell.metrics.energy_distance`) between 500 samples of the fitted law (exact Gaussian
draws for linear drifts; 500 Euler-Maruyama chains for the neural drift, whose moments are then
Monte Carlo estimates) and 500 held-out true samples. The ``noise floor`` row scores 500 fresh
true samples the same way: its energy distance is that between two independent true samples.
Fit time is the wall clock of the optimisation loop after compilation, which is reported
separately. A last table times one optimisation step against d (n = 5,000 over up to 11
environments) for comparison with stadion's 0.4 s per KDS step at d = 100.

References
----------
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS (arXiv:2310.17405).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.spatial.distance import pdist

from causalcell import metrics
from causalcell.datasets._regulatory import random_adjacency, random_linear_drift
from causalcell.diffusion import (
    LinearDrift,
    NeuralDrift,
    SampleMoments,
    intervene,
    kds,
    simulate_chains,
    spectral_abscissa,
    stationary_log_likelihood,
    stationary_moments,
)
from causalcell.graph import swap_orientation
from causalcell.interventions import Intervention


class Problem(NamedTuple):
    num_samples: int
    num_variables: int
    train_targets: int
    held_out_targets: int


PROBLEMS = {"small": Problem(1000, 5, 3, 2), "large": Problem(5000, 20, 10, 10)}
#: stadion's fit times for these two problems on this CPU, from the issue.
STADION_FIT_SECONDS = "35-80"
STADION_SECONDS_PER_STEP_D100 = 0.4
EXPECTED_PARENTS = 2.0
LOG_SIGMA_RANGE = (-1.0, 1.0)  # stadion's synthetic SDEs draw log noise scales in [-1, 1]
SHIFT_RANGE = (2.0, 5.0)  # a shift moves its target's mean by this many observational sds
EVALUATION_SAMPLES = 500
CALIBRATION_SAMPLES = 100
HIDDEN = 8
#: MAP fit: Laplace(0, 0.1) prior on each off-diagonal weight (true ones: 0, or 0.1-2 in size).
LAPLACE_SCALE = 0.1
#: KDS fits: stadion's default strength of its group-lasso sparsity penalty (see ``sparsity``).
SPARSITY = 1e-3
LEARNING_RATE = {"exact": 0.02, "kds linear": 0.02, "kds neural": 0.01}


# ---------------------------------------------------------------------------------------------
# Data


class Environments(NamedTuple):
    """Single-variable shift environments: ``target`` -1 is observational."""

    target: np.ndarray  # [E] int
    shift: np.ndarray  # [E] float


class Simulation(NamedTuple):
    drift: LinearDrift
    sigma: np.ndarray
    train: Environments
    held_out: Environments
    samples: list[np.ndarray]  # training samples, one [n_e, d] array per training environment
    means: np.ndarray  # [E_train + E_held, d] true stationary means
    covariances: np.ndarray  # [E_train + E_held, d, d]
    evaluation: np.ndarray  # [E_all, 500, d] held-out true samples
    reference: np.ndarray  # [E_all, 500, d] independent true samples (noise floor)
    calibration: np.ndarray  # [E_held, 100, d] samples of the held-out environments


def target_mask(target: np.ndarray, num_variables: int) -> np.ndarray:
    """``[E, d]`` one-hot rows of the environments' targets (all zero when observational)."""
    return (np.asarray(target)[:, None] == np.arange(num_variables)).astype(np.float32)


def shift_interventions(mask, shift) -> Intervention:
    """Batched :class:`Intervention` ``[E, d]`` shifting each environment's target by ``shift``."""
    mask = jnp.asarray(mask)
    identity = Intervention.identity(mask.shape[-1], mask.shape[:-1])
    return identity._replace(shift=mask * jnp.asarray(shift)[..., None])


def gaussian_draws(rng, means, covariances, num_samples: int) -> np.ndarray:
    """``[E, num_samples, d]`` exact draws from ``N(means[e], covariances[e])``."""
    factors = np.linalg.cholesky(np.asarray(covariances, np.float64))
    noise = rng.standard_normal((means.shape[0], num_samples, means.shape[-1]))
    return np.asarray(means)[:, None, :] + np.einsum("eij,enj->eni", factors, noise)


def simulate(problem: Problem, seed: int) -> Simulation:
    rng = np.random.default_rng(seed)
    d = problem.num_variables
    adjacency = random_adjacency(rng, d, EXPECTED_PARENTS, acyclic=True)
    drift = random_linear_drift(rng, swap_orientation(adjacency), rng.normal(0.0, 1.0, d))
    sigma = np.exp(rng.uniform(*LOG_SIGMA_RANGE, d)).astype(np.float32)
    _, observational = stationary_moments(drift, sigma)
    spread = np.sqrt(np.diagonal(np.asarray(observational)))
    order = rng.permutation(d)
    train_target = np.concatenate([[-1], order[: problem.train_targets]])
    held_target = order[problem.train_targets : problem.train_targets + problem.held_out_targets]
    target = np.concatenate([train_target, held_target])
    sign = rng.choice([-1.0, 1.0], target.size)
    size = sign * rng.uniform(*SHIFT_RANGE, target.size) * np.asarray(drift.decay)[target]
    shift = np.where(target >= 0, size * spread[target], 0.0)
    interventions = shift_interventions(target_mask(target, d), shift.astype(np.float32))
    means, covariances = jax.jit(stationary_moments)(drift, sigma, interventions)
    means, covariances = np.asarray(means, np.float64), np.asarray(covariances, np.float64)
    num_train = train_target.size
    counts = np.full(num_train, problem.num_samples // num_train)
    counts[: problem.num_samples % num_train] += 1
    samples = [
        gaussian_draws(rng, means[e : e + 1], covariances[e : e + 1], int(count))[0]
        for e, count in enumerate(counts)
    ]
    return Simulation(
        drift=drift,
        sigma=sigma,
        train=Environments(train_target, shift[:num_train]),
        held_out=Environments(held_target, shift[num_train:]),
        samples=samples,
        means=means,
        covariances=covariances,
        evaluation=gaussian_draws(rng, means, covariances, EVALUATION_SAMPLES),
        reference=gaussian_draws(rng, means, covariances, EVALUATION_SAMPLES),
        calibration=gaussian_draws(
            rng, means[num_train:], covariances[num_train:], CALIBRATION_SAMPLES
        ),
    )


# ---------------------------------------------------------------------------------------------
# Models: parameters, drifts, losses


class LinearParameters(NamedTuple):
    log_decay: jnp.ndarray  # [d], centred before use (fixes the time scale)
    weights: jnp.ndarray  # [d, d] row = target
    bias: jnp.ndarray  # [d]
    log_sigma: jnp.ndarray  # [d]
    shift: jnp.ndarray  # [E] shift size of each training environment (unused for observational)


class NeuralParameters(NamedTuple):
    log_decay: jnp.ndarray
    bias: jnp.ndarray
    input_weights: jnp.ndarray  # [d, d - 1, H]
    hidden_bias: jnp.ndarray  # [d, H]
    output_weights: jnp.ndarray  # [d, H]
    log_sigma: jnp.ndarray
    shift: jnp.ndarray


def linear_drift(parameters: LinearParameters) -> LinearDrift:
    log_decay = parameters.log_decay - jnp.mean(parameters.log_decay)
    return LinearDrift(log_decay, parameters.weights, parameters.bias)


def dense_parents(num_variables: int) -> np.ndarray:
    """``[d, d - 1]``: every other variable is a parent of each variable."""
    columns = [[i for i in range(num_variables) if i != j] for j in range(num_variables)]
    return np.array(columns, np.int32)


def neural_drift_builder(center: np.ndarray) -> Callable[[NeuralParameters], NeuralDrift]:
    """Dense neural drift: every other variable is a parent; inputs are ``x - center``."""
    d = center.size
    parents = dense_parents(d)

    def build(parameters: NeuralParameters) -> NeuralDrift:
        return NeuralDrift(
            log_decay=parameters.log_decay - jnp.mean(parameters.log_decay),
            bias=parameters.bias,
            center=jnp.asarray(center, jnp.float32),
            parents=jnp.asarray(parents),
            parent_mask=jnp.ones(parents.shape, jnp.float32),
            input_weights=parameters.input_weights,
            hidden_bias=parameters.hidden_bias,
            output_weights=parameters.output_weights,
        )

    return build


def initial_linear(simulation: Simulation) -> LinearParameters:
    """``A = -I``; bias, noise and shifts matched to the observational sample and mean changes."""
    moments = [np.mean(x, axis=0) for x in simulation.samples]
    variance = np.var(simulation.samples[0], axis=0)
    target = simulation.train.target
    shift = [0.0 if t < 0 else m[t] - moments[0][t] for t, m in zip(target, moments)]
    d = variance.size
    return LinearParameters(
        log_decay=jnp.zeros(d),
        weights=jnp.zeros((d, d)),
        bias=jnp.asarray(moments[0], jnp.float32),
        log_sigma=jnp.asarray(0.5 * np.log(2.0 * variance), jnp.float32),
        shift=jnp.asarray(shift, jnp.float32),
    )


def initial_neural(simulation: Simulation, key) -> NeuralParameters:
    linear = initial_linear(simulation)
    d = linear.bias.size
    spread = float(np.mean(np.std(simulation.samples[0], axis=0)))
    # Unit-variance pre-activations for inputs of the observational spread; zero output weights
    # make the start the same decoupled drift as the linear models'.
    scale = 1.0 / (spread * np.sqrt(d - 1))
    return NeuralParameters(
        log_decay=linear.log_decay,
        bias=linear.bias,
        input_weights=scale * jax.random.normal(key, (d, d - 1, HIDDEN)),
        hidden_bias=jnp.zeros((d, HIDDEN)),
        output_weights=jnp.zeros((d, HIDDEN)),
        log_sigma=linear.log_sigma,
        shift=linear.shift,
    )


class TrainingData(NamedTuple):
    moments: SampleMoments  # [E]
    padded: jnp.ndarray  # [E, n_max, d]
    counts: jnp.ndarray  # [E]
    bandwidths: jnp.ndarray  # [E] median distance within each environment
    mask: jnp.ndarray  # [E, d] target one-hot


def training_data(simulation: Simulation) -> TrainingData:
    samples = simulation.samples
    d = samples[0].shape[1]
    size = max(x.shape[0] for x in samples)
    padded = np.zeros((len(samples), size, d), np.float32)
    for e, x in enumerate(samples):
        padded[e, : x.shape[0]] = x
    groups = np.concatenate([np.full(x.shape[0], e) for e, x in enumerate(samples)])
    return TrainingData(
        moments=SampleMoments.from_sample(
            jnp.asarray(np.concatenate(samples), jnp.float32), groups, len(samples)
        ),
        padded=jnp.asarray(padded),
        counts=jnp.asarray([x.shape[0] for x in samples]),
        bandwidths=jnp.asarray([np.median(pdist(x)) for x in samples], jnp.float32),
        mask=jnp.asarray(target_mask(simulation.train.target, d)),
    )


def off_diagonal(matrix):
    return matrix * (1.0 - jnp.eye(matrix.shape[-1], dtype=matrix.dtype))


def exact_loss(laplace_scale: float | None):
    """Negative log-likelihood (per sample) of all environments, plus a Laplace prior if given.

    With ``laplace_scale`` ``b`` the minimiser is the MAP estimate under independent
    ``Laplace(0, b)`` priors on the off-diagonal weights (flat priors elsewhere).
    """

    def loss(parameters: LinearParameters, data: TrainingData, key=None):
        interventions = shift_interventions(data.mask, parameters.shift)
        values = stationary_log_likelihood(
            linear_drift(parameters), jnp.exp(parameters.log_sigma), data.moments, interventions
        )
        total = jnp.sum(data.moments.count)
        negative = -jnp.sum(values) / total
        if laplace_scale is None:
            return negative
        prior = jnp.sum(jnp.abs(off_diagonal(parameters.weights))) / laplace_scale
        return negative + prior / total

    return loss


def regulation_strength(parameters) -> jnp.ndarray:
    """``[d, d]`` size of each regulation ``source -> target`` (row = target).

    ``|W_ji|`` for a linear drift; the norm of the input weights of source ``i`` in target
    ``j``'s network for a neural drift.
    """
    if isinstance(parameters, LinearParameters):
        return jnp.abs(off_diagonal(parameters.weights))
    d = parameters.bias.shape[0]
    norms = jnp.sqrt(jnp.sum(jnp.square(parameters.input_weights), axis=-1) + 1e-12)
    rows = np.repeat(np.arange(d), d - 1).reshape(d, d - 1)
    return jnp.zeros((d, d)).at[rows, dense_parents(d)].set(norms)


def sparsity(parameters) -> jnp.ndarray:
    """stadion's sparsity penalty: group lassos over each variable's inputs and outputs, / d.

    ``(mean_j sum_i S_ji + sum_i |S_{:, i}|_2 / d) / d`` with ``S`` the regulation strengths;
    the ``1e-12`` keeps the square root differentiable at zero weights.
    """
    strength = regulation_strength(parameters)
    d = strength.shape[0]
    ingoing = jnp.mean(jnp.sum(strength, axis=1))
    outgoing = jnp.sum(jnp.sqrt(jnp.sum(jnp.square(strength), axis=0) + 1e-12)) / d
    return (ingoing + outgoing) / d


def minibatches(key, data: TrainingData, batch_size: int):
    """``[E, B, d]``: ``B`` distinct points of each environment, drawn without replacement."""
    scores = jax.random.uniform(key, data.padded.shape[:2])
    valid = jnp.arange(data.padded.shape[1])[None, :] < data.counts[:, None]
    chosen = jnp.argsort(jnp.where(valid, scores, 2.0), axis=1)[:, :batch_size]
    return jnp.take_along_axis(data.padded, chosen[..., None], axis=1)


def minibatch_v_weights(batch_size: int, sample_size):
    """``[B, B]`` pair weights under which ``kds(..., statistic="v")`` of a uniform minibatch of
    ``B`` distinct points of a sample of ``sample_size`` points is an unbiased estimate of the
    whole sample's V-statistic ``V_N = ((N - 1) U_N + mean(diagonal)) / N``: distinct pairs
    ``(N - 1) / (N B (B - 1))``, diagonal ``1 / (N B)``. The diagonal bias is then ``1 / N``,
    not ``1 / B``; the expected loss is ``V_N >= 0`` (one minibatch's value need not be, as
    these weights are not positive semi-definite for ``B < N``).
    """
    off_diagonal = 1.0 - jnp.eye(batch_size)
    distinct = (sample_size - 1.0) / (sample_size * batch_size * (batch_size - 1.0))
    return distinct * off_diagonal + jnp.eye(batch_size) / (sample_size * batch_size)


def kds_loss(build: Callable, batch_size: int, statistic: str = "v", penalty: float = SPARSITY):
    """Mean over environments of the KDS of a minibatch of each environment's sample.

    ``batch_size`` at most the smallest environment's size; ``statistic`` ``"v"``
    (the whole environment's V-statistic, :func:`minibatch_v_weights`) or ``"u"``; ``penalty`` times
    :func:`sparsity` is added, as in stadion.
    """

    def loss(parameters, data: TrainingData, key):
        drift = build(parameters)
        sigma = jnp.exp(parameters.log_sigma)
        interventions = shift_interventions(data.mask, parameters.shift)
        points = minibatches(key, data, batch_size)

        def one(row, x, bandwidth, count):
            if statistic == "u":
                return kds(intervene(drift, row), sigma, x, bandwidth=bandwidth)
            weights = minibatch_v_weights(x.shape[0], count)
            return kds(
                intervene(drift, row), sigma, x, bandwidth=bandwidth, weights=weights, statistic="v"
            )

        values = jax.vmap(one)(interventions, points, data.bandwidths, data.counts)
        return jnp.mean(values) + penalty * sparsity(parameters)

    return loss


# ---------------------------------------------------------------------------------------------
# Optimisation


class FitResult(NamedTuple):
    parameters: NamedTuple
    final_loss: float
    compile_seconds: float
    fit_seconds: float
    num_steps: int
    rejected: int


def _select(condition, when_true, when_false):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition, a, b), when_true, when_false)


def optimise(loss, parameters, data, *, num_steps: int, learning_rate: float, key) -> FitResult:
    """Adam in one jitted ``lax.scan``; a non-finite loss sends it back to the last good point.

    The exact likelihood is NaN where an update made the drift unstable (no stationary law);
    the step is then undone and the step size halved, a backtracking that keeps every accepted
    drift stable. Compilation (ahead of time) and the run are timed separately.
    """
    # Cosine decay to 5% of the rate: the minibatch KDS gradients stay noisy to the end.
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.05))

    def step(carry, inputs):
        step_key, data = inputs
        current, state, good, good_state, scale, rejected = carry
        value, gradient = jax.value_and_grad(loss)(current, data, step_key)
        finite = jnp.isfinite(value) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(gradient)])
        )
        updates, new_state = optimizer.update(gradient, state, current)
        moved = optax.apply_updates(current, jax.tree_util.tree_map(lambda u: scale * u, updates))
        carry = (
            _select(finite, moved, good),
            _select(finite, new_state, good_state),
            _select(finite, current, good),
            _select(finite, state, good_state),
            jnp.where(finite, scale, 0.5 * scale),
            rejected + (~finite).astype(jnp.int32),
        )
        return carry, value

    def run(parameters, keys, data):
        # The data are an argument, not a closed-over constant: XLA would otherwise fold the
        # data-only products (e.g. ``x x^T``) at compile time, for seconds.
        state = optimizer.init(parameters)
        start = (parameters, state, parameters, state, jnp.ones(()), jnp.zeros((), jnp.int32))

        def body(carry, step_key):
            return step(carry, (step_key, data))

        (last, _, good, _, _, rejected), values = jax.lax.scan(body, start, keys)
        final = loss(last, data, keys[-1])
        return _select(jnp.isfinite(final), last, good), values, rejected

    keys = jax.random.split(key, num_steps)
    started = time.perf_counter()
    compiled = jax.jit(run).lower(parameters, keys, data).compile()
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fitted, values, rejected = jax.block_until_ready(compiled(parameters, keys, data))
    fit_seconds = time.perf_counter() - started
    return FitResult(
        fitted, float(values[-1]), compile_seconds, fit_seconds, num_steps, int(rejected)
    )


# ---------------------------------------------------------------------------------------------
# Held-out shifts and predictions


def calibrate(objective, operands, num_environments: int) -> np.ndarray:
    """Minimiser of each held-out environment's objective, quadratic in its unknown shift.

    ``objective(shifts, *operands)`` maps ``[E_held]`` shifts to ``[E_held]`` values; three
    evaluations (shifts -1, 0, 1) fit each parabola exactly. The operands (drift, data) are
    arguments of the jitted objective rather than constants that XLA would fold at compile time.
    """
    evaluate = jax.jit(objective)
    ones = jnp.ones(num_environments)
    low, middle, high = (
        np.asarray(evaluate(value * ones, *operands), np.float64) for value in (-1.0, 0.0, 1.0)
    )
    curvature = high + low - 2.0 * middle
    if np.any(curvature <= 0):
        raise RuntimeError("A calibration objective is not convex in the shift.")
    return (low - high) / (2.0 * curvature)


def held_out_mask(simulation: Simulation) -> jnp.ndarray:
    return jnp.asarray(target_mask(simulation.held_out.target, simulation.sigma.size))


def likelihood_objective(shifts, drift, sigma, mask, moments):
    return -stationary_log_likelihood(drift, sigma, moments, shift_interventions(mask, shifts))


def kds_objective(shifts, drift, sigma, mask, points, bandwidths):
    def one(row, x, bandwidth):
        return kds(intervene(drift, row), sigma, x, bandwidth=bandwidth, statistic="v")

    return jax.vmap(one)(shift_interventions(mask, shifts), points, bandwidths)


def calibrate_exact(simulation: Simulation, drift: LinearDrift, sigma) -> np.ndarray:
    num_environments = simulation.calibration.shape[0]
    moments = SampleMoments.from_sample(
        jnp.asarray(simulation.calibration.reshape(-1, simulation.sigma.size), jnp.float32),
        np.repeat(np.arange(num_environments), CALIBRATION_SAMPLES),
        num_environments,
    )
    operands = (drift, sigma, held_out_mask(simulation), moments)
    return calibrate(likelihood_objective, operands, num_environments)


def calibrate_kds(simulation: Simulation, drift, sigma) -> np.ndarray:
    points = jnp.asarray(simulation.calibration, jnp.float32)
    bandwidths = jnp.asarray([np.median(pdist(x)) for x in simulation.calibration], jnp.float32)
    operands = (drift, sigma, held_out_mask(simulation), points, bandwidths)
    return calibrate(kds_objective, operands, points.shape[0])


class Prediction(NamedTuple):
    means: np.ndarray  # [E_all, d]
    covariances: np.ndarray  # [E_all, d, d]
    samples: np.ndarray  # [E_all, 500, d]


def all_interventions(simulation: Simulation, train_shift, held_out_shift) -> Intervention:
    target = np.concatenate([simulation.train.target, simulation.held_out.target])
    shift = np.concatenate([np.asarray(train_shift), np.asarray(held_out_shift)])
    return shift_interventions(target_mask(target, simulation.sigma.size), shift)


def predict_linear(simulation, drift, sigma, train_shift, held_out_shift, rng) -> Prediction:
    interventions = all_interventions(simulation, train_shift, held_out_shift)
    means, covariances = jax.jit(stationary_moments)(drift, sigma, interventions)
    means, covariances = np.asarray(means, np.float64), np.asarray(covariances, np.float64)
    samples = gaussian_draws(rng, means, covariances, EVALUATION_SAMPLES)
    return Prediction(means, covariances, samples)


def predict_neural(simulation, drift, sigma, train_shift, held_out_shift, key) -> Prediction:
    """Simulate 500 chains per environment from observational training points (Euler-Maruyama)."""
    interventions = all_interventions(simulation, train_shift, held_out_shift)
    num_environments = interventions.shift.shape[0]
    rows = jax.tree_util.tree_map(
        lambda field: jnp.repeat(field, EVALUATION_SAMPLES, axis=0), interventions
    )
    start_key, chain_key = jax.random.split(key)
    observational = jnp.asarray(simulation.samples[0], jnp.float32)
    initial = observational[
        jax.random.randint(start_key, (rows.shift.shape[0],), 0, observational.shape[0])
    ]
    slowest = float(jnp.min(drift.decay))
    draws = simulate_chains(
        chain_key,
        drift,
        sigma,
        initial,
        intervention=rows,
        dt=0.01,
        burn_in=min(10.0 / slowest, 50.0),
        num_samples=1,
    )
    return empirical(
        np.asarray(draws, np.float64).reshape(num_environments, EVALUATION_SAMPLES, -1)
    )


def empirical(samples: np.ndarray) -> Prediction:
    """A law known through samples ``[E, m, d]``: sample means and covariances."""
    means = samples.mean(axis=1)
    centred = samples - means[:, None]
    covariances = np.einsum("eni,enj->eij", centred, centred) / (samples.shape[1] - 1)
    return Prediction(means, covariances, samples)


# ---------------------------------------------------------------------------------------------
# Metrics and tables


def scores(simulation: Simulation, prediction: Prediction) -> dict[str, float]:
    """Covariance error, mean RMSE and energy distance, averaged over training / held-out."""
    if not np.all(np.isfinite(prediction.covariances)):
        return {}
    true_cov = simulation.covariances
    covariance_error = np.linalg.norm(prediction.covariances - true_cov, axis=(1, 2)) / (
        np.linalg.norm(true_cov, axis=(1, 2))
    )
    mean_error = np.sqrt(np.mean((prediction.means - simulation.means) ** 2, axis=1))
    energy = np.array(
        [
            metrics.energy_distance(predicted, observed)
            for predicted, observed in zip(prediction.samples, simulation.evaluation)
        ]
    )
    train = np.arange(simulation.means.shape[0]) < simulation.train.target.size
    result = {}
    for name, values in (("cov", covariance_error), ("mean", mean_error), ("energy", energy)):
        result[f"{name} train"] = float(values[train].mean())
        result[f"{name} held-out"] = float(values[~train].mean())
    return result


def no_change(simulation: Simulation, rng) -> Prediction:
    """Every environment predicted by the observational training sample's Gaussian."""
    observational = simulation.samples[0]
    count = simulation.means.shape[0]
    mean = np.repeat(observational.mean(axis=0)[None], count, axis=0)
    covariance = np.repeat(np.cov(observational, rowvar=False)[None], count, axis=0)
    return Prediction(mean, covariance, gaussian_draws(rng, mean, covariance, EVALUATION_SAMPLES))


COLUMNS = (
    "method",
    "fit s",
    "compile s",
    "steps",
    "ms/step",
    "cov err train",
    "cov err held-out",
    "mean RMSE train",
    "mean RMSE held-out",
    "energy train",
    "energy held-out",
)


def markdown(rows: list[dict], columns) -> str:
    def cell(value):
        if isinstance(value, float):
            return "nan" if not np.isfinite(value) else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def fit_row(name: str, result: FitResult | None, score: dict[str, float]) -> dict:
    row = {"method": name}
    if result is not None:
        row.update(
            {
                "fit s": result.fit_seconds,
                "compile s": result.compile_seconds,
                "steps": result.num_steps,
                "ms/step": 1e3 * result.fit_seconds / result.num_steps,
            }
        )
        if result.rejected:
            row["method"] += f" ({result.rejected} steps undone)"
    if not score:
        row["method"] += " [no stationary law: unstable drift]"
    names = {"cov": "cov err", "mean": "mean RMSE", "energy": "energy"}
    for key, value in score.items():
        kind, split = key.split(" ")
        row[f"{names[kind]} {split}"] = value
    return row


class Method(NamedTuple):
    name: str
    kind: str  # "exact", "linear" (KDS) or "neural" (KDS)
    statistic: str = "v"  # KDS estimator
    laplace_scale: float | None = None  # exact fit: MAP under this Laplace prior if given


def methods(arguments) -> list[Method]:
    chosen = [
        Method("exact likelihood (MLE), linear", "exact"),
        Method(
            f"exact likelihood, MAP Laplace({LAPLACE_SCALE}), linear",
            "exact",
            laplace_scale=LAPLACE_SCALE,
        ),
        Method("KDS V-statistic + sparsity, linear", "linear"),
    ]
    if not arguments.no_neural:
        chosen.append(Method(f"KDS V-statistic + sparsity, neural (H={HIDDEN})", "neural"))
    if not arguments.no_u_statistic:
        chosen.append(Method("KDS U-statistic (kds as is) + sparsity, linear", "linear", "u"))
    return chosen


def batch_size(arguments, data: TrainingData) -> int:
    return min(arguments.batch_size, int(np.min(np.asarray(data.counts))))


def fit_and_predict(method: Method, simulation, data, arguments, key, rng):
    """Fit one method, estimate the held-out shifts, predict every environment's law."""
    if method.kind == "exact":
        loss, build = exact_loss(method.laplace_scale), linear_drift
        start = initial_linear(simulation)
    elif method.kind == "linear":
        build, start = linear_drift, initial_linear(simulation)
        loss = kds_loss(build, batch_size(arguments, data), method.statistic)
    else:
        build = neural_drift_builder(simulation.samples[0].mean(axis=0))
        start = initial_neural(simulation, jax.random.fold_in(key, 1))
        loss = kds_loss(build, batch_size(arguments, data), method.statistic)
    learning_rate = LEARNING_RATE["exact" if method.kind == "exact" else f"kds {method.kind}"]
    result = optimise(
        loss, start, data, num_steps=arguments.steps, learning_rate=learning_rate, key=key
    )
    drift, sigma = build(result.parameters), jnp.exp(result.parameters.log_sigma)
    shift = result.parameters.shift
    if method.kind == "neural":
        held = calibrate_kds(simulation, drift, sigma)
        return result, predict_neural(
            simulation, drift, sigma, shift, held, jax.random.fold_in(key, 2)
        )
    if spectral_abscissa(drift.matrix()) >= 0:
        return result, None
    if method.kind == "exact":
        held = calibrate_exact(simulation, drift, sigma)
    else:
        held = calibrate_kds(simulation, drift, sigma)
    return result, predict_linear(simulation, drift, sigma, shift, held, rng)


def run_problem(name: str, arguments) -> None:
    problem = PROBLEMS[name]
    simulation = simulate(problem, arguments.seed)
    data = training_data(simulation)
    key = jax.random.key(arguments.seed)
    rng = np.random.default_rng(arguments.seed + 1)
    rows = []
    for method in methods(arguments):
        result, prediction = fit_and_predict(method, simulation, data, arguments, key, rng)
        score = {} if prediction is None else scores(simulation, prediction)
        rows.append(fit_row(method.name, result, score))
    truth = simulation.drift
    oracle = predict_linear(
        simulation,
        truth,
        simulation.sigma,
        simulation.train.shift,
        calibrate_exact(simulation, truth, simulation.sigma),
        rng,
    )
    baselines = {
        "true drift, held-out shifts calibrated": oracle,
        "no change (observational Gaussian)": no_change(simulation, rng),
        # 500 fresh true samples per environment, scored like a model known through samples.
        "noise floor: 500 fresh true samples": empirical(simulation.reference),
    }
    for label, prediction in baselines.items():
        rows.append(fit_row(label, None, scores(simulation, prediction)))
    print(
        f"\n### {name}: n = {problem.num_samples} x d = {problem.num_variables}, "
        f"{simulation.train.target.size} training environments (1 observational), "
        f"{simulation.held_out.target.size} held-out shift environments; KDS batch "
        f"{batch_size(arguments, data)} per environment; stadion fits these two problems in "
        f"{STADION_FIT_SECONDS} s (issue)\n"
    )
    print(markdown(rows, COLUMNS))


def run_timing(arguments) -> None:
    """Milliseconds per optimisation step against d (n = 5,000 over up to 11 environments)."""
    rows = []
    for d in arguments.timing_dims:
        simulation = simulate(Problem(5000, d, min(10, d), 0), arguments.seed)
        data = training_data(simulation)
        key = jax.random.key(arguments.seed)
        start = initial_linear(simulation)
        batch, everything = batch_size(arguments, data), int(np.min(np.asarray(data.counts)))
        losses = {
            "exact (one Lyapunov solve per environment)": (exact_loss(LAPLACE_SCALE), start),
            f"KDS linear, batch {batch}": (kds_loss(linear_drift, batch), start),
            "KDS linear, all points": (kds_loss(linear_drift, everything), start),
        }
        if not arguments.no_neural:
            build = neural_drift_builder(simulation.samples[0].mean(axis=0))
            losses[f"KDS neural, batch {batch}"] = (
                kds_loss(build, batch),
                initial_neural(simulation, key),
            )
        row = {
            "d": d,
            "environments": simulation.train.target.size,
            "points per environment": everything,
        }
        for label, (loss, parameters) in losses.items():
            result = optimise(
                loss,
                parameters,
                data,
                num_steps=arguments.timing_steps,
                learning_rate=1e-3,
                key=key,
            )
            row[label + " ms/step"] = 1e3 * result.fit_seconds / arguments.timing_steps
        rows.append(row)
    print(
        "\n### time per optimisation step (value, gradient, Adam) against d: n = 5,000 over "
        f"min(d, 10) + 1 environments, mean of {arguments.timing_steps} steps after "
        f"compilation; stadion: {1e3 * STADION_SECONDS_PER_STEP_D100:.0f} ms per KDS step at "
        "d = 100 (issue)\n"
    )
    print(markdown(rows, list(rows[0])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems", nargs="+", choices=sorted(PROBLEMS), default=["small", "large"]
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128, help="KDS points per environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-neural", action="store_true", help="skip the neural KDS fit")
    parser.add_argument(
        "--no-u-statistic", action="store_true", help="skip the U-statistic KDS fit"
    )
    parser.add_argument("--timing-dims", type=int, nargs="*", default=[5, 20, 100])
    parser.add_argument("--timing-steps", type=int, default=20)
    arguments = parser.parse_args()
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, seed {arguments.seed}")
    for name in arguments.problems:
        run_problem(name, arguments)
    if arguments.timing_dims:
        run_timing(arguments)


if __name__ == "__main__":
    main()
