"""Stratified minibatches: unbiased draws, the strata a batch touches, and fits that use them."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.handlers import seed

from causalcell.inference import Strata, batch_strata, fit, subsample

#: Strata of very different sizes (5, 40 and 155 elements), shuffled.
LABELS = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [5, 40, 155]))


def test_every_element_is_in_a_stratified_batch_as_often_as_in_a_uniform_one():
    strata = Strata(LABELS, groups=2, batch_size=15)
    assert strata.batch_size == 16  # rounded up to 2 strata x 8
    draws = 20_000
    keys = jax.random.split(jax.random.key(1), draws)
    batches = np.asarray(jax.vmap(lambda key: strata.draw(200, 16, rng_key=key))(keys))
    assert batches.shape == (draws, 16)
    # Each batch is 2 blocks of 8 elements, each block from one stratum.
    blocks = LABELS[batches].reshape(draws, 2, 8)
    assert np.all(blocks == blocks[..., :1])
    inclusions = np.bincount(batches.ravel(), minlength=200) / draws
    # Expected inclusions per draw: batch / size = 0.08 for every element. Per stratum, the
    # mean over its elements has a sampling sd below 0.002 (at most 2 x 8 x 20,000 inclusions
    # spread over 5 elements); 0.006 is three of them.
    for stratum in range(3):
        assert inclusions[LABELS == stratum].mean() == pytest.approx(0.08, abs=0.006)
    # The plate's scale (size / batch) makes the batch sum an unbiased estimate of the total.
    values = np.random.default_rng(2).normal(3.0, 2.0, 200)
    estimates = values[batches].sum(axis=1) * 200 / 16
    standard_error = estimates.std() / np.sqrt(draws)
    assert abs(estimates.mean() - values.sum()) < 4 * standard_error


def test_bad_strata_raise_before_any_draw():
    with pytest.raises(ValueError, match="integer"):
        Strata(np.array([0.5, 1.0]), 1, 4)
    with pytest.raises(ValueError, match="positive"):
        Strata(LABELS, 0, 4)


def _strata_of_a_batch(handler_size=None, strata=None):
    def model():
        with numpyro.plate("cells", LABELS.size) as index:
            labels = jnp.asarray(LABELS)[index]
            found, slot, covered, block = batch_strata(labels, 3)
            return labels, found, slot, covered, block

    return seed(subsample(model, "cells", handler_size, strata), 0)()


def test_batch_strata_names_only_the_batchs_strata_under_stratified_subsampling():
    labels, found, slot, covered, block = _strata_of_a_batch(strata=Strata(LABELS, 2, 16))
    assert found.shape == (2,)
    assert np.all(covered)
    np.testing.assert_array_equal(np.asarray(found)[np.asarray(slot)], labels)
    # The batch is two blocks of eight cells, one drawn stratum each.
    assert block == 8
    np.testing.assert_array_equal(slot, np.arange(16) // 8)
    # Uniform minibatches and whole plates see every stratum, the slot being the label.
    for size in (16, None):
        labels, found, slot, covered, block = _strata_of_a_batch(handler_size=size)
        np.testing.assert_array_equal(found, [0, 1, 2])
        np.testing.assert_array_equal(slot, labels)
        assert covered is None and block is None


def test_a_stratified_fit_matches_the_conjugate_posterior():
    """x_i ~ N(mu_s, 1) with a mean per stratum: the posterior of each mean is conjugate."""
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat([0, 1, 2, 3], [100, 300, 600, 1000]))
    truth = np.array([-1.0, 0.5, 2.0, 4.0])
    x = (truth[labels] + rng.normal(size=labels.size)).astype(np.float32)

    def model(x, labels):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0).expand([4]).to_event(1))
        with numpyro.plate("cells", x.shape[0]) as index:
            numpyro.sample("x", dist.Normal(mu[labels[index]], 1.0), obs=x[index])

    posterior = fit(
        model,
        {"x": x, "labels": labels},
        guide="normal",
        optimizer=optax.adam(optax.exponential_decay(0.05, 2000, 0.1)),
        num_steps=2000,
        key=1,
        progress_bar=False,
        strata=Strata(labels, groups=2, batch_size=100),
    )
    assert posterior.config["batch_size"] == 100
    assert posterior.config["strata_per_batch"] == 2
    counts = np.bincount(labels)
    exact_mean = np.bincount(labels, weights=x) / (counts + 1e-2)
    exact_sd = (counts + 1e-2) ** -0.5
    fitted = np.asarray(posterior.sample(jax.random.key(2), 4000)["mu"].mean(0))
    # As for uniform minibatches (test_svi), the optimisation noise left after the step size
    # decays is a fraction of the posterior sd; the smallest stratum, in one batch in 20,
    # sees the noisiest gradients. One posterior sd bounds every mean.
    assert np.all(np.abs(fitted - exact_mean) < exact_sd), (fitted - exact_mean) / exact_sd
