"""Exact stationary log-likelihood of a linear diffusion: against scipy's Gaussian densities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import solve_continuous_lyapunov
from scipy.stats import multivariate_normal

from causalcell.diffusion import (
    LinearDrift,
    SampleMoments,
    stationary_log_likelihood,
)
from causalcell.interventions import Intervention, from_targets

# Non-symmetric drift (one-way edges 0 -> 1 and 1 -> 2), so the law is not a gradient field's.
MATRIX = np.array([[-1.0, 0.0, 0.0], [0.8, -1.5, 0.0], [0.0, -0.6, -1.0]])
BIAS = np.array([0.5, 0.2, -0.3])
SIGMA = np.array([0.5, 0.6, 0.4])


def scipy_log_likelihood(matrix, bias, sigma, x):
    """Sum of log N(x_a; -A^{-1} b, Sigma) with Sigma from scipy's Lyapunov solver (float64)."""
    mean = -np.linalg.solve(matrix, bias)
    covariance = solve_continuous_lyapunov(matrix, -np.diag(sigma**2))
    return multivariate_normal(mean, covariance).logpdf(x).sum()


def test_matches_scipy_density_summed_over_points():
    with jax.enable_x64(True):
        x = np.random.default_rng(0).normal(0.3, 0.7, (40, 3))
        drift = LinearDrift.from_matrix(jnp.asarray(MATRIX), jnp.asarray(BIAS))
        value = stationary_log_likelihood(drift, SIGMA, SampleMoments.from_sample(x))
        # float64 throughout: agreement to round-off of a sum of 40 terms of size ~5.
        np.testing.assert_allclose(
            float(value), scipy_log_likelihood(MATRIX, BIAS, SIGMA, x), rtol=1e-10
        )


def test_groups_pair_with_intervention_rows():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        x = rng.normal(0.0, 1.0, (30, 3))
        groups = np.repeat([0, 1, 2], [12, 10, 8])
        shifts = np.array([[0.0, 0.0, 0.0], [0.0, 1.5, 0.0], [0.0, 0.0, -2.0]])
        identity = Intervention.identity(3, (3,))
        intervention = identity._replace(shift=jnp.asarray(shifts))
        drift = LinearDrift.from_matrix(jnp.asarray(MATRIX), jnp.asarray(BIAS))
        moments = SampleMoments.from_sample(x, groups)
        values = stationary_log_likelihood(drift, SIGMA, moments, intervention)
        expected = [
            scipy_log_likelihood(MATRIX, BIAS + shifts[group], SIGMA, x[groups == group])
            for group in range(3)
        ]
        # Same float64 round-off as above, per group.
        np.testing.assert_allclose(np.asarray(values), expected, rtol=1e-10)
        np.testing.assert_array_equal(np.asarray(moments.count), [12, 10, 8])


def test_one_dimensional_closed_form_and_maximum_at_the_sample_law():
    # dx = -a x dt + s dW has law N(b / a, s^2 / (2 a)); the likelihood of a sample with mean m
    # and variance v is maximal where b / a = m and s^2 / (2 a) = v, whatever the decay a.
    x = jnp.array([[0.2], [1.4], [-0.6], [0.9]])
    moments = SampleMoments.from_sample(x)
    mean, variance = float(jnp.mean(x)), float(jnp.var(x))

    def negative(parameters):
        log_decay, bias, log_sigma = parameters
        drift = LinearDrift(log_decay[None], jnp.zeros((1, 1)), bias[None])
        return -stationary_log_likelihood(drift, jnp.exp(log_sigma), moments)

    decay = 2.0
    best = jnp.array([np.log(decay), decay * mean, 0.5 * np.log(2.0 * decay * variance)])
    gradient = jax.grad(negative)(best)
    # float32: the gradient at the optimum is round-off, entries of the loss are O(5).
    np.testing.assert_allclose(np.asarray(gradient), 0.0, atol=1e-4)
    expected = -0.5 * 4 * (np.log(2 * np.pi * variance) + 1.0)
    np.testing.assert_allclose(-float(negative(best)), expected, rtol=1e-5)  # float32 round-off


def test_knockout_intervention_changes_the_covariance_as_stationary_moments_say():
    with jax.enable_x64(True):
        x = np.random.default_rng(2).normal(0.0, 1.0, (25, 3))
        drift = LinearDrift.from_matrix(jnp.asarray(MATRIX), jnp.asarray(BIAS))
        knockout = from_targets(3, [1], "knockout", 1.0)
        value = stationary_log_likelihood(drift, SIGMA, SampleMoments.from_sample(x), knockout)
        # Knocking out gene 1 pins its row to -1.5 (x_1 - 1): no parents, bias 1.5.
        pinned = MATRIX.copy()
        pinned[1] = [0.0, -1.5, 0.0]
        bias = BIAS.copy()
        bias[1] = 1.5
        np.testing.assert_allclose(
            float(value), scipy_log_likelihood(pinned, bias, SIGMA, x), rtol=1e-10
        )


def test_empty_group_raises():
    with pytest.raises(ValueError, match=r"Groups \[1\] have no point"):
        SampleMoments.from_sample(jnp.zeros((3, 2)), jnp.array([0, 0, 2]), 3)
