"""Counterfactual worlds against Pearl's exact answers and Gaussian conditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats
from numpyro.handlers import condition, seed, trace

from causalcell.handlers import WORLDS, UnknownSiteError, abduce, exogenize, predict_worlds
from causalcell.queries import counterfactual

# Z -> X -> Y and Z -> Y; x = a z + 0.5 e_x, y = b x + c z + 0.3 e_y, z = e_z.
C = -0.7
SCALES = {"z": 1.0, "x": 0.5, "y": 0.3}


def model(num_units=1):
    a = numpyro.sample("a", dist.Normal(0.8, 0.2))
    b = numpyro.sample("b", dist.Normal(1.5, 0.2))
    with numpyro.plate("units", num_units):
        z = numpyro.sample("z", dist.Normal(0.0, SCALES["z"]))
        x = numpyro.sample("x", dist.Normal(a * z, SCALES["x"]))
        return numpyro.sample("y", dist.Normal(b * x + C * z, SCALES["y"]))


PARAMETERS = {"a": jnp.array([0.8, 0.5, 1.1]), "b": jnp.array([1.5, 1.0, 2.0])}


def test_exogenize_records_the_inverted_noise_of_observed_sites():
    sites = trace(seed(exogenize(condition(model, {"x": jnp.array([1.0])})), 0)).get_trace()
    a, z = sites["a"]["value"], sites["z"]["value"]
    np.testing.assert_allclose(sites["x__noise"]["value"], (1.0 - a * z) / 0.5, rtol=1e-6)
    # A latent Gaussian site becomes loc + scale * eps with an explicit standard-normal site.
    assert sites["z__noise"]["type"] == "sample" and sites["z"]["type"] == "deterministic"
    np.testing.assert_allclose(sites["z"]["value"], sites["z__noise"]["value"], rtol=1e-6)


def test_fully_observed_unit_matches_pearls_exact_counterfactual():
    evidence = {"z": jnp.array([0.3, -1.0]), "x": jnp.array([1.0, 0.2]), "y": jnp.array([0.5, 1.7])}
    result = counterfactual(
        model,
        evidence=evidence,
        actions={"x": jnp.array([2.0, -0.5])},
        key=jax.random.key(0),
        posterior_samples=PARAMETERS,
        model_kwargs={"num_units": 2},
    )
    assert result.coords["world"] == WORLDS and result.dims["y"] == ("world", "units")
    y = result["y"]
    # Abduction is exact here (no latent unit noise): y' = y + b (x' - x), z unchanged, per
    # parameter draw; float32 arithmetic only.
    expected = evidence["y"] + PARAMETERS["b"][:, None] * (jnp.array([2.0, -0.5]) - evidence["x"])
    np.testing.assert_allclose(y[:, 1], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[:, 0], np.broadcast_to(evidence["y"], (3, 2)), rtol=1e-6)
    np.testing.assert_allclose(result["z"][:, 1], result["z"][:, 0])
    np.testing.assert_array_equal(result["z"][:, 1], np.broadcast_to(evidence["z"], (3, 2)))


def test_partially_observed_unit_matches_the_gaussian_conditional():
    a, b = 0.8, 1.5
    observed_y = 0.5
    result = counterfactual(
        model,
        evidence={"y": jnp.array([observed_y])},
        actions={"x": jnp.array([2.0])},
        key=jax.random.key(1),
        posterior_samples={"a": jnp.array([a]), "b": jnp.array([b])},
        num_samples=4000,
        num_warmup=500,
    )
    # y = (b a + C) z + b 0.5 e_x + 0.3 e_y; y' = 2 b + C z + 0.3 e_y. Gaussian conditioning:
    # E[y' | y] = 2 b + (C cov(z, y) + 0.3 cov(e_y, y)) / var(y) * y.
    loading = b * a + C
    variance = loading**2 + (b * 0.5) ** 2 + 0.3**2
    expected = 2 * b + (C * loading + 0.3 * 0.3) / variance * observed_y
    conditional_variance = (C**2 + 0.09) - (C * loading + 0.09) ** 2 / variance
    draws = result["y"][:, 1, 0]
    # NUTS draws are autocorrelated: allow 5 standard errors with an effective sample size of
    # a quarter of the 4000 draws.
    tolerance = 5 * np.sqrt(conditional_variance / 1000)
    assert draws.mean() == pytest.approx(expected, abs=tolerance)
    assert draws.var() == pytest.approx(conditional_variance, rel=0.15)  # ~5 se of a variance


def counts(num_units=1, boost=0.0):
    rate = numpyro.sample("rate", dist.LogNormal(1.0, 0.1))
    with numpyro.plate("units", num_units):
        level = numpyro.sample("level", dist.Normal(0.0, 1.0))
        return numpyro.sample("count", dist.Poisson(rate * jnp.exp(0.5 * level + boost)))


def test_quantile_coupling_keeps_counts_when_the_law_is_unchanged_and_orders_them_when_it_grows():
    evidence = {"count": jnp.array([3.0, 0.0, 12.0]), "level": jnp.array([0.1, -0.4, 1.2])}
    rate = 2.7
    draws = abduce(
        counts,
        evidence,
        key=jax.random.key(0),
        posterior_samples={"rate": jnp.full(50, rate)},
        model_kwargs={"num_units": 3},
    )

    def worlds(raise_level, coupling):
        actions = {"level": evidence["level"] + raise_level}
        return predict_worlds(
            counts,
            draws,
            evidence=evidence,
            actions=actions,
            key=jax.random.key(1),
            coupling=coupling,
            model_kwargs={"num_units": 3},
        )["count"]

    same = worlds(0.0, "quantile")
    # Same law in both worlds: the randomised quantile maps every count back to itself.
    np.testing.assert_array_equal(same[:, 1], same[:, 0])
    higher = worlds(2.0, "quantile")
    # A stochastically larger law maps each quantile to a count at least as large.
    assert np.all(higher[:, 1] >= higher[:, 0])
    # Exactly: u lies in [F(x - 1), F(x)] of the factual Poisson F, so the counterfactual count
    # lies in [G^-1(F(x - 1)), G^-1(F(x))] of the raised Poisson G (both quantile maps exact).
    factual_mean = rate * np.exp(0.5 * np.asarray(evidence["level"]))
    raised_mean = factual_mean * np.exp(0.5 * 2.0)
    x = np.asarray(evidence["count"])
    lowest = scipy.stats.poisson.ppf(scipy.stats.poisson.cdf(x - 1, factual_mean), raised_mean)
    highest = scipy.stats.poisson.ppf(scipy.stats.poisson.cdf(x, factual_mean), raised_mean)
    assert np.all(higher[:, 1] >= np.maximum(lowest, 0.0)) and np.all(higher[:, 1] <= highest)
    # An action that leaves the count's law unchanged leaves the count unchanged under either
    # coupling (Pearl: same parents, same exogenous noise, same value).
    kept = worlds(0.0, "resample")
    np.testing.assert_array_equal(kept[:, 1], kept[:, 0])
    resampled = worlds(2.0, "resample")
    assert np.any(resampled[:, 1] != resampled[:, 0])
    # Where the law changes, resampled counts are fresh Poisson draws: their mean over the 50
    # draws is within 5 standard errors sqrt(mean / 50) of the raised closed-form mean.
    error = np.abs(resampled[:, 1].mean(0) - raised_mean)
    np.testing.assert_array_less(error, 5 * np.sqrt(raised_mean / 50))


def test_errors_name_the_problem():
    with pytest.raises(UnknownSiteError, match=r"evidence names \['w'\]"):
        abduce(model, {"w": jnp.array([1.0])}, key=jax.random.key(0), posterior_samples=PARAMETERS)
    with pytest.raises(ValueError, match="coupling must be one of"):
        predict_worlds(
            model, PARAMETERS, evidence={}, actions={}, key=jax.random.key(0), coupling="share"
        )
    # An unknown output site is reported before any abduction runs.
    with pytest.raises(UnknownSiteError, match=r"sites names \['yy'\].*Did you mean 'y'"):
        counterfactual(
            model,
            evidence={"y": jnp.array([0.5])},
            actions={"x": jnp.array([2.0])},
            key=jax.random.key(0),
            sites=["yy"],
        )


def test_vectorised_scm_counterfactual_under_a_knockout_matches_pearl():
    import networkx as nx

    from causalcell.handlers import knockout
    from causalcell.scm import LinearSCM

    scm = LinearSCM(nx.DiGraph([("Z", "X"), ("X", "Y"), ("Z", "Y")]), nodes=["Z", "X", "Y"])
    weights = {("Z", "X"): 0.8, ("Z", "Y"): -0.7, ("X", "Y"): 1.5}
    parameters = {
        "weights": jnp.array([[weights[edge] for edge in scm.edges]]),
        "bias": jnp.array([[0.1, -0.2, 0.3]]),
        "scale": jnp.array([[1.0, 0.5, 0.3]]),
    }
    observed = jnp.array([[0.3, 1.0, 0.5], [-1.0, 0.2, 1.7]])
    result = counterfactual(
        scm.vectorized,
        evidence={"genes": observed},
        actions={"genes": {"X": knockout(2.0)}},
        key=jax.random.key(3),
        posterior_samples=parameters,
        model_kwargs={"num_units": 2},
    )
    world = result["genes"][0]
    np.testing.assert_allclose(world[0], observed, rtol=1e-6)
    # do(X = 2) for a fully observed unit: Z keeps its value, X = 2, Y' = Y + 1.5 (2 - X).
    expected = observed.at[:, 1].set(2.0).at[:, 2].add(1.5 * (2.0 - observed[:, 1]))
    np.testing.assert_allclose(world[1], expected, rtol=1e-5, atol=1e-5)


def test_abduction_by_a_fitted_guide_gives_the_gaussian_conditional_mean():
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal

    from causalcell.handlers import abduction_model

    fixed = condition(model, {"a": 0.8, "b": 1.5})
    evidence = {"y": jnp.array([0.5])}
    guide = AutoMultivariateNormal(abduction_model(fixed, evidence))
    optimizer = optax.adam(optax.exponential_decay(0.05, 1000, 0.1))
    svi = SVI(abduction_model(fixed, evidence), guide, optimizer, Trace_ELBO(num_particles=4))
    fitted = svi.run(jax.random.key(0), 2000, progress_bar=False)
    draws = abduce(
        fixed,
        evidence,
        key=jax.random.key(1),
        guide=guide,
        guide_params=fitted.params,
        num_samples=4000,
    )
    worlds = predict_worlds(
        fixed, draws, evidence=evidence, actions={"x": jnp.array([2.0])}, key=jax.random.key(2)
    )
    loading = 1.5 * 0.8 + C
    variance = loading**2 + 0.75**2 + 0.09
    expected = 3.0 + (C * loading + 0.09) / variance * 0.5
    # The abduction posterior is Gaussian, so a full-rank Gaussian guide can be exact and y' is
    # linear in the noise: the mean matches up to optimisation error, allowed 0.05 here (~2%
    # of y's scale; a decaying step size leaves ~0.02; 4000 guide draws add 0.01 s.e.).
    assert float(worlds["y"][:, 1].mean()) == pytest.approx(expected, abs=0.05)


# ChiRho's smoking tutorial, translated: stress -> smokes -> cancer, stress -> cancer, all
# Bernoulli; P(cancer | stress, smokes) from this table.
CANCER = jnp.array([[0.1, 0.3], [0.5, 0.9]])  # rows: stress 0/1; columns: smokes 0/1


def smoking(num_units=1):
    p_stress = numpyro.sample("p_stress", dist.Beta(2.0, 2.0))
    with numpyro.plate("units", num_units):
        stress = numpyro.sample("stress", dist.Bernoulli(p_stress))
        smokes = numpyro.sample("smokes", dist.Bernoulli(jnp.where(stress > 0, 0.8, 0.2)))
        risk = CANCER[stress.astype(jnp.int32), smokes.astype(jnp.int32)]
        return numpyro.sample("cancer", dist.Bernoulli(risk))


@pytest.mark.parametrize("coupling", ["resample", "quantile"])
def test_discrete_sites_no_intervention_reaches_keep_their_values(coupling):
    evidence = {
        "stress": jnp.array([0.0, 1.0]),
        "smokes": jnp.array([0.0, 0.0]),
        "cancer": jnp.array([0.0, 1.0]),
    }
    result = counterfactual(
        smoking,
        evidence=evidence,
        actions={"smokes": jnp.array([1.0, 1.0])},
        key=jax.random.key(0),
        posterior_samples={"p_stress": jnp.full(4000, 0.5)},
        coupling=coupling,
        model_kwargs={"num_units": 2},
    )
    # stress is upstream of the action: identical in both worlds, in every draw.
    np.testing.assert_array_equal(result["stress"][:, 1], np.broadcast_to([0.0, 1.0], (4000, 2)))
    cancer = np.asarray(result["cancer"][:, 1]).mean(0)
    if coupling == "resample":
        # Fresh draws from the counterfactual law P(cancer | stress, smokes = 1) = 0.3, 0.9:
        # within 4 binomial standard errors of 4000 draws (at most 0.032).
        np.testing.assert_allclose(cancer, [0.3, 0.9], atol=4 * np.sqrt(0.21 / 4000))
    else:
        # Monotone (quantile) coupling, exact by hand: unit 0 had cancer = 0 at risk 0.1, so
        # u ~ U[0, 0.9] and cancer' = 1 iff u > 0.7 (risk 0.3): 0.2 / 0.9; unit 1 had cancer = 1
        # at risk 0.5, so u ~ U[0.5, 1] > 0.1: always 1. Tolerance: 4 binomial s.e.
        np.testing.assert_allclose(cancer, [2 / 9, 1.0], atol=4 * np.sqrt(0.18 / 4000))


def ambiguity(num_units=1):
    # ChiRho's ambiguity test model, translated: x (log-normal) does not depend on z.
    weight = numpyro.sample("weight", dist.Normal(2.0, 0.1))
    with numpyro.plate("units", num_units):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        x = numpyro.sample("x", dist.LogNormal(0.0, 1.0))
        return numpyro.sample("y", dist.Normal(x + weight * z, 0.5))


def test_a_continuous_non_gaussian_site_the_action_does_not_reach_keeps_its_value():
    evidence = {"z": jnp.array([0.4]), "x": jnp.array([1.1]), "y": jnp.array([2.3])}
    weights = jnp.array([1.9, 2.0, 2.1])
    result = counterfactual(
        ambiguity,
        evidence=evidence,
        actions={"z": jnp.array([-1.0])},
        key=jax.random.key(2),
        posterior_samples={"weight": weights},
    )
    # x is not a descendant of z: it keeps its observed value exactly, so y' = y + w (z' - z)
    # per draw (float32 arithmetic only).
    np.testing.assert_array_equal(result["x"][:, 1, 0], np.full(3, 1.1, np.float32))
    np.testing.assert_allclose(result["y"][:, 1, 0], 2.3 + weights * (-1.0 - 0.4), rtol=1e-5)


def test_same_law_compares_laws_entry_by_entry_through_wrappers():
    from causalcell._core.coupling import same_law

    rate = jnp.array([1.0, 2.0, 3.0])
    moved = rate.at[1].set(2.5)
    np.testing.assert_array_equal(
        same_law(dist.Poisson(rate), dist.Poisson(moved)), [True, False, True]
    )
    # to_event folds the entries into one event: one change changes the whole law.
    assert not same_law(dist.Poisson(rate).to_event(1), dist.Poisson(moved).to_event(1))

    # A zero-inflated negative binomial: its gate and its inner law's parameters both count.
    def inflated(gate, mean):
        return dist.ZeroInflatedNegativeBinomial2(mean, 5.0, gate=gate)

    np.testing.assert_array_equal(
        same_law(inflated(jnp.array([0.1, 0.2]), 3.0), inflated(jnp.array([0.1, 0.3]), 3.0)),
        [True, False],
    )
    # Categorical probabilities are an event of the parameter: compared as a whole per entry.
    probs = jnp.array([[0.2, 0.8], [0.5, 0.5]])
    np.testing.assert_array_equal(
        same_law(dist.Categorical(probs), dist.Categorical(probs.at[1].set(0.0).at[1, 1].set(1))),
        [True, False],
    )
    assert not same_law(dist.Normal(0.0, 1.0), dist.LogNormal(0.0, 1.0))
    # A transformed law (log-normal) with an unchanged base law is the same law.
    assert same_law(dist.LogNormal(0.3, 1.0), dist.LogNormal(0.3, 1.0))
