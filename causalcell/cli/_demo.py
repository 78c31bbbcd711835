"""``causalcell demo`` (simulate, hold out doubles, fit, score against the baselines) and
``causalcell simulate``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from causalcell import evaluation
from causalcell.cli._commands import UsageError, output_file
from causalcell.datasets import simulate_screen
from causalcell.models.lcd import LCD

__all__ = ["add_demo_commands"]


def _demo(arguments) -> int:
    started = time.perf_counter()
    if arguments.output is not None and Path(arguments.output).is_file():
        raise UsageError(f"{arguments.output} is a file; --output is a folder to write into.")
    print(
        f"Simulating a knockout screen: {arguments.genes} genes, {arguments.cells} cells, "
        f"{arguments.singles} single and {arguments.doubles} double perturbations "
        f"(seed {arguments.seed})..."
    )
    adata = simulate_screen(
        num_genes=arguments.genes,
        num_cells=arguments.cells,
        perturbed_genes=arguments.singles,
        double_perturbations=arguments.doubles,
        intervention="knockout",
        key=arguments.seed,
    )
    expression, labels = evaluation.observed_expression(adata)
    conditions = list(adata.obs["perturbation"].cat.categories)
    split = evaluation.split_combinations(conditions, seed=arguments.seed)
    print(
        f"Held out {len(split.held_out)} of {arguments.doubles} double perturbations: "
        f"{', '.join(split.held_out)}."
    )
    train = adata[adata.obs["perturbation"].isin(split.train)].copy()
    print(f"Fitting LCD on {train.n_obs} cells ({arguments.steps} SVI steps)...")
    fit_started = time.perf_counter()
    # Simulated data carry their true library sizes; with few genes, total counts would be
    # confounded with expression (one perturbed gene moves every cell's total).
    model = LCD.fit(
        train,
        intervention="knockout",
        size_factor_key="size_factor",
        num_steps=arguments.steps,
        key=arguments.seed,
    )
    print(f"Fitted in {time.perf_counter() - fit_started:.1f} s.")
    generated = model.predict(list(split.held_out), num_cells=300, key=arguments.seed + 1)
    lcd_means, lcd_cells = evaluation.generated_predictions(generated, split.held_out)
    cells = {"lcd": lcd_cells}
    predictions = {"lcd": lcd_means, **evaluation.baseline_predictions(expression, labels, split)}
    table = evaluation.evaluate_predictions(expression, labels, split.held_out, predictions, cells)
    wide = table.pivot(index="model", columns="metric", values="value")
    wide = wide.loc[list(predictions), list(evaluation.METRICS)]
    print()
    print("Held-out doubles (mean over conditions; Pearson: higher is better, others: lower):")
    print(wide.to_string(float_format=lambda value: f"{value:.4f}"))
    if arguments.output is not None:
        output = Path(arguments.output)
        output.mkdir(parents=True, exist_ok=True)
        table.to_csv(output / "metrics.csv", index=False)
        adata.write_h5ad(output / "screen.h5ad")
        generated.write_h5ad(output / "predicted.h5ad")
        _plot_predicted_vs_observed(
            expression, labels, split.held_out, predictions, output / "predicted_vs_observed.png"
        )
        names = ("metrics.csv", "screen.h5ad", "predicted.h5ad", "predicted_vs_observed.png")
        written = ", ".join(str(output / name) for name in names)
        print(f"\nWrote {written}.")
    print(f"\nDone in {time.perf_counter() - started:.1f} s.")
    return 0


def _plot_predicted_vs_observed(expression, labels, held_out, predictions, path) -> None:
    """Scatter of predicted against observed pseudobulk change per held-out double."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    control = expression[labels == "control"].mean(axis=0)
    observed = np.stack([expression[labels == label].mean(axis=0) for label in held_out])
    figure, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True)
    for ax, model in zip(axes, ("lcd", "additive"), strict=True):
        ax.scatter(observed - control, predictions[model] - control, s=8, alpha=0.6)
        limit = float(np.abs(observed - control).max()) * 1.1
        ax.plot([-limit, limit], [-limit, limit], color="grey", linewidth=0.8)
        ax.set_title(model)
        ax.set_xlabel("observed change from control (log1p)")
    axes[0].set_ylabel("predicted change from control (log1p)")
    figure.suptitle("Held-out doubles: every gene of every held-out double")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _simulate(arguments) -> int:
    output_file(arguments.output, (".h5ad",))
    adata = simulate_screen(
        num_genes=arguments.genes,
        num_cells=arguments.cells,
        drift=arguments.drift,
        perturbed_genes=arguments.singles,
        double_perturbations=arguments.doubles,
        intervention=arguments.intervention,
        key=arguments.seed,
    )
    adata.write_h5ad(arguments.output)
    print(f"Wrote {adata.n_obs} cells x {adata.n_vars} genes to {arguments.output}.")
    return 0


def _screen_options(parser, *, genes, cells, singles, doubles) -> None:
    parser.add_argument("--genes", type=int, default=genes, help="number of genes")
    parser.add_argument("--cells", type=int, default=cells, help="number of cells")
    parser.add_argument("--singles", type=int, default=singles, help="singly perturbed genes")
    parser.add_argument("--doubles", type=int, default=doubles, help="double perturbations")
    parser.add_argument("--seed", type=int, default=0, help="random seed")


def add_demo_commands(commands) -> None:
    """The ``demo`` and ``simulate`` subcommands."""
    demo = commands.add_parser(
        "demo", help="simulate a screen, hold out doubles, fit LCD, score it against baselines"
    )
    _screen_options(demo, genes=12, cells=5000, singles=8, doubles=8)
    demo.add_argument("--steps", type=int, default=2000, help="SVI steps of the LCD fit")
    demo.add_argument(
        "--output",
        help="folder for metrics.csv, screen.h5ad, predicted.h5ad and predicted_vs_observed.png",
    )
    demo.set_defaults(handler=_demo)
    simulate = commands.add_parser("simulate", help="simulate a screen and write it as .h5ad")
    _screen_options(simulate, genes=50, cells=10_000, singles=10, doubles=10)
    simulate.add_argument("--drift", choices=("linear", "neural"), default="linear")
    simulate.add_argument(
        "--intervention", choices=("knockout", "knockdown", "shift"), default="knockout"
    )
    simulate.add_argument("--output", required=True, help="path of the .h5ad file to write")
    simulate.set_defaults(handler=_simulate)
