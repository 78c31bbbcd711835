"""LCD against the baselines on held-out double knockouts of a simulated screen (preliminary).

Usage::

    python benchmarks/lcd_screen.py [--genes 12] [--cells 5000] [--singles 8] [--doubles 8]
                                    [--steps 2000] [--seed 0]

Simulates a linear-drift knockout screen, holds out half of the doubles, fits LCD on the rest,
generates cells for the held-out doubles and prints the held-out table
(:mod:`causalcell.evaluation`) with the fit time. The full benchmark of issue 5 (neural drift,
MMD, RMSE, sizes 50/200/1000) is still to come.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from causalcell import evaluation
from causalcell.datasets import simulate_screen
from causalcell.models.lcd import LCD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=12)
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--singles", type=int, default=8)
    parser.add_argument("--doubles", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    adata = simulate_screen(
        num_genes=arguments.genes,
        num_cells=arguments.cells,
        perturbed_genes=arguments.singles,
        double_perturbations=arguments.doubles,
        intervention="knockout",
        key=arguments.seed,
    )
    conditions = list(adata.obs["perturbation"].cat.categories)
    split = evaluation.split_combinations(conditions, seed=arguments.seed)
    train = adata[adata.obs["perturbation"].isin(split.train)].copy()
    started = time.perf_counter()
    model = LCD.fit(train, intervention="knockout", num_steps=arguments.steps, key=arguments.seed)
    fit_seconds = time.perf_counter() - started
    predicted = model.predict(list(split.held_out), num_cells=400, key=arguments.seed + 1)
    expression, labels = evaluation.observed_expression(adata)
    generated = predicted.obs["perturbation"].to_numpy()
    cells = [predicted.layers["log1p"][generated == label] for label in split.held_out]
    means = evaluation.baseline_predictions(expression, labels, split)
    means["lcd"] = np.stack([block.mean(axis=0) for block in cells])
    table = evaluation.evaluate_predictions(
        expression, labels, split.held_out, means, {"lcd": cells}
    )
    wide = table.pivot(index="model", columns="metric", values="value")
    print(
        f"# {arguments.genes} genes, {arguments.cells} cells, held out {', '.join(split.held_out)};"
        f" LCD fit {arguments.steps} steps in {fit_seconds:.0f} s"
    )
    print(
        wide.loc[["lcd", "additive", "linear", "no_change"]].to_string(float_format="{:.3f}".format)
    )


if __name__ == "__main__":
    main()
