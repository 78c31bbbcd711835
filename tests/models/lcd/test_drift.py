"""The drift's parametrisation outside the program: the raw weights' prior at any number of
coordinates, the inverse map, and the closed-form start of a fit, overdispersion included
(issue 14)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from causalcell import clipr
from causalcell.data import register, to_arrays
from causalcell.datasets import ground_truth, simulate_screen
from causalcell.models.lcd._drift import (
    WEIGHT_SCALE,
    drift_from_sites,
    drift_weight_prior,
    raw_weights_of,
)
from causalcell.models.lcd._fit import condition_rates, initial_drift, screen_data
from causalcell.models.lcd._gene_space import choose_gene_space


def _direct(raw, log_scaling):
    """Direct effects ``A_ij / -A_ii`` (zero diagonal) of raw weights at unit decays."""
    size = raw.shape[-1]
    zeros = jnp.zeros(size)
    drift = drift_from_sites(jnp.asarray(raw), zeros, jnp.asarray(log_scaling), zeros)
    matrix = np.asarray(drift.matrix(), np.float64)
    return matrix / -np.diag(matrix)[:, None] * (1.0 - np.eye(size))


@pytest.mark.parametrize("size", [10, 500])
def test_a_rows_prior_total_does_not_grow_with_the_coordinates(size):
    # The median total |raw weight| of a row stays near 0.6 weight_scale, inside the dominance
    # limit (0.95 at unit decays), at 10 and at 500 coordinates; an iid prior of one scale b
    # puts it near (size - 2) b, 150 at 500 coordinates with the earlier Laplace(0.3).
    draws = drift_weight_prior(jnp.ones((size, size)), WEIGHT_SCALE).sample(
        jax.random.PRNGKey(0), (max(2, 4000 // size),)
    )
    totals = np.abs(np.asarray(draws) * (1.0 - np.eye(size))).sum(axis=-1)
    # 4,000 rows: the median's sampling error is a few percent; 0.45-0.8 brackets 0.6.
    assert 0.45 * WEIGHT_SCALE < np.median(totals) < 0.8 * WEIGHT_SCALE
    # A masked prior shares the scale out over the allowed regulators only.
    mask = np.zeros((size, size))
    mask[:, :3] = 1.0
    scale = np.asarray(drift_weight_prior(jnp.asarray(mask), WEIGHT_SCALE).base_dist.scale)
    assert scale[5, 0] == pytest.approx(WEIGHT_SCALE / (4 * (1 + np.log(4))), rel=1e-6)


def test_raw_weights_of_inverts_the_drift_map():
    rng = np.random.default_rng(0)
    size = 12
    # A DAG with effects up to twice the target's decay: reachable only through the scalings.
    dag = np.triu(rng.uniform(-2.0, 2.0, (size, size)) * (rng.random((size, size)) < 0.4), 1)
    raw, log_scaling = raw_weights_of(dag)
    np.testing.assert_allclose(_direct(raw, log_scaling), dag, atol=1e-5)  # float32 sites
    # A cyclic matrix beyond the dominance set comes back scaled, its direction kept.
    cyclic = rng.uniform(-1.0, 1.0, (size, size)) * (1.0 - np.eye(size))
    back = _direct(*raw_weights_of(cyclic))
    factor = np.sum(back * cyclic) / np.sum(cyclic**2)
    assert 0.0 < factor < 1.0
    np.testing.assert_allclose(back, factor * cyclic, atol=1e-5)


def test_a_shift_fit_starts_from_closed_form_clipr_of_the_pseudobulk():
    genes = 10
    adata = simulate_screen(
        num_genes=genes,
        num_cells=300 * (genes + 1),
        perturbed_genes=genes,
        double_perturbations=0,
        intervention="shift",
        control_fraction=1 / (genes + 1),
        key=3,
    )
    registry = register(adata, size_factor_key="size_factor")
    arrays = to_arrays(adata, registry)
    space = choose_gene_space(arrays, registry.targets, "all", 0)
    rates = condition_rates(arrays)
    start = initial_drift(rates, arrays.condition_targets, "shift", space, None)
    started = _direct(start["drift_weights"], start["log_scaling"])
    # The same closed form by hand: log mean rates, control subtracted, one column per target.
    levels = np.log(rates + 1e-6)
    targets = arrays.condition_targets[1:].argmax(axis=-1)
    closed = clipr.direct_effects((levels[1:] - levels[0]).T, targets=targets).mean
    kept = started != 0
    # Kept entries are the closed form less the soft threshold, all of one sign with it.
    assert np.all(np.sign(started[kept]) == np.sign(closed[kept]))
    assert np.all(np.abs(started[kept]) < np.abs(closed[kept]))
    truth = ground_truth(adata).drift.matrix()
    truth = np.asarray(truth) / -np.diag(np.asarray(truth))[:, None] * (1.0 - np.eye(genes))
    strong = np.abs(truth) > 0.3
    # Every strong true edge starts with its sign; few true zeros are kept.
    assert np.all(np.sign(started[strong]) == np.sign(truth[strong]))
    assert np.mean(kept[(truth == 0) & ~np.eye(genes, dtype=bool)]) < 0.2
    # Knockout screens keep the zero start (their responses are not -A^{-1} e_j delta_j).
    assert initial_drift(rates, arrays.condition_targets, "knockout", space, None) == {}
    # Every gene's negative binomial concentration starts at the split of its count variance
    # (_core.overdispersion), not at the prior's median of 10: the simulator's concentrations
    # (log-normal around 5, spread 0.5) are met to a median log error of 0.05-0.1 on
    # screens of this size (0.15 bounds it), where 10 is 0.7 off.
    _, start, _ = screen_data(arrays, rates, space, "shift", None)
    true = adata.uns["simulation"]["noise_parameters"]["concentration"]
    error = np.abs(np.log(start["noise_concentration"] / true))
    assert start["noise_concentration"].shape == (genes,)
    assert np.median(error) < 0.15 < np.median(np.abs(np.log(10.0 / true)))
