"""Tests of causalcell.noise against scipy's exact distributions and closed-form moments."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.sparse
import scipy.special
import scipy.stats
from numpyro import handlers

from causalcell.noise import (
    Gaussian,
    LogNormalizedGaussian,
    NegativeBinomial,
    NoiseModel,
    Poisson,
    ZeroInflatedNegativeBinomial,
    validate_counts,
)
from causalcell.preprocessing import normalize_log1p

NUM_CELLS, NUM_GENES = 6, 5

# float32 log-probabilities are sums of terms no larger than ~gammaln(k + theta) <= ~1e3 for the
# counts below (k < 200); each term is rounded to ~1e3 * 6e-8 = 6e-5, so 5e-4 covers a few terms
# plus the float32 lgamma and log1p implementations (a few ulps each). Observed: <= 8e-5.
LOG_PROB_ABSOLUTE = 5e-4
LOG_PROB_RELATIVE = 1e-5  # a few float32 ulps (eps = 1.2e-7) of the value itself


def _inputs(seed=0):
    """Float32 latent log-rates, size factors, per-gene parameters and NB counts."""
    rng = np.random.default_rng(seed)
    log_rate = rng.uniform(-2.0, 2.0, (NUM_CELLS, NUM_GENES)).astype(np.float32)
    size_factors = rng.uniform(2.0, 20.0, NUM_CELLS).astype(np.float32)
    concentration = rng.uniform(0.5, 30.0, NUM_GENES).astype(np.float32)
    gate_logits = rng.uniform(-3.0, 1.0, NUM_GENES).astype(np.float32)
    mean = size_factors[:, None] * np.exp(log_rate.astype(np.float64))
    counts = rng.negative_binomial(concentration, concentration / (concentration + mean))
    counts[0, :2] = 0  # make sure zeros are present for the zero-inflated branch
    return log_rate, size_factors, concentration, gate_logits, counts


def _reference_mean(log_rate, size_factors, link):
    """Expected counts in float64 from the float32 inputs."""
    fraction = np.exp(np.float64(log_rate))
    if link == "softmax":
        fraction = scipy.special.softmax(np.float64(log_rate), axis=-1)
    return np.float64(size_factors)[:, None] * fraction


def _reference_negative_binomial(counts, mean, concentration):
    concentration = np.float64(concentration)
    return scipy.stats.nbinom.logpmf(counts, concentration, concentration / (concentration + mean))


@pytest.mark.parametrize("link", ["exp", "softmax"])
def test_negative_binomial_log_prob_matches_scipy(link):
    log_rate, size_factors, concentration, _, counts = _inputs()
    noise = NegativeBinomial(link=link)
    distribution = noise.distribution(log_rate, size_factors, concentration=concentration)
    assert distribution.batch_shape == (NUM_CELLS, NUM_GENES)
    expected = _reference_negative_binomial(
        counts, _reference_mean(log_rate, size_factors, link), concentration
    )
    np.testing.assert_allclose(
        distribution.log_prob(noise.observation(counts, size_factors)),
        expected,
        rtol=LOG_PROB_RELATIVE,
        atol=LOG_PROB_ABSOLUTE,
    )


@pytest.mark.parametrize("link", ["exp", "softmax"])
def test_zero_inflated_log_prob_is_the_hand_mixture(link):
    log_rate, size_factors, concentration, gate_logits, counts = _inputs(1)
    noise = ZeroInflatedNegativeBinomial(link=link)
    distribution = noise.distribution(
        log_rate, size_factors, concentration=concentration, gate_logits=gate_logits
    )
    gate = scipy.special.expit(np.float64(gate_logits))
    negative_binomial = _reference_negative_binomial(
        counts, _reference_mean(log_rate, size_factors, link), concentration
    )
    expected = np.where(
        counts == 0,
        np.log(gate + (1 - gate) * np.exp(negative_binomial)),
        np.log1p(-gate) + negative_binomial,
    )
    assert (counts == 0).any() and (counts > 0).any()
    np.testing.assert_allclose(
        distribution.log_prob(counts), expected, rtol=LOG_PROB_RELATIVE, atol=LOG_PROB_ABSOLUTE
    )


@pytest.mark.parametrize("link", ["exp", "softmax"])
def test_poisson_log_prob_matches_scipy(link):
    log_rate, size_factors, _, _, counts = _inputs(2)
    distribution = Poisson(link=link).distribution(log_rate, size_factors)
    expected = scipy.stats.poisson.logpmf(counts, _reference_mean(log_rate, size_factors, link))
    np.testing.assert_allclose(
        distribution.log_prob(counts), expected, rtol=LOG_PROB_RELATIVE, atol=LOG_PROB_ABSOLUTE
    )


@pytest.mark.parametrize("link", ["exp", "softmax"])
def test_gaussian_models_the_log1p_observation(link):
    log_rate, size_factors, _, _, counts = _inputs(3)
    scale = np.linspace(0.2, 1.5, NUM_GENES, dtype=np.float32)
    noise = LogNormalizedGaussian(link=link, target_sum=100.0)
    assert not noise.is_count_model
    observation = noise.observation(counts, size_factors)
    # Same float32 formula as the preprocessing module: agreement to a couple of ulps.
    np.testing.assert_allclose(
        observation, normalize_log1p(counts, size_factors, target_sum=100.0), rtol=1e-6
    )
    fraction = _reference_mean(log_rate, np.ones(NUM_CELLS), link)
    expected = scipy.stats.norm.logpdf(
        np.float64(observation), np.log1p(100.0 * fraction), np.float64(scale)
    )
    distribution = noise.distribution(log_rate, size_factors, scale=scale)
    assert distribution.batch_shape == (NUM_CELLS, NUM_GENES)
    # Terms are O(10) at most here (|z| < 5), so float32 rounding stays below ~1e-5.
    np.testing.assert_allclose(distribution.log_prob(observation), expected, rtol=1e-5, atol=1e-5)


# (mean, concentration, gate). Three cases each, so that both samplers share one compiled shape.
NEGATIVE_BINOMIAL_CASES = np.array([(5.0, 2.0, 0.0), (40.0, 10.0, 0.0), (0.5, 0.7, 0.0)])
ZERO_INFLATED_CASES = np.array([(8.0, 3.0, 0.3), (60.0, 20.0, 0.6), (1.0, 0.5, 0.1)])


def _exact_moments(mean, concentration, gate):
    """Mean, variance and fourth central moment of the (zero-inflated) NB by summing its pmf."""
    support = np.arange(4000)  # far into the tail for every case here (checked by the sum)
    log_pmf = scipy.stats.nbinom.logpmf(
        support, concentration, concentration / (concentration + mean)
    )
    pmf = np.where(support == 0, gate + (1 - gate) * np.exp(log_pmf), (1 - gate) * np.exp(log_pmf))
    assert np.isclose(pmf.sum(), 1.0, atol=1e-12)
    first = pmf @ support
    return first, pmf @ (support - first) ** 2, pmf @ (support - first) ** 4


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_simulated_moments_match_closed_forms(zero_inflated):
    cases = ZERO_INFLATED_CASES if zero_inflated else NEGATIVE_BINOMIAL_CASES
    mean, concentration, gate = cases.T
    size_factor = 4.0
    log_rate = jnp.asarray(np.log(mean / size_factor)[None, :], dtype=jnp.float32)  # 1 cell
    parameters = {"concentration": jnp.asarray(concentration, dtype=jnp.float32)}
    noise = NegativeBinomial()
    if zero_inflated:
        noise = ZeroInflatedNegativeBinomial()
        parameters["gate_logits"] = jnp.asarray(scipy.special.logit(gate), dtype=jnp.float32)
    closed_mean = (1 - gate) * mean
    closed_variance = (1 - gate) * mean * (1 + mean / concentration + gate * mean)

    number = 100_000
    distribution = noise.distribution(log_rate, jnp.array([size_factor]), **parameters)
    draws = distribution.sample(jax.random.key(7), (number,))
    draws = np.asarray(draws, dtype=np.float64).reshape(number, len(cases))
    for case in range(len(cases)):
        exact_mean, exact_variance, fourth_moment = _exact_moments(*cases[case])
        # The closed forms equal the moments of the exact pmf (up to float64 summation).
        assert np.isclose(exact_mean, closed_mean[case], rtol=1e-9)
        assert np.isclose(exact_variance, closed_variance[case], rtol=1e-9)
        # Monte Carlo standard errors: sd / sqrt(n) for the mean, sqrt((mu4 - var^2) / n) for
        # the sample variance; 5 of them bound a false failure by ~6e-7 per check (normal tail).
        mean_error = np.sqrt(exact_variance / number)
        variance_error = np.sqrt((fourth_moment - exact_variance**2) / number)
        assert abs(draws[:, case].mean() - closed_mean[case]) < 5 * mean_error
        assert abs(draws[:, case].var(ddof=1) - closed_variance[case]) < 5 * variance_error


ALL_MODELS = [
    NegativeBinomial(),
    ZeroInflatedNegativeBinomial(),
    Poisson(),
    LogNormalizedGaussian(),
]


def _parameters(noise, num_genes):
    """Fixed per-gene parameters for ``noise`` (the values do not matter here)."""
    values = {
        "concentration": jnp.linspace(0.5, 20.0, num_genes),
        "gate_logits": jnp.linspace(-3.0, 0.0, num_genes),
        "scale": jnp.linspace(0.3, 1.0, num_genes),
    }
    return {name: values[name] for name in handlers.seed(noise.sample_parameters, 0)(num_genes)}


@pytest.mark.parametrize("noise", ALL_MODELS, ids=lambda noise: type(noise).__name__)
def test_sample_parameters_declares_prefixed_per_gene_sites(noise):
    trace = handlers.trace(handlers.seed(noise.sample_parameters, 0)).get_trace(NUM_GENES)
    expected = {
        NegativeBinomial: {"noise_concentration"},
        ZeroInflatedNegativeBinomial: {"noise_concentration", "noise_gate_logits"},
        Poisson: set(),
        LogNormalizedGaussian: {"noise_scale"},
    }[type(noise)]
    assert set(trace) == expected
    for site in trace.values():
        assert site["type"] == "sample" and site["value"].shape == (NUM_GENES,)
    assert set(handlers.seed(noise.sample_parameters, 0)(NUM_GENES)) == {
        name.removeprefix("noise_") for name in expected
    }


def test_prefix_and_custom_prior():
    prior = dist.LogNormal(jnp.linspace(0.0, 2.0, NUM_GENES), 0.5)  # batch shape [genes] is allowed
    noise = NegativeBinomial(prefix="rna", concentration_prior=prior)
    trace = handlers.trace(handlers.seed(noise.sample_parameters, 0)).get_trace(NUM_GENES)
    assert list(trace) == ["rna_concentration"]
    np.testing.assert_allclose(  # the site's density is the custom prior's, summed over genes
        trace["rna_concentration"]["fn"].log_prob(trace["rna_concentration"]["value"]),
        prior.log_prob(trace["rna_concentration"]["value"]).sum(),
        rtol=1e-6,  # same float32 arithmetic, summed in a different order
    )


def test_unknown_link_raises():
    with pytest.raises(ValueError, match="link='identity'"):
        NegativeBinomial(link="identity")


@pytest.mark.parametrize("noise", ALL_MODELS, ids=lambda noise: type(noise).__name__)
def test_finite_for_extreme_rates_and_size_factors(noise):
    log_rate = jnp.array([[20.0, 20.0, -20.0], [20.0, 0.0, -20.0], [20.0, 20.0, -20.0]])
    size_factors = jnp.array([1e-8, 1.0, 1e4])
    counts = jnp.array([[0, 1, 3], [10**7, 0, 1], [10**3, 10**6, 0]])
    parameters = _parameters(noise, 3)

    @jax.jit
    @jax.grad
    def gradient(log_rate):
        distribution = noise.distribution(log_rate, size_factors, **parameters)
        log_prob = distribution.log_prob(noise.observation(counts, size_factors))
        assert log_prob.shape == (3, 3)
        return log_prob.sum()

    log_prob = noise.distribution(log_rate, size_factors, **parameters).log_prob(
        noise.observation(counts, size_factors)
    )
    assert jnp.isfinite(log_prob).all()
    assert jnp.isfinite(gradient(log_rate)).all()


@pytest.mark.parametrize("noise", ALL_MODELS, ids=lambda noise: type(noise).__name__)
def test_jit_and_vmap(noise):
    log_rate, size_factors, _, _, counts = _inputs(4)
    parameters = _parameters(noise, NUM_GENES)
    observation = noise.observation(counts, size_factors)

    def log_prob(log_rate, size_factors):
        return noise.distribution(log_rate, size_factors, **parameters).log_prob(observation)

    eager = log_prob(log_rate, size_factors)
    # jit may fuse float32 operations differently: agreement to a few ulps of the terms.
    np.testing.assert_allclose(
        jax.jit(log_prob)(log_rate, size_factors), eager, rtol=1e-5, atol=1e-5
    )
    # vmap over a leading axis of posterior draws equals the broadcast batch computation.
    draws_log_rate = jnp.stack([log_rate, log_rate + 0.5, log_rate - 1.0])
    draws_size_factors = jnp.stack([size_factors, 2 * size_factors, size_factors])
    mapped = jax.vmap(log_prob)(draws_log_rate, draws_size_factors)
    assert mapped.shape == (3, NUM_CELLS, NUM_GENES)
    np.testing.assert_allclose(
        mapped, log_prob(draws_log_rate, draws_size_factors), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(mapped[0], eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "noise", [Poisson(), LogNormalizedGaussian()], ids=["Poisson", "LogNormalizedGaussian"]
)
def test_sample_under_jit(noise):
    # The negative binomial sampler is drawn under jit in test_inside_subsampled_plates.
    log_rate, size_factors, _, _, _ = _inputs(4)
    parameters = _parameters(noise, NUM_GENES)

    @jax.jit
    def sample(key, log_rate):
        return noise.distribution(log_rate, size_factors, **parameters).sample(key)

    draws = sample(jax.random.key(0), log_rate)
    assert draws.shape == (NUM_CELLS, NUM_GENES)
    if noise.is_count_model:
        assert (draws >= 0).all() and (draws == jnp.round(draws)).all()


def _plate_model(noise, counts, size_factors, cell_batch, gene_batch):
    num_cells, num_genes = size_factors.shape[0], NUM_GENES
    parameters = noise.sample_parameters(num_genes)
    with numpyro.plate("genes", num_genes, subsample_size=gene_batch, dim=-1) as genes:
        with numpyro.plate("cells", num_cells, subsample_size=cell_batch, dim=-2) as cells:
            log_rate = numpyro.sample("x", dist.Normal(-1.0, 0.5))
            cell_sizes = size_factors[cells]
            observed = None
            if counts is not None:
                observed = noise.observation(counts[cells][:, genes], cell_sizes)
            distribution = noise.distribution(
                log_rate, cell_sizes, **{name: value[genes] for name, value in parameters.items()}
            )
            return numpyro.sample("counts", distribution, obs=observed)


@pytest.mark.parametrize(
    ("noise", "gene_batch"),  # softmax normalises over all genes: subsample cells only
    [(noise, 2) for noise in ALL_MODELS] + [(NegativeBinomial(link="softmax"), None)],
    ids=[type(noise).__name__ for noise in ALL_MODELS] + ["NegativeBinomial-softmax"],
)
def test_inside_subsampled_plates(noise, gene_batch):
    _, size_factors, _, _, counts = _inputs(5)
    size_factors, cell_batch = jnp.asarray(size_factors), 4
    model = handlers.seed(_plate_model, 3)
    trace = handlers.trace(model).get_trace(noise, counts, size_factors, cell_batch, gene_batch)
    site = trace["counts"]
    gene_batch_size = gene_batch or NUM_GENES
    assert site["is_observed"] and site["value"].shape == (cell_batch, gene_batch_size)
    assert site["scale"] == pytest.approx(NUM_CELLS / cell_batch * NUM_GENES / gene_batch_size)
    cells, genes = trace["cells"]["value"], trace["genes"]["value"]
    np.testing.assert_array_equal(
        site["value"], noise.observation(counts[cells][:, genes], size_factors[cells])
    )
    parameters = {name.removeprefix("noise_"): trace[name]["value"][genes] for name in trace
                  if name.startswith("noise_")}  # fmt: skip
    expected = noise.distribution(trace["x"]["value"], size_factors[cells], **parameters)
    np.testing.assert_array_equal(
        site["fn"].log_prob(site["value"]), expected.log_prob(site["value"])
    )
    if type(noise) is not NegativeBinomial or noise.link != "exp":
        return  # each sampler's first compilation costs seconds; the others are drawn elsewhere
    # Without data the same program simulates the subsample, here under jit.
    simulate = jax.jit(
        lambda key, size_factors: handlers.seed(_plate_model, key)(
            noise, None, size_factors, cell_batch, gene_batch
        )
    )
    simulated = simulate(jax.random.key(4), size_factors)
    assert simulated.shape == (cell_batch, gene_batch_size)
    assert (simulated >= 0).all() and (simulated == jnp.round(simulated)).all()


def test_noise_models_share_the_interface():
    for noise in ALL_MODELS:
        assert isinstance(noise, NoiseModel)
        assert noise.is_count_model == (type(noise) is not LogNormalizedGaussian)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (np.nan, "1 non-finite"),
        (np.inf, "1 non-finite"),
        (-1.0, "1 negative"),
        (0.5, "1 non-integer"),
    ],
)
def test_validate_counts_names_the_problem(value, problem):
    counts = np.ones((3, 4))
    counts[1, 2] = value
    with pytest.raises(
        ValueError, match=rf"{problem} value\(s\).* at cell 1, gene 2\. Counts must"
    ):
        validate_counts(counts)


def test_validate_counts_counts_and_finds_the_first():
    counts = np.zeros((3, 4), dtype=np.int64)
    counts[2, 0] = counts[1, 3] = -2
    with pytest.raises(
        ValueError, match=r"2 negative value\(s\); the first bad one is -2 at cell 1, gene 3"
    ):
        validate_counts(counts)
    with pytest.raises(TypeError, match="must be numbers"):
        validate_counts(np.array([["1", "2"]]))
    # A vector (one cell's counts) names the position of its first bad value.
    with pytest.raises(
        ValueError, match=r"2 non-integer value\(s\); the first bad one is 1.5 at index 2\."
    ):
        validate_counts(np.array([0.0, 3.0, 1.5, 2.0, 0.25]))


@pytest.mark.parametrize("layout", ["csr", "csc", "coo"])
def test_validate_counts_sparse_is_never_dense(layout):
    # 10^6 x 10^6 would need 8 TB dense: only the stored values may be read.
    rows, columns = np.array([5, 999_999, 7]), np.array([999_998, 3, 11])
    shape = (10**6, 10**6)
    good = scipy.sparse.coo_matrix((np.array([1.0, 2.0, 3.0]), (rows, columns)), shape=shape)
    validate_counts(good.asformat(layout))
    bad = scipy.sparse.coo_matrix((np.array([1.0, 2.5, -3.0]), (rows, columns)), shape=shape)
    with pytest.raises(
        ValueError,
        match=r"1 negative, 1 non-integer value\(s\); the first bad one is -3.0 at cell 7, gene 11",
    ):
        validate_counts(bad.asformat(layout))
    bad = scipy.sparse.coo_matrix((np.array([1.0, 2.5, 3.0]), (rows, columns)), shape=shape)
    with pytest.raises(
        ValueError, match=r"non-integer value\(s\); the first bad one is 2.5 at cell 999999, gene 3"
    ):
        validate_counts(bad.asformat(layout))


def test_validate_counts_other_sparse_formats_and_good_inputs():
    counts = scipy.sparse.lil_matrix((20, 30))
    counts[4, 6] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.* at cell 4, gene 6"):
        validate_counts(counts)
    validate_counts(np.zeros((0, 3)))
    validate_counts(np.array([[0.0, 2.0], [7.0, 1e6]], dtype=np.float32))
    validate_counts(scipy.sparse.csr_array(np.array([[0, 3], [1, 0]], dtype=np.uint16)))
    validate_counts(jnp.array([[1, 2]]))


@pytest.mark.parametrize(
    ("size_factors", "message"),
    [
        ([1.0, -1.0, 2.0], "must be positive and finite; 1 of 3"),
        ([1.0, np.nan, 2.0], "must be positive and finite; 1 of 3"),
        ([1.0, 2.0], r"shape \(2,\) but the log rates have shape \(3, 2\)"),
    ],
)
def test_bad_size_factors_are_named_before_any_density(size_factors, message):
    with pytest.raises(ValueError, match=message):
        NegativeBinomial().distribution(
            jnp.zeros((3, 2)), jnp.asarray(size_factors), concentration=jnp.ones(2)
        )


MESSAGE_MODELS = {
    "negative_binomial": (NegativeBinomial(), {"concentration": jnp.array([0.7, 4.0, 30.0])}),
    "zero_inflated": (
        ZeroInflatedNegativeBinomial(),
        {"concentration": jnp.array([0.7, 4.0, 30.0]), "gate_logits": jnp.array([-1.0, 0.0, 2.0])},
    ),
    "poisson": (Poisson(), {}),
    "gaussian": (Gaussian(), {"scale": jnp.array([0.3, 1.0, 2.0])}),
}


@pytest.mark.parametrize("name", sorted(MESSAGE_MODELS))
def test_the_expected_score_is_the_derivative_of_the_log_likelihood(name):
    noise, parameters = MESSAGE_MODELS[name]
    size_factors = jnp.array([0.5, 2.0])
    log_rate = jnp.array([[0.3, -1.0, 2.0], [1.5, 0.2, -0.5]])
    observed = jnp.array([[0.0, 3.0, 7.0], [12.0, 0.0, 1.0]])
    if not noise.is_count_model:
        observed = observed / 3.0 - 0.5

    def log_likelihood(rate):
        law = noise.distribution(rate, size_factors, **parameters)
        return law.log_prob(observed).sum()

    exact = jax.grad(log_likelihood)(log_rate)
    log_mean = noise.log_mean(log_rate, size_factors)
    # Float32 gradients of the same function: agreement to rounding.
    np.testing.assert_allclose(
        noise.expected_score(observed, log_mean, **parameters), exact, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("name", ["negative_binomial", "poisson", "gaussian"])
def test_information_is_the_fisher_information_and_the_step_a_scoring_step(name):
    noise, parameters = MESSAGE_MODELS[name]
    log_rate, size = jnp.array([0.4, -0.3, 1.2]), jnp.array([3.0])
    log_mean = noise.log_mean(log_rate[None], size)[0]
    if noise.is_count_model:
        # E[score^2] summed exactly over counts 0..3000 (the tail beyond is below 1e-30).
        grid = jnp.arange(3001.0)[:, None]
        law = noise.distribution(log_rate[None], size, **parameters)
        weights = jnp.exp(law.log_prob(grid))
        fisher = jnp.sum(weights * noise.expected_score(grid, log_mean, **parameters) ** 2, 0)
    else:
        fisher = parameters["scale"] ** -2.0  # a Gaussian's, in its mean
    information = noise.information(jnp.exp(log_mean), **parameters)
    np.testing.assert_allclose(information, fisher, rtol=1e-4)
    # The working response is one Fisher-scoring step: x + score / information.
    observed = (
        jnp.array([[2.0, 0.0, 9.0]]) if noise.is_count_model else jnp.array([[0.1, 1.0, 2.0]])
    )
    step = log_rate + noise.expected_score(observed, log_mean, **parameters) / information
    np.testing.assert_allclose(
        noise.working_response(observed, size, log_rate[None]), step, rtol=1e-5, atol=1e-5
    )


def test_a_zero_inflated_gate_near_zero_gives_the_negative_binomial_messages():
    concentration, mean = jnp.array([2.0, 9.0]), jnp.array([0.5, 40.0])
    zinb, nb = ZeroInflatedNegativeBinomial(), NegativeBinomial()
    closed = {"concentration": concentration, "gate_logits": jnp.full(2, -30.0)}
    np.testing.assert_allclose(
        zinb.information(mean, **closed), nb.information(mean, concentration=concentration)
    )
    observed = jnp.array([0.0, 3.0])
    np.testing.assert_allclose(
        zinb.expected_score(observed, jnp.log(mean), 0.1, **closed),
        nb.expected_score(observed, jnp.log(mean), 0.1, concentration=concentration),
        rtol=1e-6,
    )
