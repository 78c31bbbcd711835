"""LCD against the baselines on held-out doubles of simulated screens (issue 5).

Usage::

    python benchmarks/lcd_screen.py [--genes 12 50] [--cells 5000] [--singles 8] [--doubles 8]
                                    [--drift linear|neural] [--model linear|neural]
                                    [--intervention knockout] [--programs 8] [--steps 2000]
                                    [--seed 0]

``--drift`` is the drift the screen is simulated with, ``--model`` the drift LCD fits
(``LCD.fit(..., drift=...)``), so that each model can be scored on each kind of data.
``--programs`` sets LCD's latent programs (``LCD.fit(..., programs=...)``; by default screens
of more than 64 genes model the perturbed genes plus 8 programs and decode the other genes).

For each size: simulate a screen, hold out half of the doubles, fit LCD on the rest (true
library sizes from ``obs["size_factor"]``), generate 400 cells per held-out double and print,
per model, the held-out metrics of :mod:`causalcell.evaluation` plus, as in the LCD paper, RBF
MMD averaged over bandwidths ``{0.5, 1, 2} x`` the median heuristic and the RMSE of means, each
on all genes and on the top-20 DE genes; then LCD's fit time and the process's peak memory.
Baselines that predict means only are scored on control cells shifted to their means.

LCD generates as many cells per held-out double as there are control cells, the number of
cells the mean-only baselines' predictions carry, so that every model's energy distance (a
V-statistic, biased up by about ``E|X - X'| / n + E|Y - Y'| / m`` for ``n`` predicted and ``m``
observed cells) carries the same bias. The ``floor`` row is what a model with the true law
would score in expectation: that bias, with both means taken as the observed cells' mean
pairwise distance, and the sampling noise ``sqrt(sum_g var_g (1/n + 1/m))`` of the pseudobulk
L2 (the RMSE of means is that divided by the square root of the number of genes).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pandas as pd

from causalcell import evaluation, metrics
from causalcell.datasets import simulate_screen
from causalcell.models.baselines import shift_control_cells
from causalcell.models.lcd import LCD

MODELS = ("lcd", "additive", "linear", "no_change")


def noise_floor(expression, labels, held_out, num_predicted: int) -> dict[str, float]:
    """Expected energy distance, pseudobulk L2 and RMSE of means of a perfect model that
    predicts ``num_predicted`` cells of each held-out condition, averaged over conditions."""
    scores = {"energy_distance": [], "pseudobulk_l2": [], "rmse_all": []}
    for label in held_out:
        observed = expression[labels == label]
        within = metrics.mean_within_distance(observed, unbiased=True)
        inverse_sizes = 1.0 / num_predicted + 1.0 / observed.shape[0]
        scores["energy_distance"].append(within * inverse_sizes)
        noise = observed.var(axis=0, ddof=1) * inverse_sizes
        scores["pseudobulk_l2"].append(np.sqrt(noise.sum()))
        scores["rmse_all"].append(np.sqrt(noise.mean()))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def paper_metrics(expression, labels, held_out, means, cells) -> pd.DataFrame:
    """MMD (bandwidth-averaged) and RMSE of means, on all genes and on the top-20 DE genes."""
    control = expression[labels == "control"]
    rows = []
    for index, label in enumerate(held_out):
        observed = expression[labels == label]
        top = metrics.top_de_genes(observed, control, k=20)
        for model in MODELS:
            predicted = (
                cells[model][index]
                if model in cells
                else shift_control_cells(control, control.mean(axis=0), means[model][index])
            )
            for genes, suffix in ((slice(None), "all"), (top, "top20")):
                bandwidth = metrics.median_heuristic_bandwidth(
                    predicted[:, genes], observed[:, genes]
                )
                mmd = metrics.mmd_rbf(
                    predicted[:, genes],
                    observed[:, genes],
                    [0.5 * bandwidth, bandwidth, 2 * bandwidth],
                )
                rmse = metrics.rmse(
                    predicted[:, genes].mean(axis=0), observed[:, genes].mean(axis=0)
                )
                rows += [
                    (model, f"mmd_{suffix}", mmd),
                    (model, f"rmse_{suffix}", rmse),
                ]
    table = pd.DataFrame(rows, columns=["model", "metric", "value"])
    return table.groupby(["model", "metric"], as_index=False)["value"].mean()


def run(genes: int, arguments) -> None:
    adata = simulate_screen(
        num_genes=genes,
        num_cells=arguments.cells,
        drift=arguments.drift,
        perturbed_genes=arguments.singles,
        double_perturbations=arguments.doubles,
        intervention=arguments.intervention,
        key=arguments.seed,
    )
    conditions = list(adata.obs["perturbation"].cat.categories)
    split = evaluation.split_combinations(conditions, seed=arguments.seed)
    train = adata[adata.obs["perturbation"].isin(split.train)].copy()
    started = time.perf_counter()
    model = LCD.fit(
        train,
        intervention=arguments.intervention,
        size_factor_key="size_factor",
        drift=arguments.model,
        programs=arguments.programs,
        num_steps=arguments.steps,
        key=arguments.seed,
        progress_bar=False,
    )
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    num_predicted = int((train.obs["perturbation"] == "control").sum())
    predicted = model.predict(list(split.held_out), num_cells=num_predicted, key=arguments.seed + 1)
    predict_seconds = time.perf_counter() - started
    expression, labels = evaluation.observed_expression(adata)
    means = evaluation.baseline_predictions(expression, labels, split)
    means["lcd"], lcd_cells = evaluation.generated_predictions(predicted, split.held_out)
    cells = {"lcd": lcd_cells}
    table = pd.concat(
        [
            evaluation.evaluate_predictions(expression, labels, split.held_out, means, cells),
            paper_metrics(expression, labels, split.held_out, means, cells),
        ]
    )
    wide = table.pivot(index="model", columns="metric", values="value").loc[list(MODELS)]
    labels = np.asarray(labels)
    wide.loc["floor"] = pd.Series(noise_floor(expression, labels, split.held_out, num_predicted))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n# {arguments.drift} drift data, {arguments.model} drift LCD, "
        f"{arguments.intervention}, {genes} genes, {arguments.cells} cells, held out "
        f"{', '.join(split.held_out)}; LCD on {len(model.modelled_genes)} modelled genes + "
        f"{model.space.programs} programs, fit {arguments.steps} steps in {fit_seconds:.0f} s, "
        f"predict in {predict_seconds:.0f} s; peak memory {peak:.0f} MB"
    )
    print(wide.to_string(float_format="{:.3f}".format))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[12])
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--singles", type=int, default=8)
    parser.add_argument("--doubles", type=int, default=8)
    parser.add_argument(
        "--drift", choices=("linear", "neural"), default="linear", help="drift of the data"
    )
    parser.add_argument(
        "--model", choices=("linear", "neural"), default="linear", help="drift LCD fits"
    )
    parser.add_argument(
        "--intervention", choices=("knockout", "knockdown", "shift"), default="knockout"
    )
    parser.add_argument(
        "--programs",
        type=int,
        default=None,
        help="latent programs of LCD's reduced gene space (default: LCD.fit's)",
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    for genes in arguments.genes:
        run(genes, arguments)


if __name__ == "__main__":
    main()
