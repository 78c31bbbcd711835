"""Peer cases: ChiRho's mediation model (``tests/counterfactual/test_mediation.py``; Pearl
2001, figure 1a), translated to NumPyro and asked through causalcell's worlds.

The model writes every variable as a deterministic function of explicit noise and has no
plate (one unit): W = U2 + U3 + e_W, X = U1 + U3 + U4 + e_X, Z = U4 + X + W + e_Z,
Y = X + Z + U1 + U2 + e_Y, every U and e standard normal."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from causalcell.queries import counterfactual


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
