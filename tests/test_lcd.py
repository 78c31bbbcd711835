"""LCD with linear drift (work in progress for issue 5): the stable parametrisation and the
program's latent law against closed forms."""

import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.handlers import condition, seed, trace

from causalcell.diffusion import spectral_abscissa, stationary_moments
from causalcell.interventions import compose, from_targets
from causalcell.models._lcd_program import condition_interventions, drift_from_sites, lcd_model


@pytest.mark.parametrize("seed_value", range(5))
def test_drift_is_stable_for_any_parameters_even_after_knockouts(seed_value):
    rng = np.random.default_rng(seed_value)
    genes = 12
    raw = jnp.asarray(rng.normal(0.0, 3.0, (genes, genes)), jnp.float32)  # far outside the prior
    drift = drift_from_sites(
        raw,
        jnp.asarray(rng.normal(0, 1, genes)),
        jnp.asarray(rng.normal(0, 2, genes)),
        jnp.zeros(genes),
    )
    assert spectral_abscissa(drift.matrix()) < 0
    knockout = compose(
        from_targets(genes, [0, 3], "knockout", 0.0), from_targets(genes, [5], "knockout", 1.0)
    )
    mean, covariance = stationary_moments(drift, 0.5, knockout)
    assert np.isfinite(np.asarray(covariance)).all() and np.isfinite(np.asarray(mean)).all()


def test_one_way_regulation_can_exceed_the_targets_decay():
    # A two-gene chain with A[1, 0] = 3 (three times gene 1's decay) is reachable through the
    # scaling: W'[1, 0] = 0.9 * 0.95 and e^{s_1 - s_0} = 3 / 0.855.
    raw = jnp.array([[0.0, 0.0], [0.9, 0.0]])
    ratio = 3.0 / (0.9 * 0.95)
    drift = drift_from_sites(
        raw / 0.95 * 0.95, jnp.zeros(2), jnp.array([0.0, np.log(ratio)]), jnp.array([1.0, 2.0])
    )
    matrix = np.asarray(drift.matrix())
    assert matrix[1, 0] == pytest.approx(0.9 * ratio, rel=1e-5)
    # The bias makes the baseline the control stationary mean exactly.
    np.testing.assert_allclose(np.asarray(stationary_moments(drift, 0.5)[0]), [1.0, 2.0], rtol=1e-5)


def test_cells_follow_the_intervened_stationary_law_of_their_condition():
    genes = 3
    targets = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 1]], jnp.float32)
    condition_index = jnp.array([0, 1, 2, 2])
    fixed = {
        "drift_weights": jnp.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -0.4, 0.0]]),
        "log_decay": jnp.zeros(genes),
        "log_scaling": jnp.zeros(genes),
        "baseline": jnp.array([-2.0, -1.0, -3.0]),
        "log_sigma": jnp.full(genes, jnp.log(0.5)),
        "intervention_effect": jnp.array([1.0, -2.0, 0.5]),
    }
    model = condition(lcd_model, fixed)
    sites = trace(seed(model, 0)).get_trace(
        condition_index=condition_index,
        condition_targets=targets,
        size_factors=jnp.full(4, 1e4),
        baseline_prior=jnp.zeros(genes),
    )
    drift = drift_from_sites(
        fixed["drift_weights"], fixed["log_decay"], fixed["log_scaling"], fixed["baseline"]
    )
    interventions = condition_interventions(
        targets, "shift", {"effect": fixed["intervention_effect"]}, drift
    )
    means, covariances = stationary_moments(drift, 0.5, interventions)
    law = sites["latent"]["fn"]
    # Each cell's latent law is exactly its condition's Gaussian stationary law.
    np.testing.assert_allclose(law.loc, means[condition_index], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        law.covariance_matrix, covariances[condition_index], rtol=1e-4, atol=1e-6
    )
    # A shift of gene 0 by its learned effect moves gene 0 by exactly that effect (decay 1).
    assert float(means[1, 0] - means[0, 0]) == pytest.approx(1.0, rel=1e-5)
    assert sites["counts"]["value"].shape == (4, genes)
