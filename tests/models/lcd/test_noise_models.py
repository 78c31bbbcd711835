"""LCD through other noise models than the negative binomial: Poisson counts and continuous
data on a log scale (Gaussian), fitted, predicted, saved and asked counterfactuals."""

import jax
import numpy as np
import pytest

from causalcell import evaluation
from causalcell.data import register
from causalcell.datasets import simulate_screen
from causalcell.models.lcd import LCD


def _held_out_fit(noise: str, **fit_options):
    """A 6-gene shift screen (every gene perturbed, 3 doubles) observed through ``noise``,
    one double held out of an 800-step fit with the same noise model."""
    adata = simulate_screen(
        num_genes=6,
        num_cells=2400,
        perturbed_genes=6,
        double_perturbations=3,
        intervention="shift",
        noise=noise,
        key=1,
    )
    split = evaluation.split_combinations(list(adata.obs["perturbation"].cat.categories), seed=0)
    train = adata[adata.obs["perturbation"].isin(split.train)].copy()
    model = LCD.fit(
        train,
        noise=noise,
        intervention="shift",
        num_steps=800,
        batch_size=256,
        progress_bar=False,
        **fit_options,
    )
    return adata, split, model


def _scores(adata, split, model, registry):
    expression, labels = evaluation.observed_expression(adata, registry)
    means = evaluation.baseline_predictions(expression, labels, split)
    predicted = model.predict(list(split.held_out), num_cells=300, key=1)
    lcd_means, lcd_cells = evaluation.generated_predictions(predicted, split.held_out)
    table = evaluation.evaluate_predictions(
        expression, labels, split.held_out, {"lcd": lcd_means, **means}, {"lcd": lcd_cells}
    )
    return table.pivot(index="model", columns="metric", values="value"), predicted


@pytest.fixture(scope="module")
def gaussian():
    return _held_out_fit("gaussian")


@pytest.fixture(scope="module")
def poisson():
    return _held_out_fit("poisson", size_factor_key="size_factor")


def test_gaussian_data_are_fitted_on_their_own_scale(gaussian):
    adata, split, model = gaussian
    draws = model.posterior.sample(jax.random.key(0), 200)
    assert "noise_scale" in draws and "noise_concentration" not in draws
    assert (model.registry.count_data, model.settings["noise"]) == (False, "gaussian")
    np.testing.assert_array_equal(model.library_sizes, 1.0)  # continuous data: no library size
    # Per-gene noise scales (truth 0.27-0.52) within 0.2: a gene's variance splits into latent
    # and noise only through its covariation with the other genes (the noise is independent
    # across genes), so a weakly connected gene's split is loose (seed 1: errors 0.02-0.16).
    truth = adata.uns["simulation"]["noise_parameters"]["scale"]
    fitted = np.asarray(draws["noise_scale"]).mean(axis=0)
    np.testing.assert_array_less(np.abs(fitted - truth), 0.2)
    wide, predicted = _scores(adata, split, model, register(adata, count_data=False))
    assert not predicted.layers["expression"].min() >= 0  # values, not counts
    # The held-out double is predicted as well as the additive baseline, which is exact in
    # expectation on a shift screen observed on the log scale, and far better than no change.
    assert wide.loc["lcd", "energy_distance"] < 1.5 * wide.loc["additive", "energy_distance"]
    assert wide.loc["lcd", "energy_distance"] < 0.1 * wide.loc["no_change", "energy_distance"]


def test_gaussian_counterfactuals_keep_each_cells_noise(gaussian, tmp_path):
    adata, _, model = gaussian
    cells = adata[adata.obs["perturbation"] == "control"][:20].copy()
    target = sorted(model.trained_targets)[0]
    worlds = model.counterfactual(cells, target, num_samples=5, key=2)
    factual = worlds[worlds.obs["world"] == "factual"]
    counterfactual = worlds[worlds.obs["world"] == "counterfactual"]
    # Quantile coupling of a Gaussian keeps the standardised noise and the scale is the same
    # in both worlds, so y' - y is the latent's move x' - x (draw 0 in X and obsm["latent"];
    # every gene is a coordinate), to float32 rounding of values near 1.
    shift = np.asarray(counterfactual.X) - np.asarray(factual.X)
    moved = counterfactual.obsm["latent"] - factual.obsm["latent"]
    np.testing.assert_allclose(shift, moved, atol=1e-4)
    assert np.abs(shift).max() > 0.1
    model.save(tmp_path / "gaussian")
    loaded = LCD.load(tmp_path / "gaussian")
    assert loaded.settings["noise"] == "gaussian" and not loaded.registry.count_data
    before = model.predict([target], num_cells=10, key=3)
    after = loaded.predict([target], num_cells=10, key=3)
    np.testing.assert_array_equal(before.X, after.X)


def test_poisson_counts_recover_the_latent_spread(poisson):
    adata, split, model = poisson
    draws = model.posterior.sample(jax.random.key(0), 200)
    assert not any(name.startswith("noise_") for name in draws)  # Poisson has no parameter
    # Stationary sd of every gene sigma / sqrt(2 d): the truth is 0.5 / sqrt(2 d_true). At
    # counts in the hundreds the counts pin the latents down (a guide that overshot its
    # scoring steps left the variance at a fifth of the truth, sds at 0.45); within 50%
    # (seed 1: 4-37%), the sd of the diagonal of a 6-gene stationary covariance whose decays
    # and diffusion scales trade off.
    sigma = np.exp(np.asarray(draws["log_sigma"])).mean(axis=0)
    decay = np.exp(np.asarray(draws["log_decay"])).mean(axis=0)
    true_decay = np.exp(np.asarray(adata.uns["simulation"]["drift"]["log_decay"]))
    ratio = (sigma / np.sqrt(2 * decay)) / (0.5 / np.sqrt(2 * true_decay))
    np.testing.assert_array_less(np.abs(np.log(ratio)), np.log(1.5))
    # Scored as generated cells are normalised: by each cell's total count (registered with
    # the true library sizes instead, 6 genes' totals differ from them and every score moves).
    wide, _ = _scores(adata, split, model, register(adata))
    # On a shift screen observed on the log scale the doubles are additive in expectation:
    # LCD within 3 times the additive baseline's distance, far below no change.
    assert wide.loc["lcd", "energy_distance"] < 3.0 * wide.loc["additive", "energy_distance"]
    assert wide.loc["lcd", "energy_distance"] < 0.1 * wide.loc["no_change", "energy_distance"]


def test_noise_models_are_checked_before_any_work():
    adata = simulate_screen(
        num_genes=5, num_cells=300, perturbed_genes=2, double_perturbations=0, key=0
    )
    with pytest.raises(ValueError, match="noise must be one of"):
        LCD.fit(adata, noise="student")
    with pytest.raises(ValueError, match="drift='neural' takes noise in"):
        LCD.fit(adata, noise="poisson", drift="neural")
    with pytest.raises(ValueError, match="models every gene as a coordinate"):
        LCD.fit(adata, noise="gaussian", modelled_genes=[], programs=1, progress_bar=False)
