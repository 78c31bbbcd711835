"""The command line and the held-out evaluation it prints."""

import anndata
import numpy as np
import pandas as pd
import pytest

from causalcell import evaluation
from causalcell.cli import main


def test_demo_writes_the_metrics_table(tmp_path, capsys):
    # CI sizes; the cost is mostly compilation, not steps or cells. 100 steps (one jitted chunk
    # of the SVI loop) are enough: the LCD row is only checked to be finite, the metric checks
    # below compare the baselines.
    assert (
        main(
            [
                "demo",
                "--genes",
                "10",
                "--cells",
                "900",
                "--singles",
                "4",
                "--doubles",
                "4",
                "--steps",
                "100",
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "additive" in printed and "energy_distance" in printed
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert list(table.columns) == ["model", "metric", "value"]
    assert set(table["model"]) == {"lcd", "no_change", "additive", "linear"}
    assert set(table["metric"]) == set(evaluation.METRICS)
    assert len(table) == 12 and np.isfinite(table["value"]).all()
    wide = table.pivot(index="model", columns="metric", values="value")
    # On a knockout screen the doubles move expression, so knowing the singles must beat
    # predicting no change on every metric.
    assert wide.loc["additive", "pseudobulk_l2"] < wide.loc["no_change", "pseudobulk_l2"]
    assert (
        wide.loc["additive", "pearson_delta_top20"] > wide.loc["no_change", "pearson_delta_top20"]
    )
    assert anndata.read_h5ad(tmp_path / "screen.h5ad").n_obs == 900
    predicted = anndata.read_h5ad(tmp_path / "predicted.h5ad")
    # 300 generated cells per held-out double (half of the 4 doubles are held out).
    assert predicted.n_obs == 600 and "log1p" in predicted.layers
    assert (tmp_path / "predicted_vs_observed.png").stat().st_size > 0


def test_simulate_writes_h5ad(tmp_path):
    path = tmp_path / "screen.h5ad"
    assert (
        main(
            [
                "simulate",
                "--genes",
                "6",
                "--cells",
                "100",
                "--singles",
                "2",
                "--doubles",
                "1",
                "--output",
                str(path),
            ]
        )
        == 0
    )
    assert anndata.read_h5ad(path).shape == (100, 6)


def test_split_holds_out_only_combinations():
    conditions = ["control", "A", "B", "C", "A+B", "A+C", "B+C"]
    split = evaluation.split_combinations(conditions, fraction=0.5, seed=0)
    assert len(split.held_out) == 2 and all("+" in label for label in split.held_out)
    assert set(split.train) | set(split.held_out) == set(conditions)
    with pytest.raises(ValueError, match="No combination"):
        evaluation.split_combinations(["control", "A"])


def test_evaluation_scores_a_perfect_mean_prediction_exactly():
    rng = np.random.default_rng(0)
    control = rng.normal(0.0, 1.0, (200, 25))
    shift = np.linspace(-2.0, 2.0, 25)
    perturbed = control + shift  # the same cells, rigidly shifted
    expression = np.vstack([control, perturbed])
    labels = ["control"] * 200 + ["A+B"] * 200
    exact = {"oracle": (control.mean(0) + shift)[None, :]}
    table = evaluation.evaluate_predictions(expression, labels, ["A+B"], exact).set_index("metric")[
        "value"
    ]
    # Shifting the control cells by the exact delta reproduces the perturbed cells bit for bit
    # up to float rounding: L2 and energy distance ~ 0, Pearson = 1.
    assert table["pearson_delta_top20"] == pytest.approx(1.0, abs=1e-9)
    assert table["pseudobulk_l2"] == pytest.approx(0.0, abs=1e-9)
    assert table["energy_distance"] == pytest.approx(0.0, abs=1e-3)


def test_generated_predictions_group_generated_cells_by_condition():
    generated = anndata.AnnData(
        X=np.zeros((4, 2), np.float32),
        obs=pd.DataFrame(
            {"perturbation": ["A+B", "C", "A+B", "C"]}, index=[f"g{i}" for i in range(4)]
        ),
    )
    generated.layers["expression"] = np.array([[1.0, 0.0], [5.0, 5.0], [3.0, 2.0], [7.0, 1.0]])
    means, cells = evaluation.generated_predictions(generated, ["C", "A+B"])
    np.testing.assert_array_equal(means, [[6.0, 3.0], [2.0, 1.0]])
    np.testing.assert_array_equal(cells[1], [[1.0, 0.0], [3.0, 2.0]])
    with pytest.raises(ValueError, match="No generated cells of condition 'D'"):
        evaluation.generated_predictions(generated, ["D"])
