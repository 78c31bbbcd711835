"""Perturbations named apart from their targets (``LCD.fit(perturbation_targets=...)``): one
parameter per (perturbation, target) pair around its target's, on a screen where two reagents
act on each gene in opposite directions."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

from causalcell import evaluation
from causalcell.data import register
from causalcell.datasets import simulate_screen
from causalcell.handlers import learned
from causalcell.models.lcd import LCD, UnseenTargetError
from causalcell.models.lcd._pairs import pair_design

#: One drift and one set of intervention sizes ``u_j`` (same key); a negative strength turns
#: each shift into its opposite, so ``act_Gj`` raises gene ``j`` by ``1.5 u_j`` nats where
#: ``inh_Gj`` lowers it by as much.
STRENGTH = 1.5


def _screen_of(prefix: str, *, key: int, **options):
    """A 6-gene screen (4 genes alone, 2 doubles) whose labels name ``prefix + gene``
    perturbations: the same ``key`` gives the same drift whatever the intervention."""
    adata = simulate_screen(
        num_genes=6, num_cells=3000, perturbed_genes=4, double_perturbations=2, key=key, **options
    )
    labels = adata.obs["perturbation"].astype(str)
    adata.obs["perturbation"] = [
        label if label == "control" else "+".join(prefix + gene for gene in label.split("+"))
        for label in labels
    ]
    adata.obs_names = [prefix + name for name in adata.obs_names]
    return adata


def _reagent_screen(sign: float, prefix: str):
    return _screen_of(prefix, key=3, intervention="shift", strength=-sign * STRENGTH)


@pytest.fixture(scope="module")
def screen():
    """Activators and inhibitors of the same four genes, each alone and in two doubles; one
    double of each direction held out. ``act2_G0`` is in the table but in no cell."""
    adata = anndata.concat([_reagent_screen(1.0, "act_"), _reagent_screen(-1.0, "inh_")])
    table = {prefix + gene: gene for gene in adata.var_names for prefix in ("act_", "inh_")}
    table["act2_G0"] = "G0"
    held = ["act_G0+act_G3", "inh_G2+inh_G3"]
    train = adata[~adata.obs["perturbation"].isin(held)].copy()
    return adata, train, table, held


@pytest.fixture(scope="module")
def model(screen):
    _, train, table, _ = screen
    return LCD.fit(
        train,
        perturbation_targets=table,
        size_factor_key="size_factor",
        num_steps=1500,
        progress_bar=False,
    )


def _pair_values(model, draws):
    """Each pair's shift ``mu_j + tau delta_e`` per draw ``[S, E]`` and the design."""
    design = pair_design(model.registry, model.coordinates, model.intervention)
    target = np.asarray(draws["intervention_effect"])[:, design.coordinate]
    spread = np.asarray(draws["perturbation_spread"])[:, None]
    return target + spread * np.asarray(draws["perturbation_deviations"]), design


def test_each_reagent_learns_its_own_direction(model):
    values, design = _pair_values(model, model.posterior.sample(0, 200))
    mean = dict(
        zip(
            (model.registry.perturbations[index] for index in design.perturbation),
            values.mean(axis=0),
            strict=True,
        )
    )
    for gene in ("G0", "G2", "G3", "G4"):
        up, down = mean[f"act_{gene}"], mean[f"inh_{gene}"]
        # True sizes are 1.5 u with u in [0.5, 1.5]: at least 0.75 nats either way.
        assert up > 0.5 and down < -0.5, (gene, up, down)
        # Same u for both directions; 0.3 nats is about five posterior sds of each (0.05-0.07)
        # and leaves room for the two directions' different cells.
        assert abs(up + down) < 0.3, (gene, up, down)


def test_held_out_doubles_of_reagents_beat_a_gene_level_model(screen, model):
    """The gene-level model merges activators and inhibitors of a gene into one intervention
    (the issue's failure: PMA predicted as G06976's inhibition)."""
    adata, train, table, held = screen
    expression, labels = evaluation.observed_expression(
        adata, register(adata, perturbation_targets=table)
    )
    predicted = model.predict(held, num_cells=300, key=1)
    means, cells = evaluation.generated_predictions(predicted, held)
    genes_only = train.copy()
    genes_only.obs["perturbation"] = [
        label.replace("act_", "").replace("inh_", "")
        for label in genes_only.obs["perturbation"].astype(str)
    ]
    merged = LCD.fit(genes_only, size_factor_key="size_factor", num_steps=1000, progress_bar=False)
    as_genes = [label.replace("act_", "").replace("inh_", "") for label in held]
    merged_predicted = merged.predict(as_genes, num_cells=300, key=1)
    merged_means, merged_cells = evaluation.generated_predictions(merged_predicted, as_genes)
    table_ = evaluation.evaluate_predictions(
        expression,
        labels,
        held,
        {"reagents": means, "genes": merged_means},
        {"reagents": cells, "genes": merged_cells},
    )
    energy = table_[table_["metric"] == "energy_distance"].set_index("model")["value"]
    # Measured 0.010 against 1.74: the pair model is near the two-sample floor of 300 against
    # 400 cells, the merged one predicts the average of two opposite shifts.
    assert energy["reagents"] < 0.05
    assert energy["genes"] > 10 * energy["reagents"]


def test_an_unseen_reagent_of_a_trained_gene_is_flagged_and_wider(model):
    predicted = model.predict(["act2_G0", "act_G0"], num_cells=400, key=2)
    flags = predicted.obs.groupby("perturbation", observed=True)["prior_only"].first()
    assert bool(flags["act2_G0"]) and not bool(flags["act_G0"])
    unseen, _ = model.stationary("act2_G0", num_samples=300, key=3)
    trained, _ = model.stationary("act_G0", num_samples=300, key=3)
    column = model.coordinates.index("G0")
    # The new reagent draws its deviation from the prior: its own-level spread includes tau.
    assert unseen[:, column].std() > 3 * trained[:, column].std()


def test_counterfactuals_and_do_of_reagents(screen, model):
    _, train, _, _ = screen
    cells = train[train.obs["perturbation"] == "control"][:20].copy()
    worlds = model.counterfactual(cells, "inh_G2", num_samples=20, key=0)
    counterfactual = worlds.obs[worlds.obs["world"] == "counterfactual"]
    assert set(counterfactual["perturbation"].astype(str)) == {"inh_G2"}
    column = model.coordinates.index("G2")
    latent = worlds.obsm["latent"]
    factual = latent[worlds.obs["world"].to_numpy() == "factual"]
    moved = latent[worlds.obs["world"].to_numpy() == "counterfactual"]
    assert np.mean(moved[:, column] - factual[:, column]) < -0.5  # the inhibitor lowers G2
    with pytest.raises(ValueError, match="do\\(\\) acts on genes"):
        model.actions("inh_G2")
    assert model.actions("G2") == {"genes": {"G2": learned()}}  # the gene's own parameter


def test_another_reagent_of_the_same_gene_is_another_world(screen, model):
    """Activator cells, had they been given the inhibitor instead: the same target gene, a
    different intervention, so the cells must move (they were returned unchanged when the
    worlds were compared by their targets alone)."""
    _, train, _, _ = screen
    cells = train[train.obs["perturbation"] == "act_G0"][:20].copy()
    worlds = model.counterfactual(cells, "inh_G0", num_samples=20, key=0, compose=False)
    column = model.coordinates.index("G0")
    world = worlds.obs["world"].to_numpy()
    factual = worlds.obsm["latent"][world == "factual"][:, column]
    moved = worlds.obsm["latent"][world == "counterfactual"][:, column]
    # act_G0 raises G0 by about 1.2 nats and inh_G0 lowers it by as much (the first test).
    assert np.mean(moved - factual) < -1.5
    counts = worlds.X.toarray() if hasattr(worlds.X, "toarray") else np.asarray(worlds.X)
    assert not np.array_equal(counts[world == "factual"], counts[world == "counterfactual"])


def test_saved_reagent_model_predicts_the_same(model, tmp_path):
    model.save(tmp_path / "model")
    loaded = LCD.load(tmp_path / "model")
    assert loaded.registry == model.registry
    before = model.predict(["act_G2", "act2_G0"], num_cells=50, key=4)
    after = loaded.predict(["act_G2", "act2_G0"], num_cells=50, key=4)
    np.testing.assert_array_equal(before.X.toarray(), after.X.toarray())


def test_bad_perturbation_tables_are_named(screen):
    adata = screen[0]
    with pytest.raises(ValueError, match="not genes: \\['GATA1'\\]"):
        register(adata, perturbation_targets={"act_G0": "GATA1"})
    with pytest.raises(ValueError, match="'G1' is a gene"):
        register(adata, perturbation_targets={"G1": "G2"})
    with pytest.raises(ValueError, match="perturbation_targets="):
        register(adata)  # act_G0 ... are neither genes nor in a table
    with pytest.raises(ValueError, match=r"need drift='linear'"):
        LCD.fit(adata, drift="neural", perturbation_targets={"act_G0": "G0"})


def test_refine_refuses_a_screen_of_pairs(model):
    with pytest.raises(ValueError, match="per \\(perturbation, target\\) pair"):
        model.refine(num_warmup=1, num_samples=1)


def test_unknown_perturbations_are_named(model):
    with pytest.raises(UnseenTargetError, match="perturbations of perturbation_targets"):
        model.predict("act_G9", num_cells=10)


def _kind_screen(kind: str, prefix: str):
    return _screen_of(prefix, key=5, intervention=kind)


def test_perturbations_of_two_kinds_keep_their_own():
    """CRISPRi guides and knockouts of the same genes (one drift): with
    ``perturbation_kinds`` the knockouts are knockouts, and their held-out double (not
    additive) is predicted far better than by a model that takes every guide as a knockdown."""
    adata = anndata.concat([_kind_screen("knockdown", "kd_"), _kind_screen("knockout", "ko_")])
    table = {prefix + gene: gene for gene in adata.var_names for prefix in ("kd_", "ko_")}
    kinds = {name: "knockout" for name in table if name.startswith("ko_")}
    doubles = sorted({label for label in adata.obs["perturbation"] if "+" in label})
    held = [label for label in doubles if label.startswith("ko_")][:1]
    train = adata[~adata.obs["perturbation"].isin(held)].copy()
    settings = dict(size_factor_key="size_factor", num_steps=1500, progress_bar=False)
    mixed = LCD.fit(
        train,
        intervention="knockdown",
        perturbation_targets=table,
        perturbation_kinds=kinds,
        **settings,
    )
    assert mixed.intervention == "knockdown|knockout"
    assert {"knockdown_strength", "knockout_depth"} <= set(mixed.posterior.sample(0, 2))
    single = LCD.fit(train, intervention="knockdown", perturbation_targets=table, **settings)
    expression, labels = evaluation.observed_expression(
        adata, register(adata, perturbation_targets=table)
    )
    models = {"mixed": mixed, "knockdown only": single}
    means, cells = {}, {}
    for name, model in models.items():
        predicted = model.predict(held, num_cells=300, key=1)
        means[name], cells[name] = evaluation.generated_predictions(predicted, held)
    table_ = evaluation.evaluate_predictions(expression, labels, held, means, cells)
    energy = table_[table_["metric"] == "energy_distance"].set_index("model")["value"]
    # Measured 0.010 against 1.89: a knockdown cannot pin a gene, so the knockdown-only model
    # misses the double's non-additive law; half is far inside that gap.
    assert energy["mixed"] < 0.5 * energy["knockdown only"], energy
