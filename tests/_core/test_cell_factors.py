"""Per-cell factors stored once per group (causalcell._core.gaussian.CellFactors) against the
per-cell copy they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalcell._core.gaussian import BlockMultivariateNormal, CellFactors, MultivariateNormal

GROUPS, BLOCK, ORDER = 3, 4, 5


def _factors(rng):
    root = rng.normal(size=(GROUPS, ORDER, ORDER))
    covariance = root @ np.swapaxes(root, -1, -2) + ORDER * np.eye(ORDER)
    return jnp.asarray(np.linalg.cholesky(covariance), jnp.float32)


def test_block_law_is_the_law_of_the_per_cell_copy():
    rng = np.random.default_rng(0)
    factors = _factors(rng)
    slot = np.repeat(np.arange(GROUPS), BLOCK)
    loc = jnp.asarray(rng.normal(size=(GROUPS * BLOCK, ORDER)), jnp.float32)
    value = jnp.asarray(rng.normal(size=(2, GROUPS * BLOCK, ORDER)), jnp.float32)
    block = BlockMultivariateNormal(loc, factors)
    copied = MultivariateNormal(loc, scale_tril=factors[slot])
    assert block.batch_shape == copied.batch_shape and block.event_shape == copied.event_shape

    def total(law_of, loc, factors):
        return jnp.sum(law_of(loc, factors).log_prob(value))

    ours = jax.value_and_grad(total, argnums=(1, 2))(BlockMultivariateNormal, loc, factors)
    reference = jax.value_and_grad(total, argnums=(1, 2))(
        lambda m, f: MultivariateNormal(m, scale_tril=f[slot]), loc, factors
    )
    # float32 solves of condition ~10 and sums of 24 terms: 1e-5 relative.
    np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5)
    for gradient, expected in zip(ours[1], reference[1], strict=True):
        np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)
    # Draws: the same noise through each cell's own factor.
    key = jax.random.key(1)
    noise = jax.random.normal(key, (7, GROUPS * BLOCK, ORDER))
    expected = loc + jnp.einsum("cij,scj->sci", factors[slot], noise)
    np.testing.assert_allclose(block.sample(key, (7,)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block.variance, copied.variance, rtol=1e-6)


@pytest.mark.parametrize("block", [None, BLOCK])
@pytest.mark.parametrize("transpose", [False, True])
def test_cell_factors_multiply_as_the_per_cell_copy(block, transpose):
    rng = np.random.default_rng(2)
    factors = _factors(rng)
    slot = np.repeat(np.arange(GROUPS), BLOCK) if block else rng.integers(0, GROUPS, 12)
    values = jnp.asarray(rng.normal(size=(12, ORDER)), jnp.float32)
    cells = CellFactors(factors, jnp.asarray(slot), block)

    def one_by_one(factor_of):
        """Each cell's own product in float64, one cell at a time."""
        matrices = [np.asarray(factor_of(cell), np.float64) for cell in range(12)]
        if transpose:
            matrices = [matrix.T for matrix in matrices]
        return np.stack([m @ v for m, v in zip(matrices, np.asarray(values), strict=True)])

    # float32 products of 5 terms of order 3: 1e-5 relative, 1e-6 absolute.
    np.testing.assert_allclose(
        cells.matmul(values, transpose=transpose),
        one_by_one(lambda cell: factors[slot[cell]]),
        rtol=1e-5,
        atol=1e-6,
    )
    law = cells.gaussian(values)
    assert isinstance(law, BlockMultivariateNormal if block else MultivariateNormal)
    shared = CellFactors(factors[0], jnp.asarray(slot), block)
    np.testing.assert_allclose(
        shared.matmul(values, transpose=transpose),
        one_by_one(lambda cell: factors[0]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_block_law_names_shapes_that_do_not_split_into_blocks():
    with pytest.raises(ValueError, match="K dividing cells"):
        BlockMultivariateNormal(jnp.zeros((5, 2)), jnp.stack([jnp.eye(2)] * 2))
