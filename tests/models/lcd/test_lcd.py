"""LCD with linear drift (work in progress for issue 5): the stable parametrisation and the
program's latent law against closed forms."""

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.handlers import condition, seed, trace

from causalcell.diffusion import spectral_abscissa, stationary_moments
from causalcell.interventions import compose, from_targets
from causalcell.models.lcd._drift import drift_from_sites, drift_inverses, linear_drift_from_sites
from causalcell.models.lcd._kinds import condition_interventions
from causalcell.models.lcd._program import condition_laws, lcd_model


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
    # scaling: the raw weight 0.9 maps into dominance as W'[1, 0] = 0.9 * 0.95 / (0.95 + 0.9)
    # and e^{s_1 - s_0} = 3 / W'[1, 0].
    raw = jnp.array([[0.0, 0.0], [0.9, 0.0]])
    dominated = 0.9 * 0.95 / (0.95 + 0.9)
    drift = drift_from_sites(
        raw, jnp.zeros(2), jnp.array([0.0, np.log(3.0 / dominated)]), jnp.array([1.0, 2.0])
    )
    matrix = np.asarray(drift.matrix())
    assert matrix[1, 0] == pytest.approx(3.0, rel=1e-5)  # float32 exp and log of values ~3
    # The bias makes the baseline the control stationary mean exactly.
    np.testing.assert_allclose(np.asarray(stationary_moments(drift, 0.5)[0]), [1.0, 2.0], rtol=1e-5)


def test_dominance_map_is_strictly_increasing_and_never_reaches_the_boundary():
    """Raw rows map one to one into strict dominance: no raw direction is flat in the drift.

    (A hard shrink to the boundary made every raw row beyond it give the same drift, and the
    posterior piled up there.)"""
    decay = jnp.array([0.5, 1.0, 2.0])
    row = jnp.array([[0.0, 0.3, -0.2], [0.4, 0.0, 0.1], [-0.6, 0.5, 0.0]])
    sums = []
    for factor in (0.01, 0.1, 1.0, 10.0, 100.0, 1e4):
        drift = drift_from_sites(row * factor, jnp.log(decay), jnp.zeros(3), jnp.zeros(3))
        off_diagonal = np.abs(np.asarray(drift.weights)).sum(axis=1)
        sums.append(off_diagonal / np.asarray(decay))
    sums = np.array(sums)  # [factor, row] of sum_k |W'_jk| / d_j
    assert np.all(sums < 0.95)  # strictly inside the dominance limit, however large the row
    assert np.all(np.diff(sums, axis=0) > 0)  # and strictly increasing along every raw row
    # Near zero the map is the identity to first order: 0.01 * row sums (0.005, 0.005, 0.011)
    # over decays, up to the factor 1 / (1 + row sum / limit) ~ 0.99.
    np.testing.assert_allclose(sums[0], [0.01, 0.005, 0.0055], rtol=0.02)


def _three_gene_sites() -> dict:
    """Global sites of a 3-gene chain g0 -> g1 -| g2 with unit decays and shift effects."""
    return {
        "drift_weights": jnp.array([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, -0.4, 0.0]]),
        "log_decay": jnp.zeros(3),
        "log_scaling": jnp.zeros(3),
        "baseline": jnp.array([-2.0, -1.0, -3.0]),
        "log_sigma": jnp.full(3, jnp.log(0.5)),
        "intervention_effect": jnp.array([1.0, -2.0, 0.5]),
    }


def test_cells_follow_the_intervened_stationary_law_of_their_condition():
    genes = 3
    targets = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 1]], jnp.float32)
    condition_index = jnp.array([0, 1, 2, 2])
    fixed = _three_gene_sites()
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
    interventions = condition_interventions(targets, "shift", fixed, drift)
    means, covariances = stationary_moments(drift, 0.5, interventions)
    law = sites["latent"]["fn"]
    # Each cell's latent law is exactly its condition's Gaussian stationary law (the conditions
    # of a shift screen share one covariance, which the law broadcasts over the cells).
    np.testing.assert_allclose(law.loc, means[condition_index], rtol=1e-5, atol=1e-6)
    expected = covariances[condition_index]
    np.testing.assert_allclose(
        np.broadcast_to(law.covariance_matrix, expected.shape), expected, rtol=1e-4, atol=1e-6
    )
    # A shift of gene 0 by its learned effect moves gene 0 by exactly that effect (decay 1).
    assert float(means[1, 0] - means[0, 0]) == pytest.approx(1.0, rel=1e-5)
    assert sites["counts"]["value"].shape == (4, genes)


def test_drift_inverses_by_neumann_series_equal_the_inverses():
    rng = np.random.default_rng(0)
    size = 12
    # Raw weights far from dominance, so the dominance map shrinks rows close to its bound.
    values = {
        "drift_weights": jnp.float32(rng.normal(0.0, 2.0, (size, size))),
        "log_decay": jnp.float32(rng.normal(0.0, 0.5, size)),
        "log_scaling": jnp.float32(rng.normal(0.0, 1.0, size)),
        "baseline": jnp.zeros(size),
    }
    mask = (rng.random((size, size)) < 0.7).astype(np.float32)
    drift = linear_drift_from_sites(values, mask)
    matrix = np.asarray(drift.matrix(), np.float64)
    inverse, shift, resolvent = (np.asarray(v, np.float64) for v in drift_inverses(drift))
    assert shift == pytest.approx(np.linalg.norm(matrix) / np.sqrt(size), rel=1e-5)
    # float32 products on entries of order 1-10 (scalings up to e^2 apart): 1e-4 relative.
    np.testing.assert_allclose(inverse, np.linalg.inv(matrix), rtol=1e-4, atol=1e-5)
    exact = np.linalg.inv(shift * np.eye(size) - matrix)
    np.testing.assert_allclose(resolvent, exact, rtol=1e-4, atol=1e-5)


def test_knockout_laws_by_low_rank_updates_equal_the_per_condition_solves():
    # LCD.fit passes the most targets of a condition as knockout_rank; the laws are the same.
    values = {**_three_gene_sites(), "knockout_depth": jnp.array([-1.0, -2.0, -0.5])}
    targets = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 0, 1]], jnp.float32)
    exact = condition_laws(values, targets, "knockout")
    updated = condition_laws(values, targets, "knockout", knockout_rank=2)
    # float32 solves of order 3 (measured equal to 1e-7).
    np.testing.assert_allclose(updated.means, exact.means, atol=1e-5)
    np.testing.assert_allclose(updated.covariances, exact.covariances, atol=1e-5)

    # And their gradients in the drift's sites (through the Neumann inverses and the Woodbury
    # updates against through the per-condition inverses): float32, of order 1.
    def loss(weights, rank):
        laws = condition_laws(
            {**values, "drift_weights": weights}, targets, "knockout", None, None, rank
        )
        return jnp.sum(jnp.sin(laws.means)) + jnp.sum(jnp.cos(laws.covariances))

    gradients = [jax.grad(loss)(values["drift_weights"], rank) for rank in (None, 2)]
    np.testing.assert_allclose(gradients[1], gradients[0], atol=1e-4)


@pytest.mark.parametrize("kind", ["knockout", "shift"])
def test_the_program_traced_under_jit_takes_the_matrix_product_laws(kind, monkeypatch):
    # Under jit a jnp constant is a tracer: the handlers' "no intervention" used to be one, so
    # the rank of the updates was unknown and every SVI step of a knockout fit solved one law
    # per condition in the model; shift screens fell back to two inverses of order m (loops on
    # jaxlib 0.10's CPU runtime, 87% of a step at m = 1,000). Same values, several times the
    # cost: traced as SVI traces it, the program must take the matrix-product path.
    from causalcell.diffusion import _stationary
    from causalcell.models.lcd import _program

    def slow_path(*args, **kwargs):
        raise AssertionError("the laws were solved one inverse at a time")

    monkeypatch.setattr(_program, "stationary_moments", slow_path)
    monkeypatch.setattr(_stationary, "solve_continuous_lyapunov", slow_path)
    values = _three_gene_sites()
    if kind == "knockout":
        values["knockout_depth"] = values.pop("intervention_effect")
    targets = jnp.array([[0, 0, 0], [1, 0, 0], [0, 1, 1]], jnp.float32)

    def log_density(sites):
        model = seed(condition(lcd_model, sites), 0)
        return (
            trace(model)
            .get_trace(
                condition_index=jnp.array([0, 1, 2, 2]),
                condition_targets=targets,
                size_factors=jnp.ones(4),
                baseline_prior=jnp.zeros(3),
                intervention=kind,
                knockout_rank=2 if kind == "knockout" else None,
            )["latent"]["value"]
            .sum()
        )

    jax.make_jaxpr(log_density)(values)  # raises on the slow path


@pytest.fixture(scope="module")
def fitted():
    from causalcell.datasets import simulate_screen
    from causalcell.models.lcd import LCD

    adata = simulate_screen(
        num_genes=6,
        num_cells=800,
        perturbed_genes=3,
        double_perturbations=2,
        intervention="knockout",
        key=0,
    )
    return LCD.fit(
        adata, intervention="knockout", num_steps=200, batch_size=256, progress_bar=False
    )


def test_fitted_lcd_answers_with_its_own_stationary_law(fitted):
    import jax

    # The control stationary mean is the baseline of each posterior draw, exactly (bias = -A b).
    mean, covariance = fitted.stationary("control", key=jax.random.key(3), num_samples=20)
    baseline = np.asarray(fitted.posterior.sample(jax.random.key(3), 20)["baseline"])
    np.testing.assert_allclose(mean, baseline, rtol=1e-4, atol=1e-4)
    assert covariance.shape == (20, 6, 6)
    # A knockout pins its target at the learned level: the stationary mean of the target is
    # baseline + depth in every draw.
    target = sorted(fitted.trained_targets)[0]
    position = list(fitted.genes).index(target)
    draws = fitted.posterior.sample(jax.random.key(4), 20)
    knocked, _ = fitted.stationary(target, key=jax.random.key(4), num_samples=20)
    expected = np.asarray(draws["baseline"][:, position] + draws["knockout_depth"][:, position])
    np.testing.assert_allclose(knocked[:, position], expected, rtol=1e-4, atol=1e-4)
    generated = fitted.predict([target, "control"], num_cells=50, key=1)
    assert generated.shape == (100, 6) and set(generated.obs["perturbation"]) == {target, "control"}
    # One label is one perturbation (not its characters), and a numpy integer is a seed.
    single = fitted.predict(target, num_cells=50, key=np.int64(1))
    np.testing.assert_array_equal(
        single.X.toarray(), fitted.predict([target], 50, key=1).X.toarray()
    )


def test_predictions_computed_a_chunk_of_perturbations_at_a_time_are_the_same(fitted, monkeypatch):
    from causalcell.models.lcd import _linear

    requests = [*sorted(fitted.trained_targets), "control"]  # 4 perturbations
    whole = fitted.predict(requests, num_cells=40, key=2)
    # Three perturbations per chunk (40 draws, float32 [m, m] laws), so the second chunk is one
    # perturbation padded with two copies of it: same noise, same laws.
    size = len(fitted.coordinates)
    monkeypatch.setattr(_linear, "LAW_CHUNK_BYTES", 3 * 40 * size * size * 4)
    chunked = fitted.predict(requests, num_cells=40, key=2)
    # The same float32 laws per perturbation, computed in another batch (measured equal).
    np.testing.assert_allclose(chunked.obsm["latent"], whole.obsm["latent"], atol=1e-5)
    assert list(chunked.obs["perturbation"]) == list(whole.obs["perturbation"])


def test_unseen_targets_raise_unless_prior_only_predictions_are_allowed(fitted):
    from causalcell.models.lcd import UnseenTargetError

    untouched = next(gene for gene in fitted.genes if gene not in fitted.trained_targets)
    with pytest.raises(UnseenTargetError, match="no training cell carried"):
        fitted.predict([untouched], num_cells=5)
    flagged = fitted.predict([untouched], num_cells=5, allow_prior_only=True)
    assert flagged.obs["prior_only"].all()
    with pytest.raises(UnseenTargetError, match="not modelled"):
        fitted.predict(["NOT_A_GENE"], num_cells=5)


def test_guide_is_the_exact_gaussian_update_of_each_conditions_law():
    import numpyro.distributions as dist

    from causalcell.models.lcd._guide import lcd_local_posterior, message_mean, message_precision

    values = {**_three_gene_sites(), "noise_concentration": jnp.array([5.0, 10.0, 2.0])}
    targets = jnp.array([[0, 0, 0], [1, 0, 0]], jnp.float32)
    condition_counts = jnp.array([[20.0, 50.0, 3.0], [60.0, 40.0, 2.0]])
    data = {
        "condition_targets": targets,
        "condition_index": jnp.array([0, 1]),
        "counts": jnp.array([[15.0, 70.0, 0.0], [55.0, 30.0, 4.0]]),
        "size_factors": jnp.array([200.0, 300.0]),
    }
    loc = jnp.array([[0.1, -0.2, 0.0], [0.0, 0.3, -0.1]])
    law = lcd_local_posterior("shift", condition_counts)(
        values, data, jnp.arange(2), {"latent": (loc, jnp.ones_like(loc))}
    )["latent"]
    drift = drift_from_sites(
        values["drift_weights"], values["log_decay"], values["log_scaling"], values["baseline"]
    )
    interventions = condition_interventions(targets, "shift", values, drift)
    means, covariances = stationary_moments(drift, 0.5, interventions)
    precision_of_counts = message_precision(condition_counts, values["noise_concentration"])
    # By hand, in float64: N(mu_p, Sigma_p) times N(mode + loc, diag(1 / lambda_p)).
    for cell, row in enumerate([0, 1]):
        prior = np.linalg.inv(np.asarray(covariances[row], np.float64))
        weights = np.asarray(precision_of_counts[row], np.float64)
        covariance = np.linalg.inv(prior + np.diag(weights))
        mode = np.asarray(message_mean(data["counts"], data["size_factors"])[cell] + loc[cell])
        mean = covariance @ (prior @ np.asarray(means[row]) + weights * mode)
        # float32 Lyapunov solve and Cholesky-based inverses: ~1e-5 relative.
        np.testing.assert_allclose(law.mean[cell], mean, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(law.covariance_matrix[cell], covariance, rtol=1e-4, atol=1e-5)
    assert isinstance(law, dist.MultivariateNormal)
    # The NB curvature at the mode y / l: y theta / (y + theta), with the half pseudo-count.
    np.testing.assert_allclose(message_precision(jnp.array([9.5]), 10.0), [10.0 * 10.0 / 20.0])


@pytest.mark.parametrize("condition_batch", [0, 2.5, "all"])
def test_a_bad_condition_batch_raises_before_the_data_are_read(condition_batch):
    from causalcell.models.lcd import LCD

    # An AnnData without a perturbation column: registration would raise, so the message
    # proves that the argument is checked first.
    with pytest.raises(ValueError, match="condition_batch must be a positive integer"):
        LCD.fit(anndata.AnnData(np.zeros((3, 2))), condition_batch=condition_batch)
    with pytest.raises(ValueError, match="needs a batch_size"):
        LCD.fit(anndata.AnnData(np.zeros((3, 2))), condition_batch=4, batch_size=None)
