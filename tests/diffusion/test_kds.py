"""Kernel deviation from stationarity: closed form against autodiff, exact OU laws."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.spatial.distance import pdist

from causalcell.diffusion import LinearDrift, kds, sample_stationary, stationary_moments
from causalcell.interventions import from_targets

# A non-symmetric drift with one-way edges 0 -> 1 (A[1, 0] = 0.8) and 1 -> 2 (A[2, 1] = -0.6):
# not a gradient field, so its stationary law alone does not reveal it.
MATRIX = jnp.array([[-1.0, 0.0, 0.0], [0.8, -1.5, 0.0], [0.0, -0.6, -1.0]])
BIAS = jnp.array([0.5, 0.2, -0.3])
SIGMA = jnp.array([0.5, 0.6, 0.4])


def linear_field(matrix, bias):
    return lambda x: x @ matrix.T + bias


def median_distance(x):
    return float(np.median(pdist(np.asarray(x, np.float64))))


def brute_force_double_generator(drift, variances, bandwidth, x):
    """``[n, n]`` matrix of ``L_x L_y k(x_a, x_b)`` by nested autodiff (gradients, Hessians)."""

    def kernel(a, b):
        return jnp.exp(-jnp.sum(jnp.square(a - b)) / (2.0 * bandwidth**2))

    def generator(function, argument, variance):
        def applied(a, b):
            point = (a, b)[argument]
            gradient = jax.grad(function, argument)(a, b)
            hessian = jax.hessian(function, argument)(a, b)
            return drift(point) @ gradient + 0.5 * jnp.sum(variance * jnp.diagonal(hessian))

        return applied

    def entry(a, b, variance_a, variance_b):
        inner = generator(kernel, 0, variance_a)
        return generator(inner, 1, variance_b)(a, b)

    rows = jax.vmap(entry, in_axes=(None, 0, None, 0))
    return np.asarray(
        jax.jit(jax.vmap(rows, in_axes=(0, None, 0, None)))(x, x, variances, variances)
    )


def test_closed_form_matches_nested_autodiff():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        size, genes = 7, 3
        x = jnp.asarray(rng.normal(0.0, 1.0, (size, genes)))
        mixing = jnp.asarray(rng.normal(0.0, 1.0, (genes, genes)))
        offset = jnp.asarray(rng.normal(0.0, 1.0, genes))

        def drift(point):  # nonlinear, non-gradient
            return jnp.tanh(point @ mixing.T) + offset - 0.1 * point**3

        sigma = jnp.asarray(rng.uniform(0.5, 1.5, (size, genes)))  # per-point noise
        bandwidth = 1.3
        reference = brute_force_double_generator(drift, sigma**2, bandwidth, x)
        pair_weights = jnp.asarray(rng.uniform(0.0, 1.0, (size, size)))
        batched = jax.vmap(drift)
        off_diagonal = ~np.eye(size, dtype=bool)
        # Exact algebra evaluated in float64: only round-off separates the two, ~1e-15
        # relative to entries of order 1.
        assert float(kds(batched, sigma, x, bandwidth=bandwidth)) == pytest.approx(
            reference[off_diagonal].mean(), rel=1e-12, abs=1e-12
        )
        weighted = kds(batched, sigma, x, bandwidth=bandwidth, weights=pair_weights)
        expected = np.sum(np.asarray(pair_weights)[off_diagonal] * reference[off_diagonal])
        assert float(weighted) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        # The V-statistic's diagonal comes from its own closed form (module docstring): it
        # must equal the autodiff diagonal, with or without weights; same round-off bound.
        assert float(kds(batched, sigma, x, bandwidth=bandwidth, statistic="v")) == pytest.approx(
            reference.mean(), rel=1e-12, abs=1e-12
        )
        weighted = kds(batched, sigma, x, bandwidth=bandwidth, weights=pair_weights, statistic="v")
        expected = np.sum(np.asarray(pair_weights) * reference)
        assert float(weighted) == pytest.approx(expected, rel=1e-12, abs=1e-12)
        # The double generator is symmetric in the pair even with different noise per point.
        np.testing.assert_allclose(reference, reference.T, atol=1e-12)


def test_float32_is_accurate_far_from_the_origin():
    """Expression levels sit far from zero; the centred expansion keeps float32 accurate."""
    x64 = -5.0 + 0.3 * np.random.default_rng(1).normal(size=(300, 4))
    field = linear_field(-jnp.eye(4), -5.0 * jnp.ones(4))
    with jax.enable_x64(True):
        reference = float(kds(field, 0.4, jnp.asarray(x64), bandwidth=0.6))
    value = float(kds(field, 0.4, jnp.asarray(x64, jnp.float32), bandwidth=0.6))
    # float32 round-off of O(n d) terms of size ~1e1 (lambda^2 sigma^4, lambda f.g) that cancel
    # to an O(1e-2) statistic: agreement to ~1e-4 absolute.
    assert value == pytest.approx(reference, abs=2e-4)


def test_kds_is_jittable_and_differentiable():
    x = jax.random.normal(jax.random.key(0), (50, 3))

    def loss(matrix):
        return kds(linear_field(matrix, 0.0), 0.5, x)

    matrix = -jnp.eye(3)
    assert float(jax.jit(loss)(matrix)) == pytest.approx(float(loss(matrix)), rel=1e-5)
    gradient = jax.grad(loss)(matrix)
    assert gradient.shape == (3, 3) and bool(jnp.all(jnp.isfinite(gradient)))
    with jax.enable_x64(True):
        points = jnp.asarray(x, jnp.float64)

        def exact_loss(matrix):
            return kds(linear_field(matrix, 0.0), 0.5, points)

        start = -jnp.eye(3, dtype=jnp.float64)
        exact = np.asarray(jax.grad(exact_loss)(start))
        step = 1e-5
        numeric = np.array(
            [
                [
                    float(
                        exact_loss(start.at[i, j].add(step)) - exact_loss(start.at[i, j].add(-step))
                    )
                    / (2 * step)
                    for j in range(3)
                ]
                for i in range(3)
            ]
        )
    # Central differences in float64: truncation ~step^2 and round-off ~1e-16 / step, both
    # far below 1e-7 of entries of order 0.1-1.
    np.testing.assert_allclose(exact, numeric, rtol=1e-7, atol=1e-9)
    # The float32 gradient is the same up to float32 round-off of the cancelling sums.
    np.testing.assert_allclose(gradient, exact, rtol=1e-3, atol=1e-4 * np.abs(exact).max())


def test_true_drift_of_an_exact_ornstein_uhlenbeck_sample_has_zero_kds():
    drift = LinearDrift.from_matrix(MATRIX, BIAS)
    mean, _ = stationary_moments(drift, SIGMA)
    keys = jax.random.split(jax.random.key(1), 8)
    samples = jax.vmap(lambda key: sample_stationary(key, drift, SIGMA, num_samples=1000))(keys)
    bandwidth = median_distance(samples[0])

    # Data enter as arguments, not closed-over constants (which XLA would try to fold).
    @jax.jit
    def replicates(samples, matrix, bias):
        return jax.vmap(lambda x: kds(linear_field(matrix, bias), SIGMA, x, bandwidth=bandwidth))(
            samples
        )

    def mean_and_error(matrix, bias):
        values = np.asarray(replicates(samples, matrix, bias), np.float64)
        return values.mean(), values.std(ddof=1) / np.sqrt(values.size)

    true_mean, true_error = mean_and_error(MATRIX, BIAS)
    # The U-statistic is unbiased and the population KDS of the stationary law is exactly 0:
    # the replicate mean lies within 4 Monte Carlo standard errors of 0 (fixed keys).
    assert abs(true_mean) < 4.0 * true_error
    noise_floor = abs(true_mean) + 4.0 * true_error
    wrong = {
        # Edges read backwards with the same bias: wrong mean and covariance.
        "transposed": (MATRIX.T, BIAS),
        # Right matrix, bias off by 0.3: the stationary mean moves by -A^{-1} 0.3.
        "shifted bias": (MATRIX, BIAS + 0.3),
    }
    for name, (matrix, bias) in wrong.items():
        wrong_mean, _ = mean_and_error(matrix, bias)
        assert wrong_mean > 10.0 * noise_floor, name
    # Edges read backwards with the stationary mean kept: only the covariance is wrong, a
    # smaller deviation, still many standard errors above zero.
    transposed = MATRIX.T
    wrong_mean, wrong_error = mean_and_error(transposed, -transposed @ mean)
    assert wrong_mean - true_mean > 5.0 * np.hypot(wrong_error, true_error)


def test_one_law_cannot_tell_a_drift_from_its_stationary_twins():
    """Every ``A' = (-diag(sigma^2) / 2 + S) Sigma^{-1}`` (``S`` antisymmetric) has the same
    stationary law, so KDS on one condition is blind to the orientation: interventions are what
    identify the drift (see the recovery test)."""
    drift = LinearDrift.from_matrix(MATRIX, BIAS)
    mean, covariance = stationary_moments(drift, SIGMA)
    antisymmetric = jnp.array([[0.0, 0.3, -0.2], [-0.3, 0.0, 0.1], [0.2, -0.1, 0.0]])
    twin = (-0.5 * jnp.diag(SIGMA**2) + antisymmetric) @ jnp.linalg.inv(covariance)
    twin_bias = -twin @ mean
    twin_mean, twin_covariance = stationary_moments(LinearDrift.from_matrix(twin, twin_bias), SIGMA)
    # Closed forms in float32: equal laws up to round-off.
    np.testing.assert_allclose(twin_covariance, covariance, atol=1e-5)
    np.testing.assert_allclose(twin_mean, mean, atol=1e-5)
    keys = jax.random.split(jax.random.key(2), 8)
    samples = jax.vmap(lambda key: sample_stationary(key, drift, SIGMA, num_samples=1000))(keys)
    bandwidth = median_distance(samples[0])
    values = np.asarray(
        jax.vmap(lambda x: kds(linear_field(twin, twin_bias), SIGMA, x, bandwidth=bandwidth))(
            samples
        ),
        np.float64,
    )
    # Population KDS of the twin is exactly 0 too: within 4 Monte Carlo standard errors.
    assert abs(values.mean()) < 4.0 * values.std(ddof=1) / np.sqrt(values.size)


def test_minimising_kds_over_interventions_recovers_a_one_way_drift():
    """Control plus a known unit shift of each gene (500 exact draws each, 2000 in all)."""
    drift = LinearDrift.from_matrix(MATRIX, BIAS)
    shifts = jnp.concatenate([jnp.zeros((1, 3)), jnp.eye(3)])
    keys = jax.random.split(jax.random.key(3), 4)
    samples = jnp.stack(
        [
            sample_stationary(
                key,
                drift,
                SIGMA,
                from_targets(3, [index - 1], "shift", 1.0) if index else None,
                num_samples=500,
            )
            for index, key in enumerate(keys)
        ]
    )
    # Bandwidths fixed from the data once (the median heuristic inside kds would sort 250k
    # distances per condition at every step).
    bandwidths = jnp.array([median_distance(x) for x in samples])

    def loss(parameters, samples):
        matrix, bias = parameters
        per_condition = jax.vmap(
            lambda x, shift, bandwidth: kds(
                linear_field(matrix, bias + shift), SIGMA, x, bandwidth=bandwidth
            )
        )
        return jnp.sum(per_condition(samples, shifts, bandwidths))

    optimizer = optax.adam(0.03)
    parameters = (-jnp.eye(3), jnp.zeros(3))
    state = optimizer.init(parameters)

    @jax.jit
    def step(parameters, state, samples):
        gradient = jax.grad(loss)(parameters, samples)
        updates, state = optimizer.update(gradient, state)
        return optax.apply_updates(parameters, updates), state

    for _ in range(400):
        parameters, state = step(parameters, state, samples)
    matrix, bias = (np.asarray(value) for value in parameters)
    # 500 draws per condition estimate the moments to ~1/sqrt(500) ~ 0.045 (relative), which
    # moves the KDS minimiser by about that much times the O(1) entries: measured max errors
    # 0.057 (matrix) and 0.043 (bias); tolerance 0.1.
    np.testing.assert_allclose(matrix, MATRIX, atol=0.1)
    np.testing.assert_allclose(bias, BIAS, atol=0.1)
    # The one-way edge keeps its direction: 0 -> 1 found, no 1 -> 0 invented.
    assert matrix[1, 0] > 0.6 and abs(matrix[0, 1]) < 0.1


def test_pair_weights_within_groups_sum_the_groups_statistics():
    rng = np.random.default_rng(4)
    groups = np.repeat([0, 1, 2], [5, 8, 11])
    x = jnp.asarray(rng.normal(0.0, 1.0, (groups.size, 3)), jnp.float32)
    matrices = jnp.asarray(rng.normal(0.0, 0.5, (3, 3, 3)) - 1.5 * np.eye(3), jnp.float32)
    # Each group follows its own drift; one batched drift evaluates each point's own.
    per_point = matrices[groups]

    def drift(points):
        return jnp.einsum("nij,nj->ni", per_point, points)

    sizes = np.bincount(groups)
    same = groups[:, None] == groups[None, :]
    pair_weights = same / (sizes[groups] * (sizes[groups] - 1))[:, None]
    masked = kds(drift, SIGMA, x, bandwidth=0.9, weights=pair_weights)
    separate = sum(
        kds(linear_field(matrices[group], 0.0), SIGMA, x[groups == group], bandwidth=0.9)
        for group in range(3)
    )
    # Same float32 sums in a different order: agreement to round-off.
    assert float(masked) == pytest.approx(float(separate), rel=1e-5, abs=1e-6)

    # Sample weights of 0/1 drop points: the statistic of the kept subset.
    keep = groups == 1
    dropped = kds(linear_field(matrices[1], 0.0), SIGMA, x, bandwidth=0.9, weights=keep)
    subset = kds(linear_field(matrices[1], 0.0), SIGMA, x[keep], bandwidth=0.9)
    assert float(dropped) == pytest.approx(float(subset), rel=1e-5, abs=1e-6)


def test_median_bandwidth_uses_only_the_counted_pairs():
    rng = np.random.default_rng(5)
    groups = np.repeat([0, 1], [6, 7])
    x = rng.normal(0.0, 0.5, (groups.size, 2)) + 3.0 * groups[:, None]
    pair_weights = (groups[:, None] == groups[None, :]) / 72.0
    within = np.concatenate(
        [pdist(x[groups == group]) for group in range(2)]
    )  # the 15 + 21 counted distances
    x = jnp.asarray(x, jnp.float32)
    automatic = kds(lambda points: -points, 0.5, x, weights=pair_weights)
    explicit = kds(
        lambda points: -points, 0.5, x, weights=pair_weights, bandwidth=np.median(within)
    )
    # Same bandwidth up to float32 round-off of the distances (the across-group pairs, 4x
    # longer, would give a very different one).
    assert float(automatic) == pytest.approx(float(explicit), rel=1e-4)
    assert np.median(within) < 0.5 * np.median(pdist(np.asarray(x)))


def random_tanh_drift(key, genes: int, hidden: int = 6):
    """A random nonlinear, non-gradient batched drift ``-x + W2 tanh(W1 x + c) + b``."""
    first, second, third, fourth = jax.random.split(key, 4)
    inner = jax.random.normal(first, (hidden, genes))
    outer = jax.random.normal(second, (genes, hidden))
    offset = jax.random.normal(third, (hidden,))
    bias = jax.random.normal(fourth, (genes,))
    return lambda x: -x + jnp.tanh(x @ inner.T + offset) @ outer.T + bias


def test_v_statistic_is_non_negative_where_the_u_statistic_is_not():
    keys = jax.random.split(jax.random.key(10), 40)
    values = []
    for key in keys:
        drift_key, sample_key, sigma_key = jax.random.split(key, 3)
        x = jax.random.normal(sample_key, (12, 3))
        sigma = jnp.exp(jax.random.uniform(sigma_key, (3,), minval=-1.0, maxval=1.0))
        drift = random_tanh_drift(drift_key, 3)
        values.append(
            [float(kds(drift, sigma, x, statistic=statistic)) for statistic in ("u", "v")]
        )
    u_values, v_values = np.asarray(values).T
    # V is a squared norm: exactly >= 0 up to float32 round-off of terms of size ~1e1 (relative
    # 1e-6), hence the -1e-4 floor; the smallest measured value is 0.19.
    assert v_values.min() > -1e-4
    # On 12 points the U-statistic of some of these drifts is negative (measured: 1 of 40,
    # -0.045).
    assert u_values.min() < 0.0
    # V >= U here: their difference is (mean diagonal - U) / n, the diagonal being larger.
    assert np.all(v_values >= u_values)


def test_quadratic_form_in_a_linear_drift_is_semidefinite_for_v_only():
    """``f(x) = A x + b``: the KDS is a quadratic form in ``(A, b)``; its Hessian is exact."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(11), (10, 3), jnp.float64)

        def loss(parameters, statistic):
            matrix = parameters[:9].reshape(3, 3)
            return kds(
                linear_field(matrix, parameters[9:]), 0.3, x, bandwidth=1.0, statistic=statistic
            )

        start = jnp.zeros(12, jnp.float64)
        hessian_u = jax.hessian(loss)(start, "u")
        hessian_v = jax.hessian(loss)(start, "v")
        eigenvalues_u = np.linalg.eigvalsh(np.asarray(hessian_u))
        eigenvalues_v = np.linalg.eigvalsh(np.asarray(hessian_v))
    # Without the diagonal pairs the form has directions of negative curvature (measured
    # smallest eigenvalue -0.11), so U -> -inf along them; V's Gram form has none: its
    # smallest eigenvalue is >= 0 up to float64 round-off of entries of order 1 (1e-10;
    # measured +0.11, as the points span the parameters).
    assert eigenvalues_u.min() < -1e-3
    assert eigenvalues_v.min() > -1e-10


def test_v_statistic_of_a_sample_from_the_u_statistic_of_its_duplicate():
    """``U_2n(x, x) = ((n - 1) U_n(x) + n V_n(x)) / (2n - 1)``: duplicating the sample turns
    each diagonal pair into two distinct pairs, so U of the duplicate carries V."""
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(12), (9, 4), jnp.float64)
        drift = random_tanh_drift(jax.random.key(13), 4)
        sigma = jnp.array([0.5, 0.8, 1.1, 0.7])
        size = x.shape[0]
        u_value = float(kds(drift, sigma, x, bandwidth=1.2))
        v_value = float(kds(drift, sigma, x, bandwidth=1.2, statistic="v"))
        duplicate = float(kds(drift, sigma, jnp.concatenate([x, x]), bandwidth=1.2))
        # The identity tied to the definition: V = ((n - 1) U + mean diagonal) / n.
        diagonal = np.mean(
            [
                float(kds(drift, sigma, x[a : a + 1], bandwidth=1.2, statistic="v"))
                for a in range(size)
            ]
        )
    # Exact identities evaluated in float64 (the duplicate's r = 0 pairs go through the [n, n]
    # expansion, the V diagonal through its closed form): round-off ~1e-14 of terms of order 1.
    assert duplicate == pytest.approx(
        ((size - 1) * u_value + size * v_value) / (2 * size - 1), rel=1e-10
    )
    assert v_value == pytest.approx(((size - 1) * u_value + diagonal) / size, rel=1e-10)


def test_v_statistic_weights_and_gradient():
    rng = np.random.default_rng(14)
    groups = np.repeat([0, 1, 2], [4, 6, 7])
    x = jnp.asarray(rng.normal(0.0, 1.0, (groups.size, 3)), jnp.float32)
    drift = random_tanh_drift(jax.random.key(15), 3)
    sizes = np.bincount(groups)
    block = (groups[:, None] == groups[None, :]) / (sizes[groups] ** 2)[:, None]
    summed = kds(drift, SIGMA, x, bandwidth=0.9, weights=block, statistic="v")
    separate = sum(
        kds(drift, SIGMA, x[groups == group], bandwidth=0.9, statistic="v") for group in range(3)
    )
    # Same float32 sums in a different order: agreement to round-off.
    assert float(summed) == pytest.approx(float(separate), rel=1e-5)
    keep = groups == 1
    dropped = kds(drift, SIGMA, x, bandwidth=0.9, weights=keep, statistic="v")
    subset = kds(drift, SIGMA, x[keep], bandwidth=0.9, statistic="v")
    assert float(dropped) == pytest.approx(float(subset), rel=1e-5)

    with jax.enable_x64(True):
        points = jnp.asarray(x, jnp.float64)

        @jax.jit  # one compilation for the gradient's 18 evaluations (eager: one per op)
        def loss(matrix):
            return kds(linear_field(matrix, 0.0), SIGMA, points, bandwidth=0.9, statistic="v")

        start = -jnp.eye(3, dtype=jnp.float64) + 0.1
        exact = np.asarray(jax.grad(loss)(start))
        step = 1e-5
        numeric = np.zeros((3, 3))
        for i in range(3):
            for j in range(3):
                forward = loss(start.at[i, j].add(step))
                backward = loss(start.at[i, j].add(-step))
                numeric[i, j] = float(forward - backward) / (2 * step)
    # Central differences in float64 (V is quadratic in the matrix, so the truncation error is
    # zero up to round-off ~1e-16 / step ~ 1e-11): 1e-7 relative is far above both.
    np.testing.assert_allclose(exact, numeric, rtol=1e-7, atol=1e-9)


def test_bad_arguments_raise():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="kernel"):
        kds(lambda points: -points, 1.0, x, kernel="laplace")
    with pytest.raises(ValueError, match="batched drift"):
        kds(lambda point: -point[0], 1.0, x)
    with pytest.raises(ValueError, match="weights"):
        kds(lambda points: -points, 1.0, x, weights=jnp.ones(3))
    with pytest.raises(ValueError, match="statistic"):
        kds(lambda points: -points, 1.0, x, statistic="w")
