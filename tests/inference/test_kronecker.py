"""The Kronecker-correlated global guide against exact Gaussian posteriors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

from causalcell.inference import AmortizedGuide, AutoKroneckerNormal, fit

ROWS, COLUMNS, NOISE = 3, 4, 0.3


def summed_matrix(y, axis):
    """``W`` [3, 4] with iid N(0, 1) entries; each sum along ``axis`` observed with noise 0.3."""
    weights = numpyro.sample("W", dist.Normal(0.0, 1.0).expand([ROWS, COLUMNS]).to_event(2))
    numpyro.sample("scale", dist.LogNormal(0.0, 1.0))  # a non-matrix site: mean-field
    numpyro.sample("y", dist.Normal(weights.sum(axis), NOISE).to_event(1), obs=y)


@pytest.mark.parametrize("axis", [0, 1], ids=["rows", "columns"])
def test_draws_match_the_exact_posterior_of_a_matrix(axis):
    # Observing the sums along one axis correlates the entries along it: along that axis the
    # exact posterior covariance is I - 11^T / (n + 0.09) (n entries summed), across the other
    # axis the entries are independent. That is a Kronecker covariance, so the guide's optimum
    # is exact; a mean-field guide's variance would be 1 / (1 + 1 / 0.09) = 0.083 instead of 0.68.
    summed = (ROWS, COLUMNS)[axis]
    y = jnp.linspace(-1.0, 2.0, (COLUMNS, ROWS)[axis])
    posterior = fit(
        summed_matrix,
        {"y": y},
        guide="kronecker",
        model_kwargs={"axis": axis},
        optimizer=optax.adam(optax.exponential_decay(0.02, 4000, 0.1)),
        num_steps=4000,
        key=0,
        progress_bar=False,
    )
    draws = np.asarray(posterior.sample(jax.random.key(1), 20_000)["W"])
    along = np.moveaxis(draws, 1 + axis, -1).reshape(20_000, -1, summed)  # [draw, line, entry]
    exact_mean = np.asarray(y)[:, None] / (summed + NOISE**2)
    covariance = np.eye(summed) - 1.0 / (summed + NOISE**2)
    # Exact posterior sds are ~0.8; a tenth of that leaves room for SGD noise (the Monte Carlo
    # error of 20,000 draws is 0.006).
    np.testing.assert_allclose(
        along.mean(0), np.broadcast_to(exact_mean, along.shape[1:]), atol=0.08
    )
    for line in range(along.shape[1]):
        # Covariance entries of ~0.3-0.7: 0.08 is about a tenth of a variance.
        np.testing.assert_allclose(np.cov(along[:, line].T), covariance, atol=0.08)
    # Entries of different lines are independent.
    across = np.corrcoef(along[:, 0, 0], along[:, 1, 0])[0, 1]
    assert abs(across) < 0.05
    assert np.asarray(posterior.sample(0, 10)["scale"]).shape == (10,)


def test_median_and_the_amortized_guide_take_it_as_global_guide():
    def model(counts):
        weights = numpyro.sample("W", dist.Normal(0.0, 1.0).expand([2, 3]).to_event(2))
        with numpyro.plate("cells", counts.shape[0]):
            latent = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            rate = jnp.exp(latent @ weights)
            numpyro.sample("counts", dist.Poisson(rate).to_event(1), obs=counts)

    counts = jnp.asarray(np.random.default_rng(0).poisson(2.0, size=(50, 3)), jnp.float32)
    guide = AmortizedGuide(model, hidden=(4,), global_guide="kronecker")
    posterior = fit(model, {"counts": counts}, guide=guide, num_steps=20, progress_bar=False)
    assert isinstance(guide.global_guide, AutoKroneckerNormal)
    assert guide.global_guide.matrix_shapes == {"W": (2, 3)}
    median = guide.global_guide.median(posterior.params)
    np.testing.assert_array_equal(median["W"], posterior.params["W_global_loc"])
