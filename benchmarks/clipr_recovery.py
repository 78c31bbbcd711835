"""CLIPR on fitted LCD models over repeated simulated screens: recovery and interval coverage.

Usage::

    python benchmarks/clipr_recovery.py [--datasets 20] [--genes 6] [--cells 3000]
        [--steps 4000] [--guide full] [--seed 0] [--seeds 18,19,0] [--refine]
        [--refine-warmup 250] [--refine-samples 400] [--refine-depth 8]

Each dataset is a linear shift screen (``causalcell.datasets.simulate_screen``, seed
``seed + index``) in which every gene is perturbed alone, so every direct effect
``W_ij = A_ij / (-A_ii)`` is identified. LCD is fitted with the true library sizes and the given
global guide; ``LCD.effects`` runs CLIPR per posterior draw. Per dataset it prints AUPRC (by
``|W|`` and by sign probability), SHD of the graph whose 90% intervals exclude zero, sign
accuracy, orientation accuracy of one-way true edges, and the coverage of equal-tailed
intervals at several levels over all off-diagonal effects (true zeros included); then the
pooled coverage with its binomial standard error (effects within a dataset are not
independent, so the spread over datasets is printed too). With ``--refine`` every dataset is
scored twice: the SVI posterior (rows ``svi``) and the same fit refined by NUTS on the globals
with collapsed latents (rows ``nuts``, :func:`causalcell.models.lcd._refine.refine_lcd`), whose
time is reported in ``fit_s`` on top of the SVI fit's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from causalcell import metrics
from causalcell.datasets import ground_truth, simulate_screen
from causalcell.graph import to_adjacency
from causalcell.models.lcd import LCD
from causalcell.models.lcd._refine import refine_lcd

LEVELS = (0.5, 0.8, 0.9, 0.95)


def one_dataset(seed: int, arguments) -> list[dict]:
    adata = simulate_screen(
        num_genes=arguments.genes,
        num_cells=arguments.cells,
        perturbed_genes=arguments.genes,
        double_perturbations=0,
        intervention="shift",
        key=seed,
    )
    truth = ground_truth(adata)
    genes = list(adata.var_names)
    started = time.perf_counter()
    model = LCD.fit(
        adata,
        intervention="shift",
        size_factor_key="size_factor",
        num_steps=arguments.steps,
        key=seed,
        progress_bar=False,
        global_guide=arguments.guide,
    )
    fit_seconds = time.perf_counter() - started
    rows = [score(model, "svi", seed, fit_seconds, truth, genes, arguments)]
    if arguments.refine:
        started = time.perf_counter()
        refined = refine_lcd(
            model,
            num_warmup=arguments.refine_warmup,
            num_samples=arguments.refine_samples,
            key=seed,
            max_tree_depth=arguments.refine_depth,
        )
        seconds = fit_seconds + time.perf_counter() - started
        rows.append(score(refined, "nuts", seed, seconds, truth, genes, arguments))
    return rows


def score(model, method: str, seed: int, fit_seconds: float, truth, genes, arguments) -> dict:
    """Recovery and coverage metrics of one fitted model's direct effects."""
    draws = arguments.draws if method == "svi" else min(arguments.draws, arguments.refine_samples)
    effects = model.effects(num_samples=draws, key=seed)
    drift = np.asarray(truth.drift.matrix())
    true_direct = drift / -np.diag(drift)[:, None]  # drift orientation: row = target
    np.fill_diagonal(true_direct, 0.0)
    true_adjacency = to_adjacency(truth.graph, genes)  # graph orientation: [source, target]
    off_diagonal = ~np.eye(arguments.genes, dtype=bool)
    magnitude = effects.adjacency_scores("magnitude")
    row = {
        "method": method,
        "seed": seed,
        "fit_s": fit_seconds,
        "edges": int(true_adjacency.sum()),
        "auprc_abs": metrics.auprc(true_adjacency, magnitude),
        "auprc_sign": metrics.auprc(true_adjacency, effects.adjacency_scores()),
        "shd": metrics.shd(true_adjacency, to_adjacency(effects.to_networkx(), genes)),
        "sign": metrics.sign_accuracy(true_direct.T, effects.mean.T),
        "orientation": metrics.orientation_accuracy(true_adjacency, magnitude),
        "rmse": float(np.sqrt(np.mean((effects.mean - true_direct)[off_diagonal] ** 2))),
    }
    draws = effects.draws[:, off_diagonal]  # [samples, effects]
    for level in LEVELS:
        lower, upper = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        row[f"cover{int(level * 100)}"] = metrics.interval_coverage(
            true_direct[off_diagonal], lower, upper
        )
        if level == 0.9:
            row["width90"] = float(np.mean(upper - lower))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--genes", type=int, default=6)
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--guide", default="full", choices=("normal", "lowrank", "full"))
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --seed)")
    parser.add_argument("--refine", action="store_true", help="also score refine_lcd's NUTS")
    parser.add_argument("--refine-warmup", type=int, default=250)
    parser.add_argument("--refine-samples", type=int, default=400)
    parser.add_argument("--refine-depth", type=int, default=8)
    arguments = parser.parse_args()
    if arguments.seeds:
        seeds = [int(seed) for seed in arguments.seeds.split(",")]
    else:
        seeds = [arguments.seed + index for index in range(arguments.datasets)]
    print(
        f"{arguments.genes} genes, {arguments.cells} cells, every gene shifted alone; "
        f"{arguments.steps} SVI steps, global guide {arguments.guide!r}"
    )
    columns = [
        "method",
        "seed",
        "fit_s",
        "edges",
        "auprc_abs",
        "auprc_sign",
        "shd",
        "sign",
        "orientation",
    ]
    columns += ["rmse", "width90", *(f"cover{int(level * 100)}" for level in LEVELS)]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    rows = []
    for seed in seeds:
        for row in one_dataset(seed, arguments):
            rows.append(row)
            cells = [
                f"{row[name]:.3f}" if isinstance(row[name], float) else str(row[name])
                for name in columns
            ]
            print("| " + " | ".join(cells) + " |", flush=True)
    for method in ("svi", "nuts"):
        summarise([row for row in rows if row["method"] == method], method, columns, arguments)


def summarise(rows: list[dict], method: str, columns: list[str], arguments) -> None:
    """Means and spreads over datasets, and pooled coverage with binomial standard errors."""
    if not rows:
        return
    effects_per_dataset = arguments.genes * (arguments.genes - 1)
    print(f"\n{method}: over {len(rows)} datasets ({effects_per_dataset} effects each):")
    for name in columns[2:]:
        values = np.array([row[name] for row in rows], dtype=float)
        print(f"  {name:12s} mean {values.mean():.3f}  sd over datasets {values.std(ddof=1):.3f}")
    for level in LEVELS:
        values = np.array([row[f"cover{int(level * 100)}"] for row in rows])
        pooled = values.mean()
        error = np.sqrt(pooled * (1 - pooled) / (len(rows) * effects_per_dataset))
        print(f"  {level:.0%} intervals: pooled coverage {pooled:.3f} +- {error:.3f} (binomial se)")


if __name__ == "__main__":
    main()
