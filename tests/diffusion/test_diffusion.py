"""Stationary diffusion maths against closed forms and exact references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from causalcell.diffusion import (
    LinearDrift,
    NeuralDrift,
    UnstableDriftError,
    check_stable,
    intervene,
    intervene_linear,
    sample_stationary,
    simulate_chains,
    solve_continuous_lyapunov,
    stationary_mean,
    stationary_moments,
    stationary_moments_of_shifts,
)
from causalcell.interventions import Intervention, compose, from_targets


def random_stable(rng, size, density=0.4):
    """Random non-symmetric drift: decays in [0.3, 3] plus sparse off-diagonal weights."""
    weights = rng.normal(0.0, 0.8, (size, size)) * (rng.random((size, size)) < density)
    np.fill_diagonal(weights, 0.0)
    matrix = weights - np.diag(rng.uniform(0.3, 3.0, size))
    shift = max(0.0, np.linalg.eigvals(matrix).real.max() + 0.2)
    return matrix - shift * np.eye(size)


@pytest.mark.parametrize("size", [1, 2, 10, 40])
def test_lyapunov_matches_scipy(size):
    rng = np.random.default_rng(size)
    drift = random_stable(rng, size)
    factor = rng.normal(size=(size, size))
    noise = factor @ factor.T + np.eye(size)
    reference = scipy.linalg.solve_continuous_lyapunov(drift, -noise)
    solution = np.asarray(solve_continuous_lyapunov(jnp.float32(drift), jnp.float32(noise)))
    # float32 carries ~1e-7 relative precision; the sign iteration is backward stable, so the
    # error is eps times the conditioning of the Lyapunov operator, <= ~1e2 for these draws.
    np.testing.assert_allclose(solution, reference, atol=2e-5 * np.abs(reference).max())


def test_lyapunov_is_batched_and_jittable():
    rng = np.random.default_rng(0)
    drifts = np.stack([random_stable(rng, 5) for _ in range(3)])
    noise = np.eye(5)
    batched = jax.jit(solve_continuous_lyapunov)(jnp.float32(drifts), jnp.float32(noise))
    one_by_one = np.stack([scipy.linalg.solve_continuous_lyapunov(d, -noise) for d in drifts])
    assert batched.shape == (3, 5, 5)
    # Same float32 argument as test_lyapunov_matches_scipy.
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5 * np.abs(one_by_one).max())


def test_lyapunov_gradient_matches_kronecker_reference():
    rng = np.random.default_rng(1)
    size = 4
    drift = random_stable(rng, size)
    noise = np.diag(rng.uniform(0.5, 2.0, size))
    weights = rng.normal(size=(size, size))

    def kronecker(drift, noise):
        # vec(A X + X A^T) = (I kron A + A kron I) vec(X) in column-major order.
        eye = jnp.eye(size)
        operator = jnp.kron(eye, drift) + jnp.kron(drift, eye)
        return jnp.linalg.solve(operator, -noise.T.reshape(-1)).reshape(size, size).T

    with jax.enable_x64(True):
        loss = lambda solve: lambda a, q: jnp.sum(solve(a, q) * weights)
        ours = jax.grad(loss(solve_continuous_lyapunov), argnums=(0, 1))(drift, noise)
        reference = jax.grad(loss(kronecker), argnums=(0, 1))(drift, noise)
    for got, expected in zip(ours, reference, strict=True):
        # float64 throughout: both are exact up to round-off of a 16 x 16 solve.
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_unstable_drift_gives_nan_and_a_clear_error():
    unstable = jnp.array([[0.1, 0.0], [0.0, -1.0]])
    assert np.isnan(solve_continuous_lyapunov(unstable, jnp.eye(2))).all()
    with pytest.raises(UnstableDriftError, match=r"largest eigenvalue real part is 0\.1"):
        check_stable(unstable)
    check_stable(jnp.array([[-1.0, 5.0], [0.0, -1.0]]))


def chain_drift(decay=(1.0, 1.5), weight=0.8, bias=(0.5, 0.2)):
    """Two genes, gene 0 -> gene 1 with ``weight`` (drift[1, 0] = weight)."""
    matrix = jnp.array([[-decay[0], 0.0], [weight, -decay[1]]])
    return LinearDrift.from_matrix(matrix, jnp.array(bias))


def test_drift_orientation_row_is_target():
    drift = chain_drift()
    np.testing.assert_allclose(drift.matrix(), [[-1.0, 0.0], [0.8, -1.5]], rtol=1e-6)
    # Raising gene 0 raises gene 1's drift, not the other way round.
    derivative = jax.jacfwd(drift)(jnp.zeros(2))
    assert derivative[1, 0] == pytest.approx(0.8) and derivative[0, 1] == 0.0


def test_control_moments_closed_form():
    a0, a1, w, b0, b1 = 1.0, 1.5, 0.8, 0.5, 0.2
    s0, s1 = 0.7, 1.0
    mean, covariance = stationary_moments(chain_drift(), jnp.array([s0, s1]))
    mean0 = b0 / a0
    np.testing.assert_allclose(mean, [mean0, (b1 + w * mean0) / a1], rtol=1e-6)
    # Closed-form Lyapunov solution of the 2 x 2 triangular system.
    var0 = s0**2 / (2 * a0)
    cov01 = w * var0 / (a0 + a1)
    var1 = (s1**2 + 2 * w * cov01) / (2 * a1)
    np.testing.assert_allclose(covariance, [[var0, cov01], [cov01, var1]], rtol=1e-5)


def test_shift_moves_the_mean_by_minus_inverse_drift():
    drift = chain_drift()
    shift = from_targets(2, [0], "shift", 0.3)
    base_mean, base_cov = stationary_moments(drift, 1.0)
    mean, covariance = stationary_moments(drift, 1.0, shift)
    # delta mu = -A^{-1} e_0 * 0.3 = 0.3 / a0 * (1, w / a1).
    np.testing.assert_allclose(mean - base_mean, [0.3, 0.3 * 0.8 / 1.5], rtol=1e-5)
    np.testing.assert_allclose(covariance, base_cov, rtol=1e-6)


def test_knockout_pins_the_gene_and_cuts_its_parents():
    drift = chain_drift()
    mean, covariance = stationary_moments(
        drift, jnp.array([0.7, 1.0]), from_targets(2, [1], "knockout", -2.0)
    )
    np.testing.assert_allclose(mean, [0.5, -2.0], rtol=1e-6)
    # Gene 1 is an OU process at its own decay, independent of gene 0.
    np.testing.assert_allclose(covariance, np.diag([0.49 / 2.0, 1.0 / 3.0]), atol=1e-6)
    upstream = stationary_moments(drift, 1.0, from_targets(2, [0], "knockout", 1.0))[0]
    np.testing.assert_allclose(upstream, [1.0, (0.2 + 0.8 * 1.0) / 1.5], rtol=1e-6)


def test_knockdown_moves_the_gene_by_log_fraction_and_noise_scale_scales_variance():
    drift = chain_drift()
    base_mean, base_cov = stationary_moments(drift, 1.0)
    mean, _ = stationary_moments(drift, 1.0, from_targets(2, [1], "knockdown", 0.25))
    np.testing.assert_allclose(mean - base_mean, [0.0, np.log(0.25)], atol=1e-6)
    _, covariance = stationary_moments(drift, 1.0, from_targets(2, [0], "noise_scale", 2.0))
    np.testing.assert_allclose(covariance[0, 0], 4.0 * base_cov[0, 0], rtol=1e-6)


def test_vector_field_and_matrix_interventions_agree():
    rng = np.random.default_rng(2)
    drift = LinearDrift.from_matrix(
        jnp.float32(random_stable(rng, 6)), jnp.float32(rng.normal(size=6))
    )
    combined = compose(
        compose(
            from_targets(6, [1], "knockout", 0.5), from_targets(6, [2, 3], "shift", [1.0, -2.0])
        ),
        from_targets(6, [4], "knockdown", 0.3),
    )
    matrix, bias, _ = intervene_linear(drift, 1.0, combined)
    points = jnp.float32(rng.normal(size=(5, 6)))
    # Same arithmetic in two layouts; float32 round-off only.
    np.testing.assert_allclose(
        intervene(drift, combined)(points), points @ matrix.T + bias, atol=1e-5
    )


def test_batched_interventions_give_batched_moments():
    drift = chain_drift()
    rows = [
        Intervention.identity(2),
        from_targets(2, [0], "shift", 1.0),
        from_targets(2, [1], "knockout", 0.0),
    ]
    stacked = jax.tree_util.tree_map(lambda *fields: jnp.stack(fields), *rows)
    means, covariances = stationary_moments(drift, 1.0, stacked)
    # The mean alone (one linear solve, no Lyapunov equation) is the same arithmetic.
    np.testing.assert_array_equal(stationary_mean(drift, 1.0, stacked), means)
    for index, row in enumerate(rows):
        mean, covariance = stationary_moments(drift, 1.0, row)
        np.testing.assert_allclose(means[index], mean, rtol=1e-6)
        np.testing.assert_allclose(covariances[index], covariance, rtol=1e-6)


def test_simulated_chains_match_the_lyapunov_covariance():
    rng = np.random.default_rng(3)
    size, chains, dt = 3, 4_000, 0.01
    drift = LinearDrift.from_matrix(
        jnp.float32(random_stable(rng, size)), jnp.float32(rng.normal(size=size))
    )
    sigma = jnp.float32(rng.uniform(0.5, 1.0, size))
    knockout = from_targets(size, [2], "knockout", 1.0)
    mean, covariance = (
        np.asarray(v, np.float64) for v in stationary_moments(drift, sigma, knockout)
    )
    decay = np.asarray(drift.decay)
    draws = simulate_chains(
        jax.random.key(0),
        drift,
        sigma,
        jnp.zeros((chains, size)),
        intervention=knockout,
        dt=dt,
        burn_in=12.0 / decay.min(),
    )[:, 0]
    draws = np.asarray(draws, np.float64)
    # Monte Carlo standard errors of independent chains: mean sqrt(S_ii / n), covariance
    # sqrt((S_ii S_jj + S_ij^2) / n); 5 of them, plus Euler-Maruyama's O(dt * decay)
    # stationary-variance bias (relative dt * max decay / 2 for a scalar OU process, doubled).
    variances = np.diag(covariance)
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 5 * np.sqrt(variances / chains))
    standard_error = np.sqrt((np.outer(variances, variances) + covariance**2) / chains)
    bias = dt * decay.max() * np.sqrt(np.outer(variances, variances))
    np.testing.assert_array_less(np.abs(np.cov(draws.T) - covariance), 5 * standard_error + bias)


def neural_drift():
    """Gene 1 regulated by gene 0 through a bounded tanh network; gene 0 has no parents."""
    return NeuralDrift(
        log_decay=jnp.log(jnp.array([1.0, 2.0])),
        bias=jnp.array([0.5, 0.0]),
        center=jnp.zeros(2),
        parents=jnp.array([[1], [0]]),
        parent_mask=jnp.array([[0.0], [1.0]]),
        input_weights=jnp.array([[[0.0, 0.0]], [[1.5, -0.5]]]),
        hidden_bias=jnp.array([[0.0, 0.0], [0.2, 0.1]]),
        output_weights=jnp.array([[0.0, 0.0], [1.0, 0.5]]),
    )


def test_neural_drift_closed_form_and_linearisation():
    drift = neural_drift()
    x = jnp.array([0.3, -0.4])
    expected_1 = -2.0 * -0.4 + 1.0 * np.tanh(1.5 * 0.3 + 0.2) + 0.5 * np.tanh(-0.5 * 0.3 + 0.1)
    np.testing.assert_allclose(drift(x), [0.5 - 0.3, expected_1], rtol=1e-6)
    linear = drift.linearize(x)
    np.testing.assert_allclose(linear.matrix(), jax.jacfwd(drift)(x), rtol=1e-6)
    np.testing.assert_allclose(linear(x), drift(x), rtol=1e-6, atol=1e-7)
    # Bounded regulation: |MLP| <= sum |output weights| = 1.5 anywhere.
    far = jnp.array([[1e3, 0.0], [-1e3, 0.0]])
    assert np.all(np.abs(drift.regulation(far)[:, 1]) <= 1.5 + 1e-6)


def test_neural_knockout_of_regulator_matches_closed_form_mean():
    drift = neural_drift()
    knockout = from_targets(2, [0], "knockout", 0.7)
    draws = simulate_chains(
        jax.random.key(1),
        drift,
        0.3,
        jnp.zeros((4000, 2)),
        intervention=knockout,
        dt=0.01,
        burn_in=8.0,
    )[:, 0]
    # Gene 0 is OU around 0.7 with variance 0.09 / 2; gene 1's mean is E[h(x0)] / 2 with h the
    # network: computed here by Gauss-Hermite quadrature over x0's exact Gaussian law.
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    x0 = 0.7 + np.sqrt(0.045) * nodes
    network = np.tanh(1.5 * x0 + 0.2) + 0.5 * np.tanh(-0.5 * x0 + 0.1)
    expected = np.sum(weights * network) / np.sqrt(2 * np.pi) / 2.0
    # Standard error of 4000 chain means is sqrt(0.09 / 4 / 4000) ~ 2.4e-3; 5 of them.
    np.testing.assert_allclose(np.asarray(draws).mean(0), [0.7, expected], atol=0.012)


def test_thinned_draws_decorrelate_like_an_ornstein_uhlenbeck_process():
    decay, sigma, thinning, chains = 1.0, 1.0, 0.5, 8000
    drift = LinearDrift.from_matrix(jnp.array([[-decay]]), jnp.zeros(1))
    draws = simulate_chains(
        jax.random.key(2),
        drift,
        sigma,
        jnp.zeros((chains, 1)),
        dt=0.005,
        burn_in=8.0,
        num_samples=3,
        thinning=thinning,
    )
    assert draws.shape == (chains, 3, 1)
    draws = np.asarray(draws[..., 0], np.float64)
    # Stationary OU: corr(x_t, x_{t + tau}) = exp(-decay * tau) exactly; the sample correlation
    # of 8000 pairs has standard error (1 - rho^2) / sqrt(n) <= 0.011; 5 of them.
    for lag in (1, 2):
        observed = np.corrcoef(draws[:, 0], draws[:, lag])[0, 1]
        assert observed == pytest.approx(np.exp(-decay * thinning * lag), abs=0.055)


def test_exact_stationary_draws_have_the_lyapunov_moments():
    drift = chain_drift()
    sigma = jnp.array([0.7, 1.0])
    draws = np.asarray(
        sample_stationary(jax.random.key(5), drift, sigma, num_samples=20_000), np.float64
    )
    mean, covariance = (np.asarray(v, np.float64) for v in stationary_moments(drift, sigma))
    variances = np.diag(covariance)
    # Independent exact draws: 5 standard errors, sqrt(S_ii / n) for means and
    # sqrt((S_ii S_jj + S_ij^2) / n) for covariances.
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 5 * np.sqrt(variances / 20_000))
    bound = 5 * np.sqrt((np.outer(variances, variances) + covariance**2) / 20_000)
    np.testing.assert_array_less(np.abs(np.cov(draws.T) - covariance), bound)
    unstable = LinearDrift(jnp.zeros(2), jnp.array([[0.0, 3.0], [3.0, 0.0]]), jnp.zeros(2))
    with pytest.raises(ValueError, match="not stable"):
        sample_stationary(jax.random.key(0), unstable, 1.0, num_samples=3)
    # Under jit there is no concrete value to check: the draws come back NaN, as documented.
    jitted = jax.jit(lambda key: sample_stationary(key, unstable, 1.0, num_samples=3))
    assert np.isnan(jitted(jax.random.key(0))).all()


# ------------------------------------------------------------------ unstable drift: loud errors


def unstable_drift():
    """Eigenvalues -1 +- 1.3 = +0.3 and -2.3: negative diagonal, yet no stationary law."""
    return LinearDrift.from_matrix(jnp.array([[-1.0, 1.3], [1.3, -1.0]]), jnp.array([0.5, 0.2]))


def stack(*rows):
    return jax.tree_util.tree_map(lambda *fields: jnp.stack(fields), *rows)


def test_stationary_moments_of_an_unstable_drift_raise_a_clear_error():
    drift = unstable_drift()
    for call in (stationary_moments, stationary_mean):
        with pytest.raises(UnstableDriftError) as raised:
            call(drift, 1.0)
        message = str(raised.value)
        # The eigenvalue (+0.3 to float32 round-off, printed to 4 digits), why, and the fix.
        for words in ("not stable", "real part is 0.3 >= 0", "no stationary law", "self-decay"):
            assert words in message
    assert issubclass(UnstableDriftError, ValueError)
    # A knockout of either gene makes the matrix triangular (stable); the control row is not.
    rows = stack(
        from_targets(2, [0], "knockout", 0.0),
        Intervention.identity(2),
        from_targets(2, [1], "knockout", 0.0),
    )
    with pytest.raises(UnstableDriftError, match=r"intervened drift matrix \(batch index 1\)"):
        stationary_moments(drift, 1.0, rows)
    with pytest.raises(UnstableDriftError, match="no stationary law"):
        sample_stationary(jax.random.key(0), drift, 1.0, num_samples=3)


def test_check_stable_names_the_first_unstable_matrix_of_a_batch():
    stable, unstable = np.diag([-1.0, -2.0]), np.array([[0.3, 0.0], [0.0, -1.0]])
    batch = np.stack([[stable, stable], [stable, unstable], [unstable, stable]])
    with pytest.raises(UnstableDriftError, match=r"batch index \(1, 1\), the first of 2"):
        check_stable(batch)
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_stable(np.array([[np.nan, 0.0], [0.0, -1.0]]))
    with pytest.raises(ValueError, match="square"):
        check_stable(np.zeros((2, 3)))


def test_traced_stationary_moments_are_unchecked_and_unchanged():
    sigma = jnp.array([0.7, 1.0])
    eager = stationary_moments(chain_drift(), sigma)
    jitted = jax.jit(stationary_moments)(chain_drift(), sigma)
    for got, expected in zip(jitted, eager, strict=True):
        # Same float32 arithmetic, compiled versus op by op: round-off only.
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # Traced values cannot be checked: no error, and the covariance is NaN as documented.
    _, covariance = jax.jit(stationary_moments)(unstable_drift(), 1.0)
    assert np.isnan(covariance).all()
    # Gradients (eager grad of a stable drift) still flow through the check.
    gradient = jax.grad(lambda d: stationary_moments(d, sigma)[1].sum())(chain_drift())
    assert np.isfinite(gradient.log_decay).all()


def test_linear_shapes_are_checked_before_any_solve():
    drift = chain_drift()
    with pytest.raises(ValueError, match=r"sigma has shape \(3,\)"):
        stationary_moments(drift, jnp.ones(3))
    with pytest.raises(ValueError, match=r"drift.weights must be square \[2, 2\]"):
        stationary_moments(LinearDrift(jnp.zeros(2), jnp.zeros((3, 3)), jnp.zeros(2)), 1.0)
    with pytest.raises(ValueError, match=r"intervention.shift has shape \(3,\)"):
        stationary_moments(drift, 1.0, Intervention.identity(3))
    with pytest.raises(ValueError, match="drift has 2 genes but initial has 3"):
        simulate_chains(jax.random.key(0), drift, 1.0, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"intervention.shift has shape \(3, 2\)"):
        simulate_chains(
            jax.random.key(0),
            drift,
            1.0,
            jnp.zeros((4, 2)),
            intervention=stack(*[Intervention.identity(2)] * 3),
        )


def test_simulate_chains_rejects_an_unstable_linear_drift_before_simulating():
    drift = unstable_drift()
    with pytest.raises(UnstableDriftError, match=r"real part is 0\.3 >= 0"):
        simulate_chains(jax.random.key(0), drift, 1.0, jnp.zeros((4, 2)))
    # Chains 0-1 knock gene 0 out (stable); chain 2 is the first with the unstable control.
    rows = stack(*[from_targets(2, [0], "knockout", 0.0)] * 2, *[Intervention.identity(2)] * 2)
    with pytest.raises(UnstableDriftError, match="of chain 2, the first unstable one"):
        simulate_chains(jax.random.key(0), drift, 1.0, jnp.zeros((4, 2)), intervention=rows)
    # A traced drift cannot be checked and is not: the (meaningless) draws come back. (A drift
    # closed over by the jitted function is concrete, so it is still checked, at trace time.)
    jitted = jax.jit(lambda d: simulate_chains(jax.random.key(0), d, 1.0, jnp.zeros((4, 2))))
    assert jitted(drift).shape == (4, 1, 2)
    with pytest.raises(UnstableDriftError, match="no stationary law"):
        jax.jit(lambda x: simulate_chains(jax.random.key(0), drift, 1.0, x))(jnp.zeros((4, 2)))


class Explosive:
    """``dx = x^2 dt``: from ``x = 1`` it reaches infinity at ``t = 1``, whatever the noise."""

    decay = jnp.ones(1)

    def __call__(self, x):
        return x * x


def test_simulate_chains_raises_when_the_chains_blow_up():
    with pytest.raises(UnstableDriftError, match=r"diverged: chain 0 .* drift is unstable"):
        simulate_chains(jax.random.key(0), Explosive(), 0.1, jnp.ones((3, 1)), burn_in=5.0)
    # A stable drift with dt * decay = 3 > 2: Euler-Maruyama multiplies by |1 - 3| = 2 per
    # step, 2^134 after 200 time units, past float32's range; the message blames dt alone.
    drift = LinearDrift.from_matrix(jnp.array([[-2.0]]), jnp.zeros(1))
    with pytest.raises(UnstableDriftError, match="drift is stable, so the step dt is too large"):
        simulate_chains(jax.random.key(0), drift, 1.0, jnp.ones((3, 1)), dt=1.5, burn_in=200.0)


def test_shifted_conditions_share_one_covariance_and_match_the_batched_laws():
    rng = np.random.default_rng(3)
    genes, conditions = 6, 5
    matrix = -2.0 * np.eye(genes) + 0.3 * rng.normal(size=(genes, genes)) * (1 - np.eye(genes))
    drift = LinearDrift.from_matrix(jnp.asarray(matrix), jnp.asarray(rng.normal(size=genes)))
    shifts = jnp.asarray(rng.normal(size=(conditions, genes)), jnp.float32)
    shared = from_targets(genes, [2], "knockout", 1.5)._replace(
        noise_scale=jnp.full(genes, 1.2, jnp.float32)
    )
    means, covariance = stationary_moments_of_shifts(drift, 0.7, shifts, shared)
    batch = jax.tree_util.tree_map(
        lambda value: jnp.broadcast_to(value, (conditions, genes)), shared
    )._replace(shift=shifts)
    expected_means, expected_covariances = stationary_moments(drift, 0.7, batch)
    # Same maths, other order of float32 operations (one solve with 5 right-hand sides against
    # five solves; one Lyapunov solve against five): agreement to float32 rounding of O(1)
    # entries, 1e-5.
    np.testing.assert_allclose(means, expected_means, atol=1e-5)
    for expected in expected_covariances:
        np.testing.assert_allclose(covariance, expected, atol=1e-5)
    # And against scipy's Lyapunov solver in float64 for the knocked-out drift.
    knocked = matrix.copy()
    knocked[2] = 0.0
    knocked[2, 2] = matrix[2, 2]
    noise = np.diag(np.full(genes, (0.7 * 1.2) ** 2))
    reference = scipy.linalg.solve_continuous_lyapunov(knocked, -noise)
    np.testing.assert_allclose(covariance, reference, atol=1e-5)
    with pytest.raises(ValueError, match=r"shifts must be \[conditions, 6\]"):
        stationary_moments_of_shifts(drift, 0.7, shifts[0])
