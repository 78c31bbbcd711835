"""Peer cases from ChiRho's tests, translated to NumPyro and asked through causalcell's
worlds, each against an answer derived by hand.

- ChiRho's mediation model (``tests/counterfactual/test_mediation.py``; Pearl 2001, figure
  1a): every variable a deterministic function of explicit noise, no plate (one unit):
  W = U2 + U3 + e_W, X = U1 + U3 + U4 + e_X, Z = U4 + X + W + e_Z, Y = X + Z + U1 + U2 + e_Y,
  every U and e standard normal.
- ``tests/counterfactual/test_counterfactual_handler.py``: several interventions on one
  variable stacked as worlds (``test_nested_interventions_same_variable``), and conditioning
  that commutes with intervention (``test_cf_condition_commutes``).
- ``tests/explainable/test_handlers_explanation.py``: the rock-throwing model
  (``stones_bayesian_model``) for actual causation.
- ``tests/interventional/test_do_messenger.py``: twin worlds of the confounded z -> x -> y
  model, and batched interventions as one world each.
- ``tests/counterfactual/test_exogenation.py``: the noise of transformed normal laws, and an
  observed transformed outcome under an upstream intervention.
- NumPyro's ``handlers.do`` docstring example.
"""

import ast

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.distributions.transforms import AffineTransform, ExpTransform
from numpyro.handlers import condition, seed, trace
from numpyro.infer.util import log_density

from causalcell._core.coupling import from_noise, to_noise
from causalcell.handlers import do, exogenize
from causalcell.queries import actual_causation, counterfactual


def mediation_model():
    u1, u2, u3, u4 = (numpyro.sample(f"U{k}", dist.Normal(0.0, 1.0)) for k in range(1, 5))
    w = numpyro.deterministic("W", u2 + u3 + numpyro.sample("e_W", dist.Normal(0.0, 1.0)))
    x = numpyro.deterministic("X", u1 + u3 + u4 + numpyro.sample("e_X", dist.Normal(0.0, 1.0)))
    z = numpyro.deterministic("Z", u4 + x + w + numpyro.sample("e_Z", dist.Normal(0.0, 1.0)))
    noise = numpyro.sample("e_Y", dist.Normal(0.0, 1.0))
    return numpyro.deterministic("Y", x + z + u1 + u2 + noise)


@pytest.mark.parametrize("x_counterfactual", [-1.0, 2.5])
def test_linear_mediation_unconditioned_shares_the_noise(x_counterfactual):
    # ChiRho's test_linear_mediation_unconditioned: Z - X - W and Y - Z - X - W (the noises
    # of Z and Y with the U's) are the same in both worlds.
    result = counterfactual(
        mediation_model,
        evidence={},
        actions={"X": x_counterfactual},
        key=jax.random.key(0),
        num_samples=100,
        num_warmup=100,
    )
    w, x, z, y = (np.asarray(result[name]) for name in "WXZY")
    np.testing.assert_allclose(x[:, 1], x_counterfactual)
    np.testing.assert_allclose((z - x - w)[:, 1], (z - x - w)[:, 0], atol=1e-5)
    np.testing.assert_allclose((y - z - x)[:, 1], (y - z - x)[:, 0], atol=1e-5)


@pytest.mark.parametrize("x_counterfactual", [-1.0, 2.5])
def test_linear_mediation_conditioned_on_every_variable(x_counterfactual):
    # ChiRho's test_linear_mediation_conditioned: W, X, Z, Y observed (deterministic sites,
    # observed through the default kernel of sd 0.01), then do(X = x').
    observed = {"W": 1.0, "X": 0.1, "Z": 2.0, "Y": 1.1}
    result = counterfactual(
        mediation_model,
        evidence={name: jnp.array(value) for name, value in observed.items()},
        actions={"X": x_counterfactual},
        key=jax.random.key(1),
        num_samples=200,
        num_warmup=500,
    )
    x, z, y = (np.asarray(result[name]) for name in "XZY")
    # The factual world reproduces the evidence within a few kernel widths.
    for name, value in observed.items():
        np.testing.assert_allclose(result[name][:, 0], value, atol=0.05)
    np.testing.assert_allclose(x[:, 1], x_counterfactual)
    # Shared noise: Z' - Z = X' - X and Y' - Y = 2 (X' - X), draw by draw (float32).
    np.testing.assert_allclose(z[:, 1] - z[:, 0], x_counterfactual - x[:, 0], atol=1e-5)
    np.testing.assert_allclose(y[:, 1] - y[:, 0], 2 * (x_counterfactual - x[:, 0]), atol=1e-5)


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_a_dependent_intervention_on_the_mediator(shift):
    # ChiRho's test_mediation_dependent_intervention: do(Z = Z + shift) moves Z by exactly
    # shift in the counterfactual world, and Y with it (weight 1).
    result = counterfactual(
        mediation_model,
        evidence={},
        actions={"Z": lambda z: z + shift},
        key=jax.random.key(2),
        num_samples=100,
        num_warmup=100,
    )
    z, y = np.asarray(result["Z"]), np.asarray(result["Y"])
    np.testing.assert_allclose(z[:, 1], z[:, 0] + shift, atol=1e-5)
    np.testing.assert_allclose(y[:, 1], y[:, 0] + shift, atol=1e-5)


@pytest.mark.parametrize("dependent", [False, True], ids=["values", "functions"])
def test_several_interventions_on_one_variable_are_one_world_each(dependent):
    # ChiRho's test_nested_interventions_same_variable, stacked form: x observed at 0, then
    # x set to 2 and to 1 (or shifted by 2 and by 1) in two worlds; y = x + noise.
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        return numpyro.sample("y", dist.Normal(x, 1.0))

    first, second = (lambda x: x + 2.0, lambda x: x + 1.0) if dependent else (2.0, 1.0)
    result = counterfactual(
        model,
        evidence={"x": jnp.array(0.0), "y": jnp.array(0.7)},
        actions=[{"x": first}, {"x": second}],
        key=jax.random.key(3),
    )
    np.testing.assert_allclose(result["x"][0], [0.0, 2.0, 1.0])
    # y keeps its noise 0.7 - x in every world.
    np.testing.assert_allclose(result["y"][0] - result["x"][0], 0.7, atol=1e-6)


def test_conditioning_commutes_with_intervention():
    # ChiRho's test_cf_condition_commutes: z observed (outside the plate), x and y observed
    # per unit; do(z = 0, x = [0.3, 0.4]) inside or outside the conditioning gives the same
    # trace.
    def model():
        z = numpyro.sample("z", dist.Normal(0.0, 1.0), obs=jnp.array(0.1))
        with numpyro.plate("data", 2):
            x = numpyro.sample("x", dist.Normal(z, 1.0))
            return numpyro.sample("y", dist.Normal(x + z, 1.0))

    data = {"x": jnp.array([0.0, 1.0]), "y": jnp.array([1.0, 2.0])}
    actions = {"z": jnp.array(0.0), "x": jnp.array([0.3, 0.4])}
    inside = trace(seed(do(condition(model, data), actions), 0)).get_trace()
    outside = trace(seed(condition(do(model, actions), data), 0)).get_trace()
    assert set(inside) == set(outside)
    for name in ("z", "x", "y"):
        np.testing.assert_array_equal(inside[name]["value"], outside[name]["value"])
    # The intervened values stand, the observed y stays observed, and y's law follows them.
    np.testing.assert_allclose(inside["x"]["value"], [0.3, 0.4])
    np.testing.assert_array_equal(inside["y"]["value"], data["y"])
    np.testing.assert_allclose(inside["y"]["fn"].loc, [0.3, 0.4])


def test_a_tuple_of_alternatives_makes_one_world_each():
    # ChiRho's intervene(x, (a, b)): here a tuple in the actions of a counterfactual query.
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        return numpyro.sample("y", dist.Normal(x, 1.0))

    result = counterfactual(
        model,
        evidence={"x": jnp.array(0.0), "y": jnp.array(0.7)},
        actions={"x": (2.0, 1.0)},
        key=jax.random.key(4),
    )
    assert result.coords["world"] == ("factual", "counterfactual_1", "counterfactual_2")
    np.testing.assert_allclose(result["x"][0], [0.0, 2.0, 1.0])
    # do() itself takes one world's value: a tuple there names the problem, not an array.
    with pytest.raises(TypeError, match="tuple of alternatives makes one counterfactual world"):
        do(model, {"x": (2.0, 1.0)})


def stones(p_sally=1.0, p_bill=1.0):
    """ChiRho's rock-throwing model (``tests/explainable/test_handlers_explanation.py``,
    ``stones_bayesian_model``) with every probability fixed: Sally's hit preempts Bill's."""
    sally_throws = numpyro.sample("sally_throws", dist.Bernoulli(p_sally))
    bill_throws = numpyro.sample("bill_throws", dist.Bernoulli(p_bill))
    sally_hits = numpyro.sample(
        "sally_hits", dist.Bernoulli(jnp.where(sally_throws == 1, 1.0, 0.0))
    )
    bill_free = (bill_throws == 1) & (sally_hits == 0)
    bill_hits = numpyro.sample("bill_hits", dist.Bernoulli(jnp.where(bill_free, 1.0, 0.0)))
    shattered = (bill_hits == 1) | (sally_hits == 1)
    return numpyro.sample("bottle_shatters", dist.Bernoulli(jnp.where(shattered, 1.0, 0.0)))


ACTUAL = {
    "sally_throws": 1.0,
    "bill_throws": 1.0,
    "sally_hits": 1.0,
    "bill_hits": 0.0,
    "bottle_shatters": 1.0,
}


def test_sallys_throw_is_an_actual_cause_and_bills_is_not():
    evidence = {name: jnp.array(value) for name, value in ACTUAL.items()}
    sally = actual_causation(
        stones,
        treatment="sally_throws",
        alternative=0.0,
        outcome="bottle_shatters",
        evidence=evidence,
        witnesses=["bill_throws", "bill_hits"],
        key=5,
    )
    # Not a but-for cause (Bill's stone would have hit), but one once Bill's actual miss is
    # held: the smallest witness set is {bill_hits}.
    assert float(sally["but_for"][0]) == 0.0 and float(sally["actual_cause"][0]) == 1.0
    witness_sets = ast.literal_eval(sally.attrs["witness_sets"])  # a repr of lists of names
    assert witness_sets[int(sally["witness_set"][0])] == ["bill_hits"]
    bill = actual_causation(
        stones,
        treatment="bill_throws",
        alternative=0.0,
        outcome="bottle_shatters",
        evidence=evidence,
        witnesses=["sally_throws", "sally_hits"],
        key=5,
    )
    # Bill's throw changes nothing, whatever of Sally's is held.
    assert float(bill["actual_cause"][0]) == 0.0 and int(bill["witness_set"][0]) == -1


def confounded():
    """ChiRho's z -> x -> y, z -> y model (``tests/interventional/test_do_messenger.py``)."""
    z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    x = numpyro.sample("x", dist.Normal(z, 1.0))
    return numpyro.sample("y", dist.Normal(0.8 * x + 0.3 * z, 1.0))


@pytest.mark.parametrize("x_counterfactual", [-1.0, 0.0, 2.0, 2.5])
def test_twin_worlds_of_the_confounded_model(x_counterfactual):
    # ChiRho's test_do_messenger_twin_counterfactual: the factual x is drawn, the
    # counterfactual x is the action, z is shared; here also y' - y = 0.8 (x' - x) exactly.
    result = counterfactual(
        confounded,
        evidence={},
        actions={"x": x_counterfactual},
        key=jax.random.key(6),
        num_samples=100,
        num_warmup=100,
    )
    z, x, y = (np.asarray(result[name]) for name in "zxy")
    np.testing.assert_allclose(x[:, 1], x_counterfactual)
    assert np.all(x[:, 0] != x_counterfactual)
    np.testing.assert_array_equal(z[:, 1], z[:, 0])
    np.testing.assert_allclose(y[:, 1] - y[:, 0], 0.8 * (x_counterfactual - x[:, 0]), atol=1e-5)


def test_batched_interventions_are_one_world_each():
    # ChiRho's test_do_messenger_batched: (y, z) set to (1, 100), (300, -) and (-, 200) with
    # masks; here one world per batch entry, each with its own sites set.
    result = counterfactual(
        confounded,
        evidence={},
        actions=[{"y": 1.0, "z": 100.0}, {"y": 300.0}, {"z": 200.0}],
        key=jax.random.key(7),
        num_samples=50,
        num_warmup=50,
    )
    z, y = np.asarray(result["z"])[:, 1:], np.asarray(result["y"])[:, 1:]
    assert np.all((z >= 100.0) | (y >= 100.0))
    np.testing.assert_allclose(z[:, 0], 100.0)
    np.testing.assert_allclose(y[:, 1], 300.0)
    np.testing.assert_allclose(z[:, 2], 200.0)


@pytest.mark.parametrize(
    "law",
    [
        dist.Normal(2.0, 0.5),
        dist.LogNormal(1.0, 0.5),
        dist.TransformedDistribution(dist.Normal(0.0, 1.0), AffineTransform(3.0, 2.0)),
        dist.TransformedDistribution(dist.Normal(0.0, 1.0), ExpTransform()),
        dist.TransformedDistribution(
            dist.TransformedDistribution(dist.Normal(0.0, 1.0), AffineTransform(0.0, 0.5)),
            [ExpTransform(), AffineTransform(0.0, 2.0)],
        ),
        dist.LogNormal(jnp.zeros((2, 3)), 1.0).to_event(2),
    ],
    ids=["normal", "log-normal", "affine", "exp", "nested", "independent"],
)
def test_the_noise_of_a_transformed_normal_is_its_base_value(law):
    # ChiRho's test_exogenate_to_base_distributions: exogenation recovers the base normal's
    # value by inverting the transforms; here exogenize's noise site is that value,
    # standardised, and pushes back to the sample exactly.
    def model():
        with numpyro.plate("units", 1):
            return numpyro.sample("y", law)

    sites = trace(seed(exogenize(model), 0)).get_trace()
    noise, value = sites["y__noise"]["value"], sites["y"]["value"]
    np.testing.assert_allclose(from_noise(law, noise[0]), value[0], rtol=1e-5)
    np.testing.assert_allclose(to_noise(law, value[0]), noise[0], rtol=1e-4, atol=1e-5)


def test_observe_downstream_and_intervene_upstream_shares_the_transformed_noise():
    # ChiRho's test_observe_downstream_and_intervene_upstream_shared_noise: y = exp(x + u).
    def model(num_units=1):
        with numpyro.plate("units", num_units):
            x = numpyro.sample("x", dist.Normal(0.0, 1.0))
            base = dist.Normal(0.0, 1.0)
            return numpyro.sample(
                "y", dist.TransformedDistribution(base, [AffineTransform(x, 1.0), ExpTransform()])
            )

    result = counterfactual(
        model,
        evidence={"x": jnp.array([0.2]), "y": jnp.array([3.0])},
        actions={"x": 0.7},
        key=jax.random.key(8),
        posterior_samples={},
    )
    # u = log 3 - 0.2, so y' = exp(0.7 + u) = 3 e^0.5 (float32).
    np.testing.assert_allclose(result["y"][:, 1, 0], 3.0 * np.exp(0.5), rtol=1e-5)


def test_numpyros_do_example():
    # NumPyro's own ``handlers.do`` docstring example: z ~ N(x, s), the model returns z ** 2;
    # under do(z = 1) it returns 1 and z adds nothing to the density.
    def model(x):
        s = numpyro.param("s", 1.0)
        z = numpyro.sample("z", dist.Normal(x, s))
        return z**2

    intervened = do(model, {"z": 1.0})
    assert float(seed(intervened, 0)(0.5)) == 1.0
    density, _ = log_density(intervened, (0.5,), {}, {})
    assert float(density) == 0.0
