"""Path-wise counterfactuals of linear LCD (causalcell.models.lcd._counterfactual).

All JAX arithmetic is float32 (x64 off): "exact" identities are checked to 1e-4, about a
thousand float32 epsilons relative to the O(1) quantities involved, which leaves room for the
Lyapunov solve (a few Newton steps with inverses) and the Schur complement.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from causalcell.diffusion import LinearDrift, intervene_linear
from causalcell.interventions import Intervention, compose, from_targets
from causalcell.models.lcd._counterfactual import (
    compose_targets,
    counterfactual_conditional,
    counterfactual_counts,
    counterfactual_latents,
    paired_stationary_moments,
)
from causalcell.models.lcd._drift import linear_drift_from_sites
from causalcell.models.lcd._kinds import condition_interventions

EXACT = 1e-4  # float32 identities (see the module docstring)
CELLS = 40000  # one cell count everywhere, so tests of one kind share a compiled function


@jax.jit
def _conditional(drift, sigma, factual, action):
    """Joint moments and the law of x' | x, compiled once per state size."""
    mean, joint = paired_stationary_moments(drift, sigma, factual, action)
    return mean, joint, counterfactual_conditional(mean, joint)


def _values(kind, weights, seed=0, parameter=None):
    """One draw of LCD's global sites with a given raw weight matrix (row = target)."""
    rng = np.random.default_rng(seed)
    m = weights.shape[0]
    site = {"shift": "intervention_effect", "knockdown": "knockdown_strength"}.get(
        kind, "knockout_depth"
    )
    values = {
        "drift_weights": weights,
        "log_decay": rng.normal(0.0, 0.3, m),
        "log_scaling": np.zeros(m),
        "baseline": rng.normal(0.0, 1.0, m),
        "log_sigma": rng.normal(np.log(0.5), 0.3, m),
        site: rng.normal(-1.0, 0.5, m) if parameter is None else parameter,
    }
    return {name: jnp.asarray(value, jnp.float32) for name, value in values.items()}


def _posterior(m, seed):
    """Arbitrary per-cell Gaussian posteriors (means and full covariances) of CELLS cells."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(0.0, 0.3, (CELLS, m, m)) + np.eye(m) * 0.5
    return (
        jnp.asarray(rng.normal(0.0, 1.0, (CELLS, m)), jnp.float32),
        jnp.asarray(factor @ np.swapaxes(factor, -1, -2), jnp.float32),
    )


def _reference_law(values, targets, kind):
    """Stationary mean and covariance of one condition, by numpy and scipy (not our solver)."""
    drift = linear_drift_from_sites(values)
    intervention = condition_interventions(jnp.asarray(targets), kind, values, drift)
    matrix, bias, sigma = (
        np.asarray(v, np.float64)
        for v in intervene_linear(drift, jnp.exp(values["log_sigma"]), intervention)
    )
    mean = -np.linalg.solve(matrix, bias)
    return mean, scipy.linalg.solve_continuous_lyapunov(matrix, -np.diag(sigma**2))


def _dense_weights(m, seed):
    return np.random.default_rng(seed).normal(0.0, 0.4, (m, m))


def test_shift_counterfactual_is_the_mean_change_exactly():
    m = 4
    values = _values("shift", _dense_weights(m, 1))
    factual = np.array([[0, 1, 0, 0]], bool)
    action = np.array([[1, 0, 0, 1]], bool)
    mean, cov = _posterior(m, 2)
    x, x_cf = counterfactual_latents(values, factual, action, "shift", mean, cov, jax.random.key(0))
    change = _reference_law(values, action[0], "shift")[0]
    change = change - _reference_law(values, factual[0], "shift")[0]
    assert float(jnp.max(jnp.abs(x_cf - x - change))) < EXACT


def test_joint_lyapunov_covariance_matches_simulated_shared_path():
    # d = 3 drift with a cascade 0 -> 1 -> 2 and feedback 2 -> 0; the action knocks out gene 1
    # (which has parents) and scales gene 2's noise, so S' != S and the noise N is singular.
    matrix = np.array([[-1.0, 0.0, 0.3], [0.8, -1.5, 0.0], [-0.5, 0.6, -1.2]])
    sigma = np.array([0.5, 0.7, 0.4])
    bias = np.array([0.2, 0.0, -0.3])
    drift = LinearDrift.from_matrix(jnp.asarray(matrix, jnp.float32), jnp.asarray(bias))
    action = compose(
        from_targets(3, [1], "knockout", 1.0), from_targets(3, [2], "noise_scale", 1.5)
    )
    identity = Intervention.identity(3)
    mean, joint, _ = _conditional(drift, sigma, identity, action)
    mean, joint = np.asarray(mean, np.float64), np.asarray(joint, np.float64)
    # Closed form against scipy's Bartels-Stewart solver on the same (singular-noise) equation.
    knocked = np.array(matrix)
    knocked[1] = [0.0, matrix[1, 1], 0.0]  # row 1 pinned at its own decay
    stacked = scipy.linalg.block_diag(matrix, knocked)
    loadings = np.concatenate([sigma, sigma * np.array([1.0, 1.0, 1.5])])
    noise = np.outer(loadings, loadings) * np.tile(np.eye(3), (2, 2))
    reference = scipy.linalg.solve_continuous_lyapunov(stacked, -noise)
    np.testing.assert_allclose(joint, reference, atol=EXACT)
    # Brute force: Euler-Maruyama of both worlds driven by the same Gaussian increments.
    rng = np.random.default_rng(0)
    chains, step, burn_in, snapshots, gap = 2000, 0.005, 1600, 20, 200  # gap: 1 time unit
    stacked_bias = np.concatenate([bias, [0.2, -matrix[1, 1] * 1.0, -0.3]])
    z = np.tile(mean, (chains, 1))
    samples = []
    for index in range(burn_in + snapshots * gap):
        shared = rng.normal(0.0, np.sqrt(step), (chains, 3))
        z = z + (z @ stacked.T + stacked_bias) * step + np.tile(shared, (1, 2)) * loadings
        if index >= burn_in and (index - burn_in) % gap == gap - 1:
            samples.append(z)
    samples = np.concatenate(samples)
    empirical = np.cov(samples, rowvar=False)
    # Tolerance: 5 Monte Carlo standard errors of each covariance entry,
    # sqrt((J_ii J_jj + J_ij^2) / n) with n = 40000 / 1.3 (snapshots one time unit apart are
    # correlated, at most e^-1 ~ 0.37 with the slowest rate 1, inflating the variance by
    # (1 + rho^2) / (1 - rho^2) ~ 1.3), plus Euler-Maruyama's stationary bias, of relative
    # size step * rate / 2 <= 0.5% at rates <= 2: 1% of sqrt(J_ii J_jj) bounds it.
    diagonal = np.diag(reference)
    scale = np.sqrt(np.outer(diagonal, diagonal))
    standard_error = np.sqrt((scale**2 + reference**2) / (samples.shape[0] / 1.3))
    assert np.all(np.abs(empirical - reference) < 5 * standard_error + 0.01 * scale)
    # The cross-covariance is what the shared path adds: far from zero here.
    assert np.abs(reference[3:, :3]).max() > 10 * standard_error[3:, :3].max()


def test_knockout_of_a_root_pins_it_and_spares_non_descendants():
    # Raw weights (row = target): 0 -> 1, 2 -> 1, 2 -> 3; gene 0 has no parents, genes 2 and 3
    # are not its descendants.
    weights = np.zeros((4, 4))
    weights[1, 0], weights[1, 2], weights[3, 2] = 0.5, -0.4, 0.6
    values = _values("knockout", weights, seed=3)
    factual = np.zeros((1, 4), bool)
    action = np.array([[1, 0, 0, 0]], bool)
    mean, cov = _posterior(4, 4)
    x, x_cf = counterfactual_latents(
        values, factual, action, "knockout", mean, cov, jax.random.key(1)
    )
    level = values["baseline"][0] + values["knockout_depth"][0]
    # Same path, unaffected rows: non-descendants keep their factual values exactly.
    assert float(jnp.max(jnp.abs(x_cf[:, 2:] - x[:, 2:]))) < EXACT
    # The knocked-out root keeps its own fluctuation around the pinned level (the control
    # mean of the root is its baseline, by the model's parametrisation).
    shift = level - values["baseline"][0]
    assert float(jnp.max(jnp.abs(x_cf[:, 0] - x[:, 0] - shift))) < EXACT
    assert float(jnp.min(jnp.abs(x_cf[:, 1] - x[:, 1]))) > 1e-3  # the child does move


def test_counterfactual_marginal_is_the_intervened_stationary_law():
    m = 4
    values = _values("knockout", _dense_weights(m, 5), seed=5)
    factual = np.array([[0, 0, 1, 0]], bool)  # the cell's own knockout, gene 2 has parents
    action = compose_targets(factual, np.array([[1, 0, 0, 0]], bool))  # "had 0 also been KO"
    mu, sigma = _reference_law(values, factual[0], "knockout")
    mu_cf, sigma_cf = _reference_law(values, action[0], "knockout")
    # Analytically: offset + K mu = mu' and K Sigma K^T + L L^T = Sigma'.
    drift = linear_drift_from_sites(values)
    pair = condition_interventions(jnp.concatenate([factual, action]), "knockout", values, drift)
    first, second = (jax.tree.map(lambda leaf, i=i: leaf[i], pair) for i in (0, 1))
    _, _, (offset, gain, factor) = _conditional(drift, jnp.exp(values["log_sigma"]), first, second)
    np.testing.assert_allclose(offset + gain @ mu, mu_cf, atol=EXACT)
    np.testing.assert_allclose(gain @ sigma @ gain.T + factor @ factor.T, sigma_cf, atol=EXACT)
    # By sampling: x from its prior, x' from x' | x.
    prior_mean = jnp.broadcast_to(jnp.asarray(mu, jnp.float32), (CELLS, m))
    prior_cov = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (CELLS, m, m))
    x, x_cf = counterfactual_latents(
        values, factual, action, "knockout", prior_mean, prior_cov, jax.random.key(2)
    )
    # 5 Monte Carlo standard errors: sqrt(S_ii / n) for means, sqrt((S_ii S_jj + S_ij^2) / n)
    # for covariances, n = CELLS independent cells.
    diagonal = np.diag(sigma_cf)
    np.testing.assert_array_less(
        np.abs(np.asarray(x_cf).mean(0) - mu_cf), 5 * np.sqrt(diagonal / CELLS)
    )
    error = np.abs(np.cov(np.asarray(x_cf, np.float64), rowvar=False) - sigma_cf)
    assert np.all(error < 5 * np.sqrt((np.outer(diagonal, diagonal) + sigma_cf**2) / CELLS))
    # The factual draws are the prior's.
    np.testing.assert_array_less(
        np.abs(np.asarray(x).mean(0) - mu), 5 * np.sqrt(np.diag(sigma) / CELLS)
    )


def test_counterfactual_counts_couplings():
    rng = np.random.default_rng(6)
    log_rate = jnp.asarray(rng.normal(-5.0, 1.0, (50, 6)), jnp.float32)  # counts ~ 1-30
    sizes = jnp.asarray(rng.uniform(500, 2000, 50), jnp.float32)
    concentration = jnp.full(6, 5.0)
    observed = jnp.asarray(rng.poisson(np.exp(log_rate) * sizes[:, None]), jnp.float32)
    kept = counterfactual_counts(
        jax.random.key(3),
        log_rate,
        sizes,
        {"concentration": concentration},
        coupling="quantile",
        factual_log_rate=log_rate,
        observed_counts=observed,
    )
    # An unchanged law keeps every count (exactly, at these moderate counts; in far tails the
    # float32 cdf steps get too thin for the bisection of causalcell._core.coupling).
    np.testing.assert_array_equal(kept, observed)
    # "resample" is one NB draw; trace it only (compiling JAX's gamma-Poisson sampler takes
    # ~8 s here, and LCD.predict already exercises it).
    fresh = jax.eval_shape(
        counterfactual_counts,
        jax.random.key(4),
        log_rate + 1.0,
        sizes,
        {"concentration": concentration},
    )
    assert fresh.shape == observed.shape
    with pytest.raises(ValueError, match="coupling"):
        counterfactual_counts(
            jax.random.key(4), log_rate, sizes, {"concentration": concentration}, coupling="x"
        )
