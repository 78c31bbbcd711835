"""Multi-world counterfactuals, mediation and probabilities of causation against
hand-derived exact answers.

Linear-Gaussian mediation (Pearl 2001, section 4: the natural direct effect is the path
coefficient of t -> y, the indirect one the product along t -> m -> y) and its interaction
variant, where the two effects depend on the treatment levels; ChiRho's connected and
independent coin models (``tests/explainable/test_handlers_explanation.py``,
``test_edge_eq_neq``) for necessity and sufficiency, and a Bernoulli risk model whose answers
Tian and Pearl (2000) give under monotonicity."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from causalcell.queries import (
    MEDIATION_WORLDS,
    actual_causation,
    counterfactual,
    mediation,
    probabilities_of_causation,
)

# Parameter draws of the path coefficients: t -> m (a), t -> y (b), m -> y (c), t x m (d).
DRAWS = {
    "a": jnp.array([0.8, 0.5, 1.1]),
    "b": jnp.array([0.5, -0.2, 1.0]),
    "c": jnp.array([1.5, 1.0, 2.0]),
    "d": jnp.array([0.0, 0.7, -0.4]),
}


def model(num_units=1):
    a = numpyro.sample("a", dist.Normal(0.8, 0.1))
    b = numpyro.sample("b", dist.Normal(0.5, 0.1))
    c = numpyro.sample("c", dist.Normal(1.5, 0.1))
    d = numpyro.sample("d", dist.Normal(0.0, 0.1))
    with numpyro.plate("units", num_units):
        t = numpyro.sample("t", dist.Normal(0.0, 1.0))
        m = numpyro.sample("m", dist.Normal(a * t, 0.5))
        return numpyro.sample("y", dist.Normal(b * t + c * m + d * t * m, 0.3))


def test_population_effects_of_linear_mediation_are_the_path_products():
    draws = {name: value.at[:].set(value * (name != "d")) for name, value in DRAWS.items()}
    result = mediation(
        model,
        treatment="t",
        mediator="m",
        outcome="y",
        values=(0.0, 2.0),
        key=0,
        posterior_samples=draws,
        num_noise_samples=50,
        model_kwargs={"num_units": 4},
    )
    # Shared noise makes every unit's contrast exact, not only its mean: direct b (t1 - t0),
    # indirect a c (t1 - t0); float32 arithmetic only.
    a, b, c = (np.asarray(draws[name]) for name in "abc")
    np.testing.assert_allclose(result["direct_effect"], 2.0 * b, atol=1e-5)
    np.testing.assert_allclose(result["indirect_effect"], 2.0 * a * c, atol=1e-5)
    np.testing.assert_allclose(result["total_effect"], 2.0 * (b + a * c), atol=1e-5)
    assert result.coords["world"] == MEDIATION_WORLDS and result["response"].shape == (3, 3)


def test_a_units_effects_with_interaction_are_exact_from_its_own_noise():
    t, m, y = 0.2, 0.5, 1.0
    result = mediation(
        model,
        treatment="t",
        mediator="m",
        outcome="y",
        values=(-1.0, 1.5),
        key=1,
        evidence={"t": jnp.array([t]), "m": jnp.array([m]), "y": jnp.array([y])},
        posterior_samples=DRAWS,
    )
    a, b, c, d = (np.asarray(DRAWS[name]) for name in "abcd")

    def mediator(level):  # M(level): the unit's noise (m - a t) / 0.5 kept
        return m + a * (level - t)

    def outcome(level, value):  # Y(level, value): its noise (y - b t - c m - d t m) / 0.3 kept
        return y + b * (level - t) + c * (value - m) + d * (level * value - t * m)

    control, treated = outcome(-1.0, mediator(-1.0)), outcome(1.5, mediator(1.5))
    nested = outcome(1.5, mediator(-1.0))
    np.testing.assert_allclose(result["direct_effect"], nested - control, atol=1e-5)
    np.testing.assert_allclose(result["indirect_effect"], treated - nested, atol=1e-5)
    # With an interaction the natural direct effect is not b (t1 - t0): it depends on M(t0).
    assert not np.allclose(result["direct_effect"], 2.5 * b, atol=1e-3)


def test_a_list_of_actions_gives_one_world_each_and_later_worlds_read_earlier_ones():
    evidence = {"t": jnp.array([0.2]), "m": jnp.array([0.5]), "y": jnp.array([1.0])}
    result = counterfactual(
        model,
        evidence=evidence,
        actions=[{"t": 1.0}, {"m": 0.0}, lambda worlds: {"m": worlds[1]["m"] - 1.0}],
        key=jax.random.key(2),
        posterior_samples=DRAWS,
    )
    labels = ("factual", "counterfactual_1", "counterfactual_2", "counterfactual_3")
    assert result.coords["world"] == labels and result["m"].shape == (3, 4, 1)
    a = np.asarray(DRAWS["a"])
    np.testing.assert_allclose(result["m"][:, 1, 0], 0.5 + a * 0.8, atol=1e-5)  # M(t = 1)
    np.testing.assert_allclose(result["m"][:, 2, 0], 0.0)
    np.testing.assert_allclose(result["m"][:, 3, 0], 0.5 + a * 0.8 - 1.0, atol=1e-5)


def test_bad_mediation_questions_name_the_problem():
    with pytest.raises(ValueError, match="three different sites"):
        mediation(model, treatment="t", mediator="t", outcome="y", values=(0, 1), key=0)
    with pytest.raises(ValueError, match="control_value, treated_value"):
        mediation(model, treatment="t", mediator="m", outcome="y", values=(0,), key=0)
    with pytest.raises(ValueError, match=r"actual values of \['m'\]"):
        actual_causation(
            model, treatment="t", alternative=0.0, outcome="m", evidence={"t": 1.0}, key=0
        )
    with pytest.raises(ValueError, match="empty list"):
        counterfactual(model, evidence={}, actions=[], key=0, posterior_samples=DRAWS)


def copy_model(num_units=1):
    """ChiRho's connected model, Y = X: a fair coin X and Y computed from it."""
    with numpyro.plate("units", num_units):
        x = numpyro.sample("x", dist.Bernoulli(0.5))
        return numpyro.deterministic("y", x)


def independent_model(num_units=1):
    """ChiRho's independent model: two fair coins."""
    with numpyro.plate("units", num_units):
        numpyro.sample("x", dist.Bernoulli(0.5))
        return numpyro.sample("y", dist.Bernoulli(0.5))


def risk_model(num_units=1):
    """X a fair coin; P(Y = 1 | X) = 0.3 untreated, 0.9 treated (Bernoulli, no noise)."""
    with numpyro.plate("units", num_units):
        x = numpyro.sample("x", dist.Bernoulli(0.5))
        return numpyro.sample("y", dist.Bernoulli(jnp.where(x > 0.5, 0.9, 0.3)))


def _causation(model, coupling, key):
    return probabilities_of_causation(
        model,
        treatment="x",
        outcome="y",
        values=(0.0, 1.0),
        outcome_values=(0.0, 1.0),
        key=key,
        num_noise_samples=4000,
        coupling=coupling,
    )


@pytest.mark.parametrize("coupling", ["resample", "quantile"])
def test_a_copied_cause_is_necessary_and_sufficient_and_an_independent_one_neither(coupling):
    copied, independent = (_causation(m, coupling, 3) for m in (copy_model, independent_model))
    for name in ("necessity", "sufficiency", "necessity_and_sufficiency"):
        np.testing.assert_array_equal(copied[name], [1.0])
        # x does not reach y: y keeps its factual value in every world, whatever the coupling.
        np.testing.assert_array_equal(independent[name], [0.0])


@pytest.mark.parametrize(
    ("coupling", "expected"),
    [
        # Monotone worlds (Tian and Pearl 2000): PNS = 0.9 - 0.3, PN = PNS / 0.9, PS = PNS / 0.7.
        ("quantile", (0.6 / 0.9, 0.6 / 0.7, 0.6)),
        # Independent worlds: PN = P(Y = 0 | do(0)), PS = P(Y = 1 | do(1)), PNS their product.
        ("resample", (0.7, 0.9, 0.63)),
    ],
)
def test_probabilities_of_causation_of_a_bernoulli_outcome(coupling, expected):
    result = _causation(risk_model, coupling, 4)
    got = [float(result[name][0]) for name in ("necessity", "sufficiency")]
    got.append(float(result["necessity_and_sufficiency"][0]))
    # 4,000 units, about 2,000 in each conditioning event: 4 binomial standard errors of a
    # proportion near 0.7 over 1,800 units are at most 0.045.
    np.testing.assert_allclose(got, expected, atol=0.045)
