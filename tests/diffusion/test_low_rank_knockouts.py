"""Stationary laws of knockout conditions by low-rank updates of one inverse, against the exact
per-condition solves (scipy in float64) and their gradients; shift screens' shared law from the
same inverses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from causalcell.diffusion import (
    LinearDrift,
    _stationary,
    intervene_linear,
    stationary_moments,
    stationary_moments_of_knockouts,
    stationary_moments_of_shifts,
)
from causalcell.diffusion._lyapunov import cayley_resolvent
from causalcell.interventions import Intervention, from_targets

GENES, CONDITIONS = 9, 6


def screen():
    """A stable 9-gene drift and 6 conditions knocking out 0-3 genes each, with shifts, levels
    and noise scales of their own."""
    rng = np.random.default_rng(1)
    matrix = 0.3 * rng.normal(size=(GENES, GENES))
    np.fill_diagonal(matrix, -2.0)
    drift = LinearDrift.from_matrix(jnp.float32(matrix), jnp.float32(rng.normal(size=GENES)))
    knocked = np.zeros((CONDITIONS, GENES), bool)
    for row, genes in enumerate([[], [3], [0, 8], [5], [1, 2, 7], [4, 6]]):
        knocked[row, genes] = True
    shape = (CONDITIONS, GENES)
    intervention = Intervention.identity(GENES, batch_shape=(CONDITIONS,))._replace(
        knockout=jnp.asarray(knocked),
        knockout_level=jnp.float32(rng.normal(size=shape)),
        shift=jnp.float32(0.2 * rng.normal(size=shape)),
        noise_scale=jnp.float32(rng.uniform(0.5, 1.5, shape)),
    )
    return drift, jnp.float32(rng.uniform(0.5, 1.0, GENES)), intervention


def test_moments_equal_the_exact_solves():
    drift, sigma, intervention = screen()
    matrices, biases, scales = (
        np.asarray(value, np.float64) for value in intervene_linear(drift, sigma, intervention)
    )
    exact_means = np.stack([-np.linalg.solve(a, b) for a, b in zip(matrices, biases)])
    exact_covariances = np.stack(
        [
            scipy.linalg.solve_continuous_lyapunov(a, -np.diag(s**2))
            for a, s in zip(matrices, scales)
        ]
    )
    means, covariances = stationary_moments_of_knockouts(drift, sigma, intervention, rank=3)
    # float32 arithmetic on values of order 1-3 (measured errors 2e-7 and 9e-8).
    np.testing.assert_allclose(means, exact_means, atol=1e-5)
    np.testing.assert_allclose(covariances, exact_covariances, atol=1e-5)
    # A larger rank pads with unused slots and changes nothing.
    padded, _ = stationary_moments_of_knockouts(drift, sigma, intervention, rank=5)
    np.testing.assert_allclose(padded, means, atol=1e-6)
    # Rank 0: no condition knocks anything out (the control row alone).
    control = jax.tree_util.tree_map(lambda field: field[:1], intervention)
    alone, covariance = stationary_moments_of_knockouts(drift, sigma, control, rank=0)
    np.testing.assert_allclose(alone, exact_means[:1], atol=1e-5)
    np.testing.assert_allclose(covariance, exact_covariances[:1], atol=1e-5)


def test_gradients_equal_those_of_the_per_condition_solves():
    drift, sigma, intervention = screen()

    def loss(moments, weights, log_sigma):
        changed = LinearDrift(drift.log_decay, weights, drift.bias)
        means, covariances = moments(changed, jnp.exp(log_sigma), intervention)
        return jnp.sum(jnp.sin(means)) + jnp.sum(jnp.cos(covariances))

    def low_rank(changed, scales, interventions):
        return stationary_moments_of_knockouts(changed, scales, interventions, rank=3)

    arguments = (drift.weights, jnp.log(sigma))
    exact = jax.grad(lambda *a: loss(stationary_moments, *a), argnums=(0, 1))(*arguments)
    updated = jax.grad(lambda *a: loss(low_rank, *a), argnums=(0, 1))(*arguments)
    for ours, theirs in zip(updated, exact):
        # Gradients of order 1-3 in float32 (measured 5e-7).
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_a_condition_beyond_the_rank_raises_or_is_nan_under_jit():
    drift, sigma, intervention = screen()
    with pytest.raises(ValueError, match="knocks out 3 genes, more than rank=2"):
        stationary_moments_of_knockouts(drift, sigma, intervention, rank=2)
    # A NumPy mask is concrete while a jit is traced: it raises there too, before any work.
    numpy_mask = intervention._replace(knockout=np.asarray(intervention.knockout))
    with pytest.raises(ValueError, match="knocks out 3 genes, more than rank=2"):
        jax.jit(
            lambda w: stationary_moments_of_knockouts(
                LinearDrift(drift.log_decay, w, drift.bias), sigma, numpy_mask, rank=2
            )
        )(drift.weights)
    # Traced, it cannot raise: that condition's moments are NaN, the others exact.
    means, covariances = jax.jit(
        lambda knocked: stationary_moments_of_knockouts(
            drift, sigma, intervention._replace(knockout=knocked), rank=2
        )
    )(intervention.knockout)
    assert np.isnan(means[4]).all() and np.isnan(covariances[4]).all()
    exact, _ = stationary_moments(drift, sigma, intervention)
    np.testing.assert_allclose(np.delete(means, 4, 0), np.delete(exact, 4, 0), atol=1e-5)


@pytest.mark.parametrize("shared", [None, "knockout"])
def test_shift_laws_from_the_drifts_inverses_equal_the_solves(shared, monkeypatch):
    # LCD passes the unintervened drift's inverses; a knockout every condition shares (a do
    # request on a shift screen) is then a Woodbury update of rank 1.
    drift, sigma, _ = screen()
    shifts = jnp.float32(np.random.default_rng(2).normal(size=(CONDITIONS, GENES)))

    def loss(weights, inverses):
        # Built where it is used, inside the jit below as a do request is inside a program.
        common = None if shared is None else from_targets(GENES, [4], "knockout", -1.0)
        changed = LinearDrift(drift.log_decay, weights, drift.bias)
        if inverses:
            base = changed.matrix()
            inverses = (jnp.linalg.inv(base), *cayley_resolvent(base))
        means, covariance = stationary_moments_of_shifts(changed, sigma, shifts, common, inverses)
        return jnp.sum(jnp.sin(means)) + jnp.sum(jnp.cos(covariance)), (means, covariance)

    (_, exact), exact_gradient = jax.value_and_grad(loss, has_aux=True)(drift.weights, None)

    # Under jit, as in a fit: the shared knockout's mask must still be read as concrete, so
    # no Lyapunov solve by the solver's own inverse runs.
    def solver_inverse(*args):
        raise AssertionError("solved with the solver's own inverse")

    monkeypatch.setattr(_stationary, "solve_continuous_lyapunov", solver_inverse)
    compiled = jax.jit(jax.value_and_grad(lambda w: loss(w, True), has_aux=True))
    (_, ours), gradient = compiled(drift.weights)
    # float32 on values and gradients of order 1-3, as the knockout tests above.
    for value, reference in zip(ours, exact):
        np.testing.assert_allclose(value, reference, atol=1e-5)
    np.testing.assert_allclose(gradient, exact_gradient, atol=1e-4)
