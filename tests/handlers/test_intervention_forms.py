"""Interventions of every form on named sites: functions of the site's value, distributions,
and deterministic sites (issue 15), with exact answers derived by hand.

The models follow ChiRho's tests of functional and stochastic interventions
(``tests/interventional/test_handlers.py``) and its explicit-noise SCMs written with
deterministic sites (``docs/source/tutorial_i.ipynb``), translated to NumPyro."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import condition, seed, substitute, trace
from numpyro.infer.util import log_density

from causalcell.handlers import NATURAL_SUFFIX, abduction_model, do
from causalcell.queries import counterfactual

# x = 0.5 e_x, y = b x + 0.3 e_y, per unit; b a global parameter.
B = jnp.array([1.5, 1.0, 2.0])


def model(num_units=1):
    b = numpyro.sample("b", dist.Normal(1.5, 0.2))
    with numpyro.plate("units", num_units):
        x = numpyro.sample("x", dist.Normal(0.0, 0.5))
        return numpyro.sample("y", dist.Normal(b * x, 0.3))


def noise_model(num_units=1):
    """ChiRho's explicit-noise form: X = 1 + e_X is a deterministic site, Y = 2 X + e_Y."""
    with numpyro.plate("units", num_units):
        noise = numpyro.sample("e_x", dist.Normal(0.0, 1.0))
        x = numpyro.deterministic("x", 1.0 + noise)
        return numpyro.sample("y", dist.Normal(2.0 * x, 0.1))


def test_a_function_of_the_site_value_keeps_the_natural_draw_and_its_density():
    shifted = do(model, {"x": lambda x: x + 1.0})
    sites = trace(seed(shifted, 0)).get_trace(num_units=3)
    natural = sites["x" + NATURAL_SUFFIX]
    assert natural["type"] == "sample" and sites["x"]["type"] == "deterministic"
    # Each sits in the plate once (the natural draw passes the plate a second time).
    for name in ("x", "x" + NATURAL_SUFFIX):
        assert [frame.name for frame in sites[name]["cond_indep_stack"]] == ["units"]
    np.testing.assert_allclose(sites["x"]["value"], natural["value"] + 1.0, rtol=1e-6)
    # y sees the intervened x.
    np.testing.assert_allclose(sites["y"]["fn"].loc, sites["b"]["value"] * sites["x"]["value"])
    # The density is the natural draw's (N(0, 0.5)) and y's, at the values the model used.
    values = {"b": 1.2, "x" + NATURAL_SUFFIX: jnp.array([0.1, -0.4, 0.3])}
    values["y"] = jnp.array([0.0, 1.0, 2.0])
    density, _ = log_density(substitute(shifted, values), (), {"num_units": 3}, {})
    x = values["x" + NATURAL_SUFFIX] + 1.0
    expected = (
        dist.Normal(1.5, 0.2).log_prob(1.2)
        + dist.Normal(0.0, 0.5).log_prob(values["x" + NATURAL_SUFFIX]).sum()
        + dist.Normal(1.2 * x, 0.3).log_prob(values["y"]).sum()
    )
    np.testing.assert_allclose(density, expected, rtol=1e-6)


def test_the_counterfactual_of_a_functional_intervention_is_the_units_own_shift():
    evidence = {"x": jnp.array([0.4, -0.2]), "y": jnp.array([0.5, 0.1])}
    result = counterfactual(
        model,
        evidence=evidence,
        actions={"x": lambda x: x + 1.0},
        key=jax.random.key(0),
        posterior_samples={"b": B},
        model_kwargs={"num_units": 2},
    )
    # Every unit's x moves by one from its own factual value and y by b per draw (its noise
    # (y - b x) / 0.3 is shared); float32 arithmetic only.
    np.testing.assert_allclose(result["x"][:, 1], np.broadcast_to(evidence["x"] + 1.0, (3, 2)))
    expected = evidence["y"] + B[:, None] * 1.0
    np.testing.assert_allclose(result["y"][:, 1], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result["y"][:, 0], np.broadcast_to(evidence["y"], (3, 2)))


@pytest.mark.parametrize("coupling", ["resample", "quantile"])
def test_a_stochastic_intervention_shares_the_gaussian_noise(coupling):
    evidence = {"x": jnp.array([0.4]), "y": jnp.array([0.5])}
    result = counterfactual(
        model,
        evidence=evidence,
        actions={"x": dist.Normal(3.0, 2.0)},
        key=jax.random.key(1),
        posterior_samples={"b": B},
        coupling=coupling,
    )
    # x's noise is 0.4 / 0.5 = 0.8, so under N(3, 2) x' = 3 + 2 * 0.8 = 4.6, in every draw.
    np.testing.assert_allclose(result["x"][:, 1, 0], 4.6, rtol=1e-6)
    expected = evidence["y"][0] + B * (4.6 - 0.4)
    np.testing.assert_allclose(result["y"][:, 1, 0], expected, rtol=1e-5)


def test_a_non_gaussian_stochastic_intervention_keeps_the_quantile():
    evidence = {"x": jnp.array([0.0]), "y": jnp.array([0.5])}
    result = counterfactual(
        model,
        evidence=evidence,
        actions={"x": dist.Uniform(0.0, 10.0)},
        key=jax.random.key(2),
        posterior_samples={"b": B},
        coupling="quantile",
    )
    # x = 0 is the median of N(0, 0.5): the median of U(0, 10) is 5 (float32 cdf/icdf).
    np.testing.assert_allclose(result["x"][:, 1, 0], 5.0, rtol=1e-5)


def test_deterministic_sites_take_values_and_functions():
    sites = trace(seed(do(noise_model, {"x": 3.0}), 0)).get_trace(num_units=2)
    np.testing.assert_allclose(sites["x"]["value"], [3.0, 3.0])
    np.testing.assert_allclose(sites["y"]["fn"].loc, [6.0, 6.0])
    doubled = trace(seed(do(noise_model, {"x": lambda x: 2.0 * x}), 0)).get_trace(num_units=2)
    np.testing.assert_allclose(doubled["x"]["value"], 2.0 * (1.0 + doubled["e_x"]["value"]))
    # The unit's counterfactual: its noise e_x is abducted from the observed y's parent.
    evidence = {"e_x": jnp.array([0.5]), "y": jnp.array([3.2])}
    result = counterfactual(
        noise_model,
        evidence=evidence,
        actions={"x": lambda x: x - 1.0},
        key=jax.random.key(3),
        posterior_samples={},
    )
    # Factual x = 1.5, y's noise (3.2 - 3) / 0.1 = 2; x' = 0.5, y' = 1 + 0.2.
    np.testing.assert_allclose(result["x"][:, :, 0], [[1.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(result["y"][:, 1, 0], 1.2, rtol=1e-5)


def test_innermost_function_wins_and_conditioning_reaches_the_natural_draw():
    nested = do(do(model, {"x": lambda x: x + 1.0}), {"x": lambda x: x * 100.0})
    sites = trace(seed(nested, 0)).get_trace()
    np.testing.assert_allclose(sites["x"]["value"], sites["x" + NATURAL_SUFFIX]["value"] + 1.0)
    # Evidence from outside names the natural draw (the intervened x is not a random site).
    observed = condition(do(model, {"x": lambda x: x + 1.0}), {"x" + NATURAL_SUFFIX: 0.25})
    sites = trace(seed(observed, 0)).get_trace()
    np.testing.assert_allclose(sites["x"]["value"], [1.25])


def test_bad_forms_name_the_problem():
    with pytest.raises(TypeError, match=r"deterministic site.*value or a function"):
        trace(seed(do(noise_model, {"x": dist.Normal(0.0, 1.0)}), 0)).get_trace()
    with pytest.raises(ValueError, match="event shape"):
        trace(seed(do(model, {"x": dist.Normal(jnp.zeros(2), 1.0).to_event(1)}), 0)).get_trace()
    with pytest.raises(ValueError, match=r"function's value for 'x' has shape \(4,\)"):
        trace(seed(do(model, {"x": lambda x: jnp.zeros(4)}), 0)).get_trace(num_units=3)
    with pytest.raises(ValueError, match=r"value for 'x' has shape \(4,\)"):
        trace(seed(do(noise_model, {"x": jnp.zeros(4)}), 0)).get_trace(num_units=3)


def chain():
    """The textbook unit without a plate: x -> z -> y, every site unit noise."""
    x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    z = numpyro.sample("z", dist.Normal(x, 1.0))
    return numpyro.sample("y", dist.Normal(z, 1.0))


def test_a_model_without_plates_is_one_unit_and_its_sites_follow_the_action():
    # Before: z kept its factual value under do(x) and y was drawn afresh (silently wrong).
    result = counterfactual(
        chain,
        evidence={"x": 1.0, "y": 2.0},
        actions={"x": 3.0},
        key=jax.random.key(4),
        num_samples=2000,
        num_warmup=500,
    )
    assert set(result) == {"x", "z", "y"}
    z, y = result["z"], result["y"]
    # Each draw's noise is shared: z' = z + (3 - 1), y' = y + 2 exactly (float32).
    np.testing.assert_allclose(z[:, 1], z[:, 0] + 2.0, atol=1e-5)
    np.testing.assert_allclose(y[:, 1], 4.0, atol=1e-5)
    # Abduction: z | x = 1, y = 2 is N(1.5, 1/2); 2,000 NUTS draws put the mean within 0.1
    # (about 6 standard errors at an effective sample size near 1,000).
    assert abs(float(np.mean(z[:, 0])) - 1.5) < 0.1


def log_normal_model(num_units=1):
    """ChiRho's ambiguity model's log-normal site, here downstream of the action."""
    with numpyro.plate("units", num_units):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        return numpyro.sample("x", dist.LogNormal(z, 0.5))


@pytest.mark.parametrize("coupling", ["resample", "quantile"])
def test_a_transformed_normal_site_shares_its_noise_under_either_coupling(coupling):
    evidence = {"z": jnp.array([0.2]), "x": jnp.array([1.5])}
    result = counterfactual(
        log_normal_model,
        evidence=evidence,
        actions={"z": 1.0},
        key=jax.random.key(5),
        posterior_samples={},
        coupling=coupling,
    )
    # x = exp(z + 0.5 eps): eps = (log 1.5 - 0.2) / 0.5, so x' = 1.5 e^(1 - 0.2) (float32).
    np.testing.assert_allclose(result["x"][:, 1, 0], 1.5 * np.exp(0.8), rtol=1e-5)
    np.testing.assert_allclose(result["x"][:, 0, 0], 1.5, rtol=1e-6)


# A two-step hidden Markov model (NumPyro's and ChiRho's categorical HMM examples, shrunk):
# states z1 -> z2, emissions x_t ~ N(MU[z_t], 1).
START, TRANSITION, MU = (
    jnp.array([0.6, 0.4]),
    jnp.array([[0.7, 0.3], [0.2, 0.8]]),
    jnp.array([-1.0, 1.0]),
)


def hmm(num_units=1):
    with numpyro.plate("units", num_units):
        z1 = numpyro.sample("z1", dist.Categorical(START))
        z2 = numpyro.sample("z2", dist.Categorical(TRANSITION[z1]))
        numpyro.sample("x1", dist.Normal(MU[z1], 1.0))
        return numpyro.sample("x2", dist.Normal(MU[z2], 1.0))


def test_hidden_states_are_abducted_exactly_and_the_emissions_keep_their_noise():
    x1, x2 = 0.5, 1.2
    result = counterfactual(
        hmm,
        evidence={"x1": jnp.array([x1]), "x2": jnp.array([x2])},
        actions={"z1": 1},
        key=jax.random.key(6),
        num_samples=4000,
    )
    # The posterior of (z1, z2) by hand: start x transition x both emission densities.
    weights = np.array(
        [
            [
                START[a] * TRANSITION[a, b] * np.exp(-0.5 * ((x1 - MU[a]) ** 2 + (x2 - MU[b]) ** 2))
                for b in range(2)
            ]
            for a in range(2)
        ]
    )
    weights /= weights.sum()
    z1, z2 = np.asarray(result["z1"][:, 0, 0]), np.asarray(result["z2"][:, 0, 0])
    # 4,000 exact draws: 4 binomial standard errors are at most 0.032.
    np.testing.assert_allclose(np.mean(z1), weights[1].sum(), atol=0.032)
    np.testing.assert_allclose(np.mean(z2), weights[:, 1].sum(), atol=0.032)
    # do(z1 = 1): z2 follows (resampled from TRANSITION[1]), x2 keeps its noise x2 - MU[z2].
    changed = np.asarray(result["z2"][:, 1, 0])
    np.testing.assert_allclose(np.mean(changed[z1 == 0]), 0.8, atol=0.05)  # ~1,000 draws
    x2_counterfactual = np.asarray(result["x2"][:, 1, 0])
    np.testing.assert_allclose(
        x2_counterfactual - np.asarray(MU)[changed], x2 - np.asarray(MU)[z2], atol=1e-5
    )


def test_evidence_on_a_deterministic_site_abducts_its_upstream_noise():
    # ChiRho's explicit-noise form observed on X itself (before: evidence on X was rejected).
    result = counterfactual(
        noise_model,
        evidence={"x": jnp.array([1.5]), "y": jnp.array([3.2])},
        actions={"x": lambda x: x - 1.0},
        key=jax.random.key(7),
        num_samples=500,
        num_warmup=300,
    )
    noise = np.asarray(result["e_x"][:, 0, 0])
    # X = 1 + e_X = 1.5 through a kernel of sd 0.01 (the default tolerance) on a N(0, 1)
    # prior: e_X is 0.5 within 5 kernel widths in every draw.
    np.testing.assert_allclose(noise, 0.5, atol=0.05)
    np.testing.assert_allclose(result["x"][:, 0, 0], 1.0 + noise, rtol=1e-6)
    # y' = y + 2 (x' - x) = 3.2 - 2 whatever the draw of e_X (its noise is (y - 2 x) / 0.1).
    np.testing.assert_allclose(result["y"][:, 1, 0], 1.2, atol=1e-4)


# One law per kind of site, each for an unobserved site that the action does not reach.
UNREACHED_LAWS = {
    "normal": lambda: dist.Normal(0.3, 1.0),
    "log-normal": lambda: dist.LogNormal(0.0, 0.5),
    "softplus normal": lambda: dist.TransformedDistribution(
        dist.Normal(0.0, 1.0), dist.transforms.SoftplusTransform()
    ),
    "gamma": lambda: dist.Gamma(2.0, 1.0),
    "bernoulli": lambda: dist.Bernoulli(0.4),
    "categorical": lambda: dist.Categorical(jnp.array([0.2, 0.5, 0.3])),
    "poisson": lambda: dist.Poisson(4.0),
    "negative binomial": lambda: dist.NegativeBinomial2(6.0, 2.0),
}


@pytest.mark.parametrize("observed", [True, False], ids=["observed", "latent"])
@pytest.mark.parametrize("coupling", ["resample", "quantile"])
@pytest.mark.parametrize("law", sorted(UNREACHED_LAWS))
def test_every_site_no_intervention_reaches_is_identical_in_both_worlds(law, coupling, observed):
    if not observed and law in ("poisson", "negative binomial"):
        pytest.skip("an unobserved count has infinite support: no abduction enumerates it")

    def model(num_units=1):
        with numpyro.plate("units", num_units):
            upstream = numpyro.sample("upstream", UNREACHED_LAWS[law]())
            treated = numpyro.sample("treated", dist.Normal(0.0, 1.0))
            return numpyro.sample("outcome", dist.Normal(treated + 0.1 * upstream, 0.5))

    evidence = {"outcome": jnp.array([0.4, -0.2, 1.0]), "treated": jnp.array([0.1, 0.5, -1.0])}
    if observed:  # three values drawn from the law
        evidence["upstream"] = UNREACHED_LAWS[law]().sample(jax.random.key(9), (3,))
    result = counterfactual(
        model,
        evidence=evidence,
        actions={"treated": 2.0},
        key=jax.random.key(8),
        num_samples=50,
        num_warmup=50,
        coupling=coupling,
        model_kwargs={"num_units": 3},
    )
    # Pearl's definition: a site no intervention affects keeps its value, draw by draw.
    np.testing.assert_array_equal(result["upstream"][:, 1], result["upstream"][:, 0])
    if observed:
        factual = result["upstream"][:, 0]  # one exact draw: nothing is left unknown
        np.testing.assert_array_equal(factual, np.broadcast_to(evidence["upstream"], factual.shape))


def test_the_kernel_on_a_deterministic_site_counts_once_per_unit():
    observed = jnp.array([1.5, 0.2, 1.0])
    abduction = abduction_model(noise_model, {"x": observed}, model_kwargs={"num_units": 3})
    noise = jnp.array([0.5, -0.8, 0.0])
    values = {"e_x__noise": noise, "y__noise": jnp.zeros(3)}
    density, _ = log_density(abduction, (), {"num_units": 3}, values)
    # Prior of both noises plus one N(observed; 1 + e_x, 0.01) term per unit (a total inside
    # the plate would have been counted three times).
    expected = (
        dist.Normal(0.0, 1.0).log_prob(noise).sum()
        + dist.Normal(0.0, 1.0).log_prob(jnp.zeros(3)).sum()
        + dist.Normal(1.0 + noise, 0.01).log_prob(observed).sum()
    )
    np.testing.assert_allclose(density, expected, rtol=1e-6)


def test_hidden_states_of_many_units_are_enumerated_unit_by_unit():
    # 20 units: 4^20 joint configurations, but 4 per unit given the (fixed) parameters.
    x1 = jnp.linspace(-2.0, 2.0, 20)
    x2 = jnp.linspace(1.5, -1.5, 20)
    result = counterfactual(
        hmm,
        evidence={"x1": x1, "x2": x2},
        actions={"z1": 0},
        key=jax.random.key(10),
        num_samples=1000,
        model_kwargs={"num_units": 20},
    )
    a, b = np.meshgrid([0, 1], [0, 1], indexing="ij")
    start, transition, mu = (np.asarray(v) for v in (START, TRANSITION, MU))
    for unit in range(20):
        weights = (
            start[a]
            * transition[a, b]
            * np.exp(-0.5 * ((x1[unit] - mu[a]) ** 2 + (x2[unit] - mu[b]) ** 2))
        )
        exact = weights[1].sum() / weights.sum()
        # 1,000 exact draws per unit: 4 binomial standard errors are at most 0.064.
        np.testing.assert_allclose(np.mean(result["z1"][:, 0, unit]), exact, atol=0.064)


def hmm_with_shift(num_units=1):
    """The HMM above with an unknown emission offset: a continuous unknown beside the states."""
    shift = numpyro.sample("shift", dist.Normal(0.0, 1.0))
    with numpyro.plate("units", num_units):
        z1 = numpyro.sample("z1", dist.Categorical(START))
        z2 = numpyro.sample("z2", dist.Categorical(TRANSITION[z1]))
        numpyro.sample("x1", dist.Normal(MU[z1] + shift, 1.0))
        return numpyro.sample("x2", dist.Normal(MU[z2] + shift, 1.0))


def test_hidden_states_beside_a_continuous_unknown_are_summed_out_for_nuts():
    x1, x2 = jnp.array([0.5, -1.5, 2.0]), jnp.array([1.2, -0.3, 1.0])
    result = counterfactual(
        hmm_with_shift,
        evidence={"x1": x1, "x2": x2},
        actions={"z1": 1},
        key=jax.random.key(11),
        num_samples=2000,
        num_warmup=500,
        sites=["z1", "z2", "x2"],
        model_kwargs={"num_units": 3},
    )
    # The exact posterior on a grid of the offset: prior x product over units of the sum over
    # their four state paths.
    grid = np.linspace(-5.0, 5.0, 2001)
    start, transition, mu = (np.asarray(v) for v in (START, TRANSITION, MU))
    a, b = np.meshgrid([0, 1], [0, 1], indexing="ij")
    paths = start[a] * transition[a, b]  # [2, 2]
    posterior = np.exp(-0.5 * grid**2)
    first_state = np.zeros((3, grid.size))
    for unit in range(3):
        joint = paths[..., None] * np.exp(
            -0.5 * (x1[unit] - mu[a][..., None] - grid) ** 2
            - 0.5 * (x2[unit] - mu[b][..., None] - grid) ** 2
        )  # [2, 2, grid]
        posterior = posterior * joint.sum((0, 1))
        first_state[unit] = joint[1].sum(0) / joint.sum((0, 1))
    posterior /= posterior.sum()
    exact = first_state @ posterior  # P(z1 = 1 | evidence) per unit
    # 2,000 NUTS draws (effective size several hundred): 0.06 is about 3 standard errors.
    np.testing.assert_allclose(np.mean(result["z1"][:, 0], axis=0), exact, atol=0.06)
    # Under do(z1 = 1) x2 keeps its noise and the draw's offset: x2' - MU[z2'] = x2 - MU[z2].
    mu_of = np.asarray(MU)
    z2, x2_worlds = np.asarray(result["z2"]), np.asarray(result["x2"])
    np.testing.assert_allclose(
        x2_worlds[:, 1] - mu_of[z2[:, 1]], x2_worlds[:, 0] - mu_of[z2[:, 0]], atol=1e-5
    )


@pytest.mark.parametrize(
    ("law", "expected"),
    [
        # Location moves by z' - z = 0.8; the standardised noise (x - z) / 0.5 is kept.
        (lambda z: dist.Laplace(z, 0.5), 1.1 + 0.8),
        (lambda z: dist.Logistic(z, 0.5), 1.1 + 0.8),
        # Scale grows by e^0.8 around 0: the noise x / e^z is kept.
        (lambda z: dist.Cauchy(0.0, jnp.exp(z)), 1.1 * np.exp(0.8)),
    ],
    ids=["laplace", "logistic", "cauchy"],
)
def test_symmetric_location_scale_laws_share_their_noise(law, expected):
    def model(num_units=1):
        with numpyro.plate("units", num_units):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            return numpyro.sample("x", law(z))

    result = counterfactual(
        model,
        evidence={"z": jnp.array([0.2]), "x": jnp.array([1.1])},
        actions={"z": 1.0},
        key=jax.random.key(12),
        posterior_samples={},
    )
    # Through the normal noise of the same quantile and back (float32 round trip).
    np.testing.assert_allclose(result["x"][:, 1, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("action", [1.0, lambda x: x + 1.0], ids=["value", "function"])
def test_an_intervened_site_sits_in_each_of_its_plates_once(action):
    # The intervened record and the natural draw pass the plates again; before, they came
    # back with every frame twice (the shared list of the original message), so the
    # counterfactual result named an axis of a nested-plate site after the wrong plate.
    def model():
        with numpyro.plate("cells", 3), numpyro.plate("genes", 2, dim=-2):
            return numpyro.sample("x", dist.Normal(0.0, 1.0))

    sites = trace(seed(do(model, {"x": action}), 0)).get_trace()
    for name in [n for n in sites if n.startswith("x")]:
        assert sorted(frame.name for frame in sites[name]["cond_indep_stack"]) == [
            "cells",
            "genes",
        ]
    result = counterfactual(
        model, evidence={}, actions={"x": action}, key=0, num_samples=20, num_warmup=20
    )
    assert result.dims["x"] == ("world", "genes", "cells")
