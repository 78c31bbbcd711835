"""Tests of causalcell.metrics against exact references and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist, pdist
from sklearn.metrics import (
    adjusted_rand_score,
    average_precision_score,
    normalized_mutual_info_score,
)

from causalcell import metrics
from causalcell.metrics import (
    Pseudobulk,
    adjusted_rand_index,
    auprc,
    energy_distance,
    interval_coverage,
    median_heuristic_bandwidth,
    mmd_rbf,
    normalized_mutual_info,
    pearson_delta,
    pseudobulk,
    pseudobulk_l2,
    pseudobulk_mse,
    rmse,
    shd,
    top_de_genes,
)
from causalcell.metrics import _distribution as _metrics_distribution

# float32 arithmetic (eps 1.2e-7) on O(1) distances, summed in float64: observed errors are
# ~1e-7. 1e-5 keeps a 100x margin and still catches bookkeeping errors: dropping or doubling a
# single pair of the small samples below moves the result by more than 1e-3.
FLOAT32_ATOL = 1e-5


# ---------------------------------------------------------------------------- pseudobulk


def test_pseudobulk_means_counts_and_order_of_first_appearance():
    rng = np.random.default_rng(0)
    expression = rng.normal(size=(7, 3))
    labels = ["B", "control", "B", "A+B", "control", "B", "control"]
    result = pseudobulk(expression, labels)
    assert result.conditions == ("B", "control", "A+B")
    np.testing.assert_array_equal(result.counts, [3, 3, 1])
    for condition in result.conditions:
        mask = np.array(labels) == condition
        # float64 sums of three numbers in a different order: a few ulps.
        np.testing.assert_allclose(
            result.mean_of(condition), expression[mask].mean(axis=0), rtol=1e-14
        )
    np.testing.assert_allclose(
        result.delta_of("B"), result.mean_of("B") - result.mean_of("control"), rtol=1e-14
    )


def test_pseudobulk_accepts_sparse_expression():
    rng = np.random.default_rng(1)
    expression = rng.poisson(0.5, size=(20, 6)).astype(np.float32)
    labels = rng.choice(["control", "A", "B"], size=20)
    dense, sparse = (
        pseudobulk(expression, labels),
        pseudobulk(scipy.sparse.csr_matrix(expression), labels),
    )
    assert dense.conditions == sparse.conditions
    # Sums of small integers are exact in float64.
    np.testing.assert_array_equal(dense.means, sparse.means)


def test_pseudobulk_lookup_error_names_missing_and_available_conditions():
    result = pseudobulk(np.ones((2, 2)), ["control", "A"])
    assert isinstance(result, Pseudobulk)
    with pytest.raises(KeyError, match=r"'C'.*\['control', 'A'\]"):
        result.mean_of("C")


def test_pseudobulk_needs_one_label_per_cell():
    with pytest.raises(ValueError, match="one label per cell"):
        pseudobulk(np.ones((3, 2)), ["control", "A"])


# ---------------------------------------------------------------------------- DE genes, deltas


def test_top_de_genes_recovers_planted_genes():
    rng = np.random.default_rng(2)
    control = rng.normal(size=(300, 50))
    perturbed = rng.normal(size=(200, 50))
    planted = {3: 2.0, 17: -3.0, 42: 1.5}
    for gene, shift in planted.items():
        perturbed[:, gene] += shift
    for method in ("t", "abs_delta"):
        assert set(top_de_genes(perturbed, control, k=3, method=method)) == set(planted)


def test_top_de_genes_t_statistic_matches_scipy_welch_test():
    rng = np.random.default_rng(3)
    control = rng.normal(size=(30, 12)) * rng.uniform(0.5, 2.0, size=12)
    perturbed = rng.normal(size=(25, 12)) * rng.uniform(0.5, 2.0, size=12) + rng.normal(size=12)
    statistic = scipy.stats.ttest_ind(perturbed, control, equal_var=False).statistic
    np.testing.assert_array_equal(
        top_de_genes(perturbed, control, k=12), np.argsort(-np.abs(statistic), kind="stable")
    )


def test_top_de_genes_zero_variance_is_safe():
    control = np.array([[1.0, 0.0, 5.0, 0.0], [1.0, 0.0, 5.0, 1.0]])
    perturbed = np.array([[1.0, 2.0, 5.0, 0.0], [1.0, 2.0, 5.0, 2.0]])
    # Gene 1: constant in both groups, means differ: |t| = inf, ranked first. Genes 0 and 2:
    # constant and equal: t = 0, last (lower index first). Gene 3: finite t.
    np.testing.assert_array_equal(top_de_genes(perturbed, control, k=10), [1, 3, 0, 2])


def test_top_de_genes_validation():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 2\)"):
        top_de_genes(np.ones((4, 3)), np.ones((5, 2)))
    with pytest.raises(ValueError, match="method"):
        top_de_genes(np.ones((4, 3)), np.ones((5, 3)), method="wilcoxon")
    with pytest.raises(ValueError, match="at least two cells"):
        top_de_genes(np.ones((1, 3)), np.ones((5, 3)))


def test_pearson_delta_matches_numpy_corrcoef():
    rng = np.random.default_rng(4)
    control, observed, predicted = rng.normal(size=(3, 40))
    genes = np.array([1, 5, 7, 20, 33])
    expected = np.corrcoef(predicted - control, observed - control)[0, 1]
    expected_subset = np.corrcoef((predicted - control)[genes], (observed - control)[genes])[0, 1]
    # Same float64 formula, different summation order: a few ulps.
    assert pearson_delta(predicted, observed, control) == pytest.approx(expected, abs=1e-14)
    assert pearson_delta(predicted, observed, control, genes) == pytest.approx(
        expected_subset, abs=1e-14
    )


def test_pearson_delta_constant_delta_is_nan_and_shapes_are_checked():
    control = np.array([1.0, 2.0, 3.0])
    assert np.isnan(pearson_delta(control, control + np.array([0.5, 1.0, 0.0]), control))
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        pearson_delta(control, control[:2], control)


def test_pseudobulk_errors_hand_values():
    predicted = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    observed = np.array([[1.0, 2.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(pseudobulk_mse(predicted, observed), [1.0, 1.0])
    np.testing.assert_array_equal(pseudobulk_l2(predicted, observed), [2.0, 2.0])
    np.testing.assert_array_equal(rmse(predicted, observed), [1.0, 1.0])
    assert pseudobulk_l2(predicted[0], observed[0]) == 2.0
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(4,\)"):
        pseudobulk_mse(predicted, observed[0])


# ---------------------------------------------------------------------------- energy distance, MMD


def _energy_reference(x, y, unbiased):
    n, m = len(x), len(y)
    within_x, within_y = cdist(x, x).sum(), cdist(y, y).sum()
    if unbiased:
        return 2 * cdist(x, y).mean() - within_x / (n * (n - 1)) - within_y / (m * (m - 1))
    return 2 * cdist(x, y).mean() - within_x / n**2 - within_y / m**2


def _mmd_reference(x, y, bandwidth, unbiased):
    def kernel(a, b):
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * bandwidth**2))

    n, m = len(x), len(y)
    if unbiased:
        within_x = (kernel(x, x).sum() - n) / (n * (n - 1))
        within_y = (kernel(y, y).sum() - m) / (m * (m - 1))
    else:
        within_x, within_y = kernel(x, x).mean(), kernel(y, y).mean()
    return within_x + within_y - 2 * kernel(x, y).mean()


@pytest.fixture(scope="module")
def small_samples():
    rng = np.random.default_rng(5)
    # An offset of 3 makes the centring matter; 23 and 17 are not multiples of block size 5.
    return rng.normal(size=(23, 4)) + 3.0, 1.5 * rng.normal(size=(17, 4)) + 3.2


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("block_size", [None, 5, 1])
def test_energy_distance_and_mmd_match_direct_evaluation(small_samples, unbiased, block_size):
    x, y = small_samples
    assert energy_distance(x, y, unbiased=unbiased, block_size=block_size) == pytest.approx(
        _energy_reference(x, y, unbiased), abs=FLOAT32_ATOL
    )
    assert mmd_rbf(x, y, 1.3, unbiased=unbiased, block_size=block_size) == pytest.approx(
        _mmd_reference(x, y, 1.3, unbiased), abs=FLOAT32_ATOL
    )


def test_within_sample_term_is_shift_invariant_and_can_be_reused(small_samples):
    x, y = small_samples
    within = metrics.mean_within_distance
    for unbiased in (False, True):
        pairs = len(x) * (len(x) - 1) if unbiased else len(x) ** 2
        expected = cdist(x, x).sum() / pairs
        assert within(x, unbiased=unbiased) == pytest.approx(expected, abs=FLOAT32_ATOL)
        # A rigid shift (how evaluation turns mean predictions into cells) keeps every distance.
        assert within(x + 5.0, unbiased=unbiased) == pytest.approx(expected, abs=FLOAT32_ATOL)
    reused = metrics.energy_distance(x + 1.0, y, within_x=within(x), within_y=within(y))
    assert reused == pytest.approx(_energy_reference(x + 1.0, y, False), abs=FLOAT32_ATOL)


def test_mmd_bandwidth_sequence_averages_and_median_heuristic(small_samples):
    x, y = small_samples
    bandwidths = [0.5, 1.3, 3.0]
    expected = np.mean([_mmd_reference(x, y, h, True) for h in bandwidths])
    assert mmd_rbf(x, y, bandwidths) == pytest.approx(expected, abs=FLOAT32_ATOL)
    median = np.median(pdist(np.concatenate([x, y])))
    # Both float64 medians of the same distances: exact up to a few ulps.
    assert median_heuristic_bandwidth(x, y) == pytest.approx(median, rel=1e-12)
    assert mmd_rbf(x, y) == pytest.approx(_mmd_reference(x, y, median, True), abs=FLOAT32_ATOL)


def test_identity_and_symmetry(small_samples):
    x, y = small_samples
    # Self-pairs across the two copies of x are not masked, and the Gram formula leaves them a
    # float32 squared distance of ~eps32 |x|^2 (|x| ~ 2 after centring), i.e. distances of
    # ~1e-3 on n of the n^2 cross pairs: about 2e-3 / n ~ 1e-4 at most.
    assert abs(energy_distance(x, x)) < 1e-4
    # exp(-tiny) rounds to 1 in float32, so the V-statistic MMD of a sample with itself is 0.
    assert abs(mmd_rbf(x, x, 1.0, unbiased=False)) < FLOAT32_ATOL
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), abs=FLOAT32_ATOL)
    assert mmd_rbf(x, y, 2.0) == pytest.approx(mmd_rbf(y, x, 2.0), abs=FLOAT32_ATOL)


def test_point_masses_closed_forms():
    a, b = np.array([1.0, 2.0, -3.0]), np.array([0.5, 4.0, 1.0])
    x, y = np.tile(a, (5, 1)), np.tile(b, (7, 1))
    distance = np.linalg.norm(a - b)
    # Identical points may keep a Gram rounding of ~eps32 |x|^2 in squared distance, up to
    # sqrt(1.2e-7) ~ 3.5e-4 relative in distance.
    assert energy_distance(x, y) == pytest.approx(2 * distance, rel=1e-3)
    assert energy_distance(x, y, unbiased=True) == pytest.approx(2 * distance, rel=1e-3)
    expected_mmd = 2 - 2 * np.exp(-(distance**2) / (2 * 1.7**2))
    for unbiased in (False, True):
        assert mmd_rbf(x, y, 1.7, unbiased=unbiased) == pytest.approx(
            expected_mmd, abs=FLOAT32_ATOL
        )


def _expected_absolute_normal(mean, scale):
    """E|Z| for Z ~ N(mean, scale^2) (folded normal mean)."""
    return scale * np.sqrt(2 / np.pi) * np.exp(-(mean**2) / (2 * scale**2)) + mean * (
        1 - 2 * scipy.stats.norm.cdf(-mean / scale)
    )


def _within_monte_carlo_error(estimates, truth):
    # 8 independent replicates with fixed seeds: the mean is t-distributed with 7 degrees of
    # freedom around the truth (U-statistics are unbiased); |t| > 6 has probability ~5e-4.
    estimates = np.asarray(estimates)
    standard_error = estimates.std(ddof=1) / np.sqrt(estimates.size)
    assert abs(estimates.mean() - truth) < 6 * standard_error, (estimates.mean(), truth)


@pytest.mark.parametrize(("shift", "scale"), [(1.0, 1.0), (0.0, 2.0)])
def test_energy_distance_between_gaussians_closed_form(shift, scale):
    # X ~ N(0, 1), Y ~ N(shift, scale^2): X - Y ~ N(-shift, 1 + scale^2), X - X' ~ N(0, 2),
    # Y - Y' ~ N(0, 2 scale^2). The second case has equal means: squared distances give 0 there.
    truth = (
        2 * _expected_absolute_normal(shift, np.sqrt(1 + scale**2))
        - _expected_absolute_normal(0.0, np.sqrt(2))
        - _expected_absolute_normal(0.0, np.sqrt(2) * scale)
    )
    rng = np.random.default_rng(6)
    estimates = [
        energy_distance(
            rng.normal(size=(1000, 1)), shift + scale * rng.normal(size=(1000, 1)), unbiased=True
        )
        for _ in range(8)
    ]
    _within_monte_carlo_error(estimates, truth)


def test_mmd_between_gaussians_closed_form():
    mean_x, mean_y = np.array([0.0, 0.0]), np.array([1.0, -0.5])
    covariance_x = np.diag([1.0, 0.5])
    covariance_y = np.array([[1.5, 0.3], [0.3, 0.8]])
    bandwidth = 1.2

    def expected_kernel(difference, covariance):
        # E k(X, Y) for X - Y ~ N(difference, covariance).
        identity = np.eye(2)
        return np.linalg.det(identity + covariance / bandwidth**2) ** -0.5 * np.exp(
            -0.5 * difference @ np.linalg.solve(bandwidth**2 * identity + covariance, difference)
        )

    truth = (
        expected_kernel(np.zeros(2), 2 * covariance_x)
        + expected_kernel(np.zeros(2), 2 * covariance_y)
        - 2 * expected_kernel(mean_x - mean_y, covariance_x + covariance_y)
    )
    rng = np.random.default_rng(7)
    estimates = [
        mmd_rbf(
            rng.multivariate_normal(mean_x, covariance_x, size=800),
            rng.multivariate_normal(mean_y, covariance_y, size=800),
            bandwidth,
        )
        for _ in range(8)
    ]
    _within_monte_carlo_error(estimates, truth)


def _sum_of_pairwise_absolute_differences(values):
    """sum_{i, j} |v_i - v_j| in O(n log n): after sorting, v_(k) is larger than k others."""
    values = np.sort(values.astype(np.float64))
    ranks = np.arange(values.size)
    return 2 * np.sum((2 * ranks - values.size + 1) * values)


def test_energy_distance_ten_thousand_cells_against_exact_one_dimensional_sums():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(10_000, 1)).astype(np.float32)
    y = (1.0 + rng.normal(size=(10_000, 1))).astype(np.float32)
    within_x = _sum_of_pairwise_absolute_differences(x[:, 0])
    within_y = _sum_of_pairwise_absolute_differences(y[:, 0])
    pooled = _sum_of_pairwise_absolute_differences(np.concatenate([x[:, 0], y[:, 0]]))
    cross = (pooled - within_x - within_y) / 2
    truth = (2 * cross - within_x - within_y) / 10_000**2
    assert energy_distance(x, y) == pytest.approx(truth, abs=FLOAT32_ATOL)


def _largest_intermediate(jaxpr) -> int:
    largest = 0
    for equation in jaxpr.eqns:
        for variable in equation.outvars:
            largest = max(largest, int(np.prod(getattr(variable.aval, "shape", ()))))
        for parameter in equation.params.values():
            inner = getattr(parameter, "jaxpr", parameter)
            if hasattr(inner, "eqns"):
                largest = max(largest, _largest_intermediate(inner))
    return largest


def test_pairwise_sums_never_build_the_full_distance_matrix():
    cells = jax.ShapeDtypeStruct((10_000, 50), jnp.float32)
    scales = jax.ShapeDtypeStruct((3,), jnp.float32)
    block_size = _metrics_distribution.BLOCK_ELEMENTS // (10_000 * 3)
    traced = jax.make_jaxpr(
        lambda x, y, s: _metrics_distribution._row_sums(
            x, y, s, kernel="rbf", block_size=block_size, exclude_diagonal=True
        )
    )(cells, cells, scales)
    # A block holds block_size x 10,000 x 3 kernel values (<= 2**22), far below the 3 x 10^8
    # entries of a full [10k, 10k, 3] evaluation.
    assert _largest_intermediate(traced.jaxpr) <= _metrics_distribution.BLOCK_ELEMENTS


def test_distribution_metric_validation():
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 2\)"):
        energy_distance(np.ones((5, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 2\)"):
        mmd_rbf(np.ones((5, 3)), np.ones((4, 2)), 1.0)
    with pytest.raises(ValueError, match="at least two cells"):
        energy_distance(np.ones((1, 3)), np.ones((4, 3)), unbiased=True)
    with pytest.raises(ValueError, match="positive"):
        mmd_rbf(np.ones((5, 3)), np.zeros((4, 3)), [1.0, -1.0])
    with pytest.raises(ValueError, match="bandwidth 0"):
        mmd_rbf(np.ones((5, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(np.full((2, 3), np.nan), np.ones((4, 3)))


# ---------------------------------------------------------------------------- structure, coverage


def test_shd_hand_worked_cases():
    chain = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # 0 -> 1 -> 2
    assert shd(chain, chain) == 0
    reversed_first = np.array([[0, 0, 0], [1, 0, 1], [0, 0, 0]])  # 1 -> 0, 1 -> 2
    assert shd(chain, reversed_first) == 1  # a reversal counts once
    assert shd(chain, np.zeros((3, 3))) == 2  # two missing edges
    # 0-1 and 1-2 become 2-cycles (each pair differs once) and 0-2 is extra.
    assert shd(chain, np.ones((3, 3)) - np.eye(3)) == 3
    assert shd(chain, chain + np.eye(3, dtype=int)) == 0  # self-loops ignored by default
    assert shd(chain, chain + np.eye(3, dtype=int), ignore_diagonal=False) == 3
    assert shd(chain, np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]])) == 3
    assert shd(chain, chain.T) == 2
    assert shd(chain, reversed_first) == shd(reversed_first, chain)


def test_shd_validation():
    with pytest.raises(ValueError, match="0 and 1"):
        shd(np.zeros((2, 2)), np.array([[0, 0.7], [0, 0]]))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 3\)"):
        shd(np.zeros((2, 2)), np.zeros((3, 3)))


@pytest.mark.parametrize("ignore_diagonal", [True, False])
def test_auprc_matches_sklearn_with_ties(ignore_diagonal):
    rng = np.random.default_rng(9)
    for _ in range(5):
        truth = rng.random((8, 8)) < 0.25
        # Rounding to one decimal creates many tied scores.
        scores = np.round(0.5 * truth + rng.random((8, 8)), 1)
        keep = ~np.eye(8, dtype=bool) if ignore_diagonal else np.ones((8, 8), dtype=bool)
        expected = average_precision_score(truth[keep], scores[keep])
        # Same step-function sum in float64; only summation order differs.
        assert auprc(truth.astype(int), scores, ignore_diagonal=ignore_diagonal) == pytest.approx(
            expected, abs=1e-12
        )


def test_auprc_edge_cases():
    assert np.isnan(auprc(np.zeros((3, 3)), np.ones((3, 3))))
    true = np.array([[0, 1], [0, 0]])
    assert auprc(true, np.array([[0.0, 0.1], [0.9, 0.0]])) == 0.5  # the edge ranked second
    with pytest.raises(ValueError, match="finite"):
        auprc(true, np.array([[0.0, np.nan], [0.0, 0.0]]))


def test_interval_coverage_hand_case():
    truth = np.array([[0.0, 1.0], [2.0, 3.0]])
    lower = np.array([[-1.0, 1.5], [np.nan, -np.inf]])
    upper = np.array([[0.0, 2.0], [5.0, 3.0]])
    # Entry (1, 0) has a NaN bound and is left out; (0, 0) and (1, 1) sit on a bound (covered),
    # (0, 1) lies below its interval.
    assert interval_coverage(truth, lower, upper) == pytest.approx(2 / 3, abs=0)
    assert np.isnan(interval_coverage([1.0], [np.nan], [np.nan]))
    with pytest.raises(ValueError, match="lower > upper"):
        interval_coverage([0.0], [1.0], [0.0])
    with pytest.raises(ValueError, match="same shape"):
        interval_coverage([0.0, 1.0], [0.0], [1.0])


# ---------------------------------------------------------------------------- NMI, ARI


LABELINGS = [
    ([0, 0, 1, 1], [1, 1, 0, 0]),
    ([0, 0, 1, 1], [0, 1, 0, 1]),
    ([0, 0, 0, 0], [0, 0, 0, 0]),
    ([0, 0, 0, 0], [0, 1, 2, 3]),
    (["a", "b", "b", "c", "c", "c"], ["x", "x", "y", "y", "z", "z"]),
    ([0], [5]),
]


@pytest.mark.parametrize(("labels_true", "labels_pred"), LABELINGS)
def test_nmi_and_ari_match_sklearn_on_special_cases(labels_true, labels_pred):
    # NMI: the same float64 sums arranged differently, a few ulps. ARI: same integer formula.
    assert normalized_mutual_info(labels_true, labels_pred) == pytest.approx(
        normalized_mutual_info_score(labels_true, labels_pred), abs=1e-12
    )
    assert adjusted_rand_index(labels_true, labels_pred) == adjusted_rand_score(
        labels_true, labels_pred
    )


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60).flatmap(
        lambda size: st.tuples(
            st.lists(st.integers(0, 4), min_size=size, max_size=size),
            st.lists(st.integers(0, 6), min_size=size, max_size=size),
        )
    )
)
def test_nmi_and_ari_match_sklearn_on_random_labelings(labelings):
    labels_true, labels_pred = labelings
    # As above: a few ulps for NMI, exact for ARI.
    assert normalized_mutual_info(labels_true, labels_pred) == pytest.approx(
        normalized_mutual_info_score(labels_true, labels_pred), abs=1e-12
    )
    assert adjusted_rand_index(labels_true, labels_pred) == adjusted_rand_score(
        labels_true, labels_pred
    )


def test_clustering_metrics_validate_lengths():
    with pytest.raises(ValueError, match="one label per cell"):
        normalized_mutual_info([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="one label per cell"):
        adjusted_rand_index([0, 1], [0])
