"""LCD against the truth of simulated screens (issue 5): drift recovery, held-out singles at the
two-sample noise floor, and held-out doubles against the additive baseline.

Each fit takes about a minute on two CPU cores, so each screen is fitted once per module.
Simulated screens carry their true library sizes (``obs["size_factor"]``); LCD uses them, as
with few genes the total count of a cell is confounded with its expression.
"""

import numpy as np
import pytest

from causalcell import evaluation, metrics
from causalcell.datasets import ground_truth, simulate_screen
from causalcell.models.lcd import LCD

GENES = 8


def _fit(train, intervention, **options):
    return LCD.fit(
        train,
        intervention=intervention,
        size_factor_key="size_factor",
        num_steps=1500,
        batch_size=512,
        key=0,
        progress_bar=False,
        **options,
    )


def _held_out_table(adata, model, held_out, split):
    expression, labels = evaluation.observed_expression(adata)
    generated = model.predict(list(held_out), num_cells=400, key=1)
    means = evaluation.baseline_predictions(expression, labels, split)
    means["lcd"], cells = evaluation.generated_predictions(generated, held_out)
    table = evaluation.evaluate_predictions(expression, labels, held_out, means, {"lcd": cells})
    return table.pivot(index="model", columns="metric", values="value")


def _drift_gaps(exact, other):
    """``|mean difference| / sd of the difference`` of two fits' drift posteriors, entrywise
    (200 draws each)."""
    draws = [model.drift(num_samples=200) for model in (exact, other)]
    gap = np.abs(draws[0].mean(0) - draws[1].mean(0))
    spread = np.sqrt(draws[0].var(0) + draws[1].var(0))
    return gap, spread


def _held_out_ed(adata, models: dict, split) -> dict:
    """LCD's energy distance on the held-out doubles, per model."""
    return {
        name: _held_out_table(adata, model, split.held_out, split).loc["lcd", "energy_distance"]
        for name, model in models.items()
    }


@pytest.fixture(scope="module")
def shift_screen():
    """Every gene shifted alone, plus doubles; half of each single's cells and half of the
    doubles are held out."""
    adata = simulate_screen(
        num_genes=GENES,
        num_cells=4000,
        perturbed_genes=GENES,
        double_perturbations=6,
        intervention="shift",
        key=1,
    )
    conditions = list(adata.obs["perturbation"].cat.categories)
    split = evaluation.split_combinations(conditions, seed=1)
    rng = np.random.default_rng(0)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    is_single = np.array(["+" not in label and label != "control" for label in labels])
    test_cells = is_single & (rng.random(adata.n_obs) < 0.5)
    train = adata[np.isin(labels, split.train) & ~test_cells].copy()
    return adata, split, test_cells, _fit(train, "shift")


def test_posterior_mean_drift_recovers_the_true_drift(shift_screen):
    adata, _, _, model = shift_screen
    truth = np.asarray(ground_truth(adata).drift.matrix())
    fitted = model.drift(num_samples=100).mean(axis=0)
    off = ~np.eye(GENES, dtype=bool)
    correlation = np.corrcoef(fitted[off], truth[off])[0, 1]
    # Measured 0.96 at 12 genes x 5,000 cells (see the issue note); 8 genes x ~2,500 training
    # cells and 1,500 steps give about 0.9 here. 0.8 leaves room for seeds, far above the ~0.5
    # that total-count size factors or a plain amortized encoder reach.
    assert correlation > 0.8, correlation


def test_held_out_cells_of_singles_match_at_the_two_sample_noise_floor(shift_screen):
    adata, _, test_cells, model = shift_screen
    expression, labels = evaluation.observed_expression(adata)
    singles = sorted({label for label in labels[test_cells]})[:4]
    _, predicted_cells = evaluation.generated_predictions(
        model.predict(singles, num_cells=300, key=2), singles
    )
    rng = np.random.default_rng(1)
    ratios = []
    for label, predicted in zip(singles, predicted_cells, strict=True):
        observed = expression[test_cells & (labels == label)]
        order = rng.permutation(len(observed))
        first, second = observed[order[: len(order) // 2]], observed[order[len(order) // 2 :]]
        floor = metrics.energy_distance(first, second)
        ratios.append(metrics.energy_distance(predicted, first) / max(floor, 1e-3))
    # The floor is the energy distance between two halves of the held-out cells (about 100
    # cells each), whose own sampling noise is of the order of the floor itself. A model whose
    # law is right stays within a few floors; a mean off by 0.2 in one gene is ~20 floors.
    assert np.median(ratios) < 4.0, ratios


def test_additive_doubles_are_not_worse_than_the_additive_baseline(shift_screen):
    adata, split, _, model = shift_screen
    wide = _held_out_table(adata, model, split.held_out, split)
    # Shifts of a linear drift compose additively in log-expression, so the additive baseline
    # is nearly exact here: LCD must match it within the noise of ~150-cell pseudobulks.
    floor = 0.1
    assert wide.loc["lcd", "energy_distance"] < wide.loc["additive", "energy_distance"] + floor
    assert wide.loc["lcd", "pseudobulk_l2"] < wide.loc["additive", "pseudobulk_l2"] + 0.3


@pytest.fixture(scope="module")
def knockout_screen():
    """A knockout screen whose doubles are not additive, half of the doubles held out."""
    adata = simulate_screen(
        num_genes=GENES,
        num_cells=4000,
        perturbed_genes=6,
        double_perturbations=6,
        intervention="knockout",
        key=2,
    )
    conditions = list(adata.obs["perturbation"].cat.categories)
    split = evaluation.split_combinations(conditions, seed=2)
    train = adata[adata.obs["perturbation"].isin(split.train)].copy()
    return adata, split, train, _fit(train, "knockout")


def test_non_additive_knockout_doubles_beat_the_additive_baseline(knockout_screen):
    adata, split, _, model = knockout_screen
    wide = _held_out_table(adata, model, split.held_out, split)
    # Knockouts are hard interventions: a double whose members regulate each other is not the
    # sum of its singles, and LCD composes the interventions in the drift instead. At 12 genes
    # the benchmark measures ED 0.03 vs 0.88 and L2 0.26 vs 1.14; the test asks for a clear win.
    assert wide.loc["lcd", "energy_distance"] < 0.5 * wide.loc["additive", "energy_distance"]
    assert wide.loc["lcd", "pseudobulk_l2"] < wide.loc["additive", "pseudobulk_l2"]


def test_condition_batches_give_the_exact_paths_answers(knockout_screen):
    """The scalable path (a few conditions' laws per step) against the exact one (every
    condition's law every step) on the same screen, seed and settings."""
    adata, split, train, exact = knockout_screen
    batched = _fit(train, "knockout", condition_batch=3)
    assert batched.posterior.config["strata_per_batch"] == 3
    gap, spread = _drift_gaps(exact, batched)
    # Two fits of one posterior differ by their optimisation noise, a fraction of the
    # posterior sd; 3 sds of the difference bound it for every entry of the 8 x 8 drift
    # (measured: 1.9 at most).
    assert np.all(gap <= 3.0 * spread + 1e-3), (gap / spread).max()
    # Held-out doubles: the batched fit keeps the exact fit's clear win over additive, within
    # the noise of ~150-cell pseudobulks (measured: 0.07 against 0.05; additive 0.59).
    ed = _held_out_ed(adata, {"exact": exact, "batched": batched}, split)
    assert ed["batched"] < ed["exact"] + 0.1, ed


def test_pooled_message_precisions_give_the_exact_paths_answers(shift_screen, monkeypatch):
    """Large shift screens take every cell's message precision at the pooled mean counts, so
    that all conditions share one posterior covariance (``_fit.SHARED_MESSAGES_ABOVE``): the
    same screen, seed and settings fitted that way against the per-condition guide."""
    from causalcell.models.lcd import _fit as fit_module
    from causalcell.models.lcd import _guide

    adata, split, test_cells, exact = shift_screen
    monkeypatch.setattr(fit_module, "SHARED_MESSAGES_ABOVE", 0)
    factorised = []  # how many posterior covariances each traced guide call factorises

    def covariance_factor(precision):
        factorised.append(precision.shape[0])
        return original(precision)

    original = _guide.covariance_factor
    monkeypatch.setattr(_guide, "covariance_factor", covariance_factor)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    pooled = _fit(adata[np.isin(labels, split.train) & ~test_cells].copy(), "shift")
    assert factorised and set(factorised) == {1}, factorised  # one for every condition
    gap, spread = _drift_gaps(exact, pooled)
    # Another member of the variational family and its own optimisation noise: 3 sds of the
    # difference, as for condition batches above (measured: 0.14 at most).
    assert np.all(gap <= 3.0 * spread + 1e-3), (gap / spread).max()
    ed = _held_out_ed(adata, {"exact": exact, "pooled": pooled}, split)
    # Held-out doubles: as good as the per-condition guide's (measured: 0.0187 against 0.0183);
    # 0.03 (more than the measured value itself) fails a clearly worse guide and leaves room
    # for the two fits' optimisation noise, which this test does not measure separately.
    assert ed["pooled"] < ed["exact"] + 0.03, ed
    # Counterfactuals read the shared posterior factor [m, m] of the local posterior.
    cells = adata[labels == "control"][:20].copy()
    worlds = pooled.counterfactual(cells, split.held_out[0], num_samples=2, key=3)
    assert np.isfinite(worlds.layers["shift_mean"]).all()
