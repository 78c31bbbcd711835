"""``causalcell fit | predict | effects | counterfactual | evaluate`` end to end on a small
simulated screen written to disk, and their one-line errors."""

import anndata
import networkx as nx
import numpy as np
import pandas as pd
import pytest

from causalcell.cli import main
from causalcell.datasets import simulate_screen


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 5-gene shift screen (every gene perturbed, 3 doubles), two doubles held out of
    ``train.h5ad``, and ``causalcell fit`` run on it."""
    folder = tmp_path_factory.mktemp("cli")
    adata = simulate_screen(
        num_genes=5,
        num_cells=1800,
        perturbed_genes=5,
        double_perturbations=3,
        intervention="shift",
        key=2,
    )
    held_out = [label for label in adata.obs["perturbation"].cat.categories if "+" in label][:2]
    adata.write_h5ad(folder / "screen.h5ad")
    adata[~adata.obs["perturbation"].isin(held_out)].copy().write_h5ad(folder / "train.h5ad")
    adata[:40].copy().write_h5ad(folder / "cells.h5ad")
    pd.DataFrame({"reagent": ["drugX"], "gene": ["G1"]}).to_csv(folder / "columns.csv")
    pd.DataFrame({"perturbation": ["drugX"], "target": ["G9"]}).to_csv(folder / "unknown.csv")
    arguments = ["fit", str(folder / "train.h5ad"), "--output", str(folder / "model")]
    arguments += ["--steps", "300", "--size-factor-key", "size_factor", "--quiet"]
    assert main(arguments) == 0
    return folder, held_out


def test_fit_writes_a_model_folder_that_the_other_commands_read(fitted, capsys):
    folder, held_out = fitted
    assert sorted(path.name for path in (folder / "model").iterdir()) == [
        "lcd.json",
        "posterior.npz",
        "screen.npz",
    ]
    predicted = folder / "out" / "predicted.h5ad"  # a missing folder is created
    arguments = ["predict", str(folder / "model"), *held_out, "--cells", "200"]
    assert main([*arguments, "--output", str(predicted)]) == 0
    cells = anndata.read_h5ad(predicted)
    assert cells.shape == (400, 5) and set(cells.obs["perturbation"]) == set(held_out)
    capsys.readouterr()
    table = folder / "table.csv"
    arguments = ["evaluate", str(folder / "screen.h5ad"), str(predicted), "--output", str(table)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "2 conditions scored" in printed and "additive" in printed
    wide = pd.read_csv(table).pivot(index="model", columns="metric", values="value")
    assert set(wide.index) == {"model", "no_change", "additive", "linear"}
    # The doubles of a shift screen move expression: a fitted model is closer than no change.
    assert wide.loc["model", "energy_distance"] < wide.loc["no_change", "energy_distance"]
    # The same screen with GEARS labels ("ctrl", "G1+ctrl", "G1+G3"), read with --format.
    screen = anndata.read_h5ad(folder / "screen.h5ad")
    labels = screen.obs.pop("perturbation").astype(str)
    screen.obs["condition"] = [
        "ctrl" if label == "control" else label if "+" in label else f"{label}+ctrl"
        for label in labels
    ]
    screen.write_h5ad(folder / "gears.h5ad")
    gears_table = folder / "gears_table.csv"
    arguments = ["evaluate", str(folder / "gears.h5ad"), str(predicted), "--format", "gears"]
    assert main([*arguments, "--output", str(gears_table)]) == 0
    assert "as gears: 5 gene, 3 combination, 1 control label(s)" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(gears_table), pd.read_csv(table))


def test_effects_writes_a_table_a_graph_and_a_heatmap(fitted):
    folder, _ = fitted
    paths = {name: folder / f"effects.{name}" for name in ("csv", "graphml", "png")}
    arguments = ["effects", str(folder / "model"), "--output", str(paths["csv"])]
    arguments += ["--graph", str(paths["graphml"]), "--plot", str(paths["png"])]
    assert main([*arguments, "--samples", "50"]) == 0
    table = pd.read_csv(paths["csv"])
    assert list(table.columns) == [
        "source",
        "target",
        "mean",
        "sd",
        "lower",
        "upper",
        "probability_positive",
        "identified",
    ]
    assert len(table) == 20 and table["identified"].all()  # every gene perturbed
    graph = nx.read_graphml(paths["graphml"])
    excluding = table[(table["lower"] > 0) | (table["upper"] < 0)]
    assert graph.number_of_edges() == len(excluding) and graph.number_of_nodes() == 5
    assert paths["png"].stat().st_size > 0


def test_counterfactual_writes_both_worlds_of_each_cell(fitted):
    folder, _ = fitted
    output = folder / "worlds.h5ad"
    arguments = ["counterfactual", str(folder / "model"), str(folder / "cells.h5ad"), "G1"]
    assert main([*arguments, "--samples", "10", "--output", str(output)]) == 0
    worlds = anndata.read_h5ad(output)
    assert worlds.n_obs == 80 and set(worlds.obs["world"]) == {"factual", "counterfactual"}
    assert np.isfinite(worlds.layers["shift_mean"]).all()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["fit", "{folder}/nothere.h5ad", "--output", "{folder}/m"], "does not exist"),
        (["fit", "{folder}/train.h5ad", "--output", "{folder}/train.h5ad"], "is a file"),
        (
            ["fit", "{folder}/train.h5ad", "--output", "{folder}/m", "--checkpoint", "{folder}/c"],
            "must end in .npz",
        ),
        (["predict", "{folder}/model", "G1", "--output", "{folder}/p.csv"], "must end in .h5ad"),
        (["predict", "{folder}/nomodel", "G1", "--output", "{folder}/p.h5ad"], "does not exist"),
        (["predict", "{folder}/model", "G9", "--output", "{folder}/p.h5ad"], "G9"),
        (["effects", "{folder}/model", "--output", "{folder}/e.xlsx"], "must end in .csv"),
        (
            ["evaluate", "{folder}/screen.h5ad", "{folder}/train.h5ad"],
            "obs['perturbation'] or layers['expression']",
        ),
        (["simulate", "--output", "{folder}"], "must end in .h5ad"),
        (
            [
                "fit",
                "{folder}/train.h5ad",
                "--output",
                "{folder}/m",
                "--perturbation-targets",
                "{folder}/none.csv",
            ],
            "does not exist",
        ),
        (
            [
                "fit",
                "{folder}/train.h5ad",
                "--output",
                "{folder}/m",
                "--perturbation-targets",
                "{folder}/columns.csv",
            ],
            "needs the columns 'perturbation' and 'target'",
        ),
        (
            [
                "fit",
                "{folder}/train.h5ad",
                "--output",
                "{folder}/m",
                "--perturbation-targets",
                "{folder}/unknown.csv",
            ],
            "names targets that are not genes: ['G9']",
        ),
    ],
)
def test_a_mistake_is_one_line_with_exit_code_2(fitted, capsys, arguments, message):
    folder, _ = fitted
    capsys.readouterr()
    assert main([argument.format(folder=folder) for argument in arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"causalcell {arguments[0]}: error: ") and "\n" not in error
    assert message in error
    assert not (folder / "m").exists()  # refused before any fit
