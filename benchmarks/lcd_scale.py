"""LCD at the size of real screens (issue 14): fit time, time per step, peak memory and
held-out accuracy against the baselines, on simulated screens shaped like published ones.

Usage::

    python benchmarks/lcd_scale.py [--screen norman] [--steps 3000] [--condition-batch auto]
        [--cache DIR] [--size-factors true|total] [--particles 1]

Screens (``--screen``, each simulated by ``simulate_screen`` with a linear drift):

- ``norman``: 1,000 genes, 105 single CRISPRa targets (shift), 131 doubles, 100,000 cells;
- ``replogle``: 1,000 genes, 1,000 single knockdowns, 150,000 cells;
- ``knockout``: 1,000 genes, 200 single knockouts, 100 doubles, 60,000 cells;
- ``small``: 200 genes, 30 shifted targets, 30 doubles, 10,000 cells (a quick check);
- ``wide``: 1,000 genes, 25 shifted targets, 20 doubles, 20,000 cells (Norman's genes, few
  targets).

On a screen without doubles whose every gene is perturbed (``replogle``) the accuracy is
network recovery instead: CLIPR from the fit against the true drift, beside closed-form CLIPR
of pseudobulk log mean rates, in ``clipr_screen.py``'s columns.

Half of the doubles are held out (``evaluation.split_combinations``); LCD is fitted on the
rest with ``LCD.fit``'s defaults (modelled genes: the targets; 8 programs; the other genes
decoded; ``condition_batch="auto"``), with the simulator's true library sizes (``true``) or
total counts as a user would (``total``). The table scores 300 generated cells per held-out
double against the additive, linear and no-change baselines (``causalcell.evaluation``; each
baseline's cells are the same 300 control cells shifted to its predicted means, so every
model's energy distance carries the same bias), with the noise floor: the expected energy
distance and pseudobulk L2 of a model with the true law that generates as many cells
(``lcd_screen.noise_floor``).
``--genes`` and ``--cells`` override the screen's size: the time per step does not grow with
the cells (a step sees ``batch_size`` of them), so a smaller screen measures it where the
simulator's memory (about 16 GB at 100,000 cells of 1,000 genes) or time (one Lyapunov
equation of order 1,000 per knockout condition) is the limit. ``--particles K`` above 1 fits with
``loss=causalcell.inference.LocalImportanceELBO(K)`` instead of the ELBO. ``--cache DIR`` keeps the
simulated screen as an ``.h5ad`` there (simulating 100,000 cells of
1,000 genes takes about 5 minutes).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from clipr_screen import COLUMNS, Truth, closed_form, log_rate, score
from lcd_screen import noise_floor  # the expected scores of a model with the true law

from causalcell import evaluation
from causalcell.data import register, to_arrays
from causalcell.datasets import simulate_screen
from causalcell.inference import LocalImportanceELBO
from causalcell.models.baselines import shift_control_cells
from causalcell.models.lcd import LCD

SCREENS = {
    "norman": {"genes": 1000, "singles": 105, "doubles": 131, "cells": 100_000, "kind": "shift"},
    "replogle": {
        "genes": 1000,
        "singles": 1000,
        "doubles": 0,
        "cells": 150_000,
        "kind": "knockdown",
    },
    "knockout": {
        "genes": 1000,
        "singles": 200,
        "doubles": 100,
        "cells": 60_000,
        "kind": "knockout",
    },
    "small": {"genes": 200, "singles": 30, "doubles": 30, "cells": 10_000, "kind": "shift"},
    "wide": {"genes": 1000, "singles": 25, "doubles": 20, "cells": 20_000, "kind": "shift"},
}
PREDICTED_CELLS = 300
#: Posterior (and bootstrap) draws of the direct effects scored on screens without doubles.
NETWORK_DRAWS = 100


def screen(name: str, seed: int, cache: Path | None, **overrides) -> anndata.AnnData:
    """The simulated screen ``name`` (read from ``cache`` when it was simulated before), with
    ``genes`` or ``cells`` overridden where given."""
    shape = {**SCREENS[name], **{key: value for key, value in overrides.items() if value}}
    shape["singles"] = min(shape["singles"], shape["genes"])  # replogle perturbs every gene
    tag = "" if shape == SCREENS[name] else f"_{shape['genes']}x{shape['cells']}"
    path = None if cache is None else cache / f"lcd_scale_{name}{tag}_{seed}.h5ad"
    if path is not None and path.exists():
        return anndata.read_h5ad(path)
    adata = simulate_screen(
        num_genes=shape["genes"],
        num_cells=shape["cells"],
        perturbed_genes=shape["singles"],
        double_perturbations=shape["doubles"],
        intervention=shape["kind"],
        key=seed,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(path)
    return adata


def baseline_cells(expression, labels, means, seed: int) -> dict[str, list[np.ndarray]]:
    """Cells of each mean-only baseline: the same :data:`PREDICTED_CELLS` control cells (drawn
    once) shifted to each predicted mean, so that every model's energy distance carries the
    same ``1 / n`` bias of :data:`PREDICTED_CELLS` predicted cells as LCD's and the noise
    floor's (scored on every control cell, a baseline's distance carried the smaller bias
    ``E|X - X'| / n_control`` instead, an advantage over any model that generates cells)."""
    control = expression[labels == "control"]
    chosen = np.random.default_rng(seed).choice(len(control), PREDICTED_CELLS, replace=False)
    centre = control.mean(axis=0)
    return {
        name: [shift_control_cells(control[chosen], centre, mean) for mean in predictions]
        for name, predictions in means.items()
    }


def print_network_recovery(model, adata, arguments) -> None:
    """CLIPR from the fit against the true drift, beside closed-form CLIPR of the pseudobulk
    log mean rates (``clipr_screen.py``'s table and columns), on a screen with every gene
    perturbed and no doubles (``replogle``)."""
    started = time.perf_counter()
    truth = Truth(adata)
    genes = list(adata.var_names)
    effects = model.effects(num_samples=NETWORK_DRAWS, key=arguments.seed)
    rows = {"lcd": score(effects, effects, truth)}
    rows["lcd"]["seconds"] = time.perf_counter() - started
    size_factor_key = "size_factor" if arguments.size_factors == "true" else None
    arrays = to_arrays(adata, register(adata, size_factor_key=size_factor_key))
    labels = np.asarray(adata.obs["perturbation"])
    rates = arrays.counts / arrays.size_factors[:, None]
    rows["closed form (log rate)"] = closed_form(
        rates, labels, genes, NETWORK_DRAWS, arguments.seed, truth, log_rate
    )
    rows["random"] = {"auprc_abs": truth.density, "auprc_sign": truth.density}
    rows["random"].update(orient_abs=0.5, orient_sign=0.5)
    print(
        f"# network recovery: {int(truth.adjacency.sum())} true edges (density "
        f"{truth.density:.4f}); {NETWORK_DRAWS} posterior (LCD) or bootstrap (closed form) "
        "draws; seconds: effects (LCD) or bootstrap (closed form), after the fit"
    )
    print(f"| method | {' | '.join(COLUMNS)} |")
    print("|---|" + "---:|" * len(COLUMNS))
    for method, row in rows.items():
        cells = [f"{row[name]:.3f}" if name in row else "" for name in COLUMNS]
        print(f"| {method} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screen", choices=sorted(SCREENS), default="norman")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--condition-batch", default="auto")
    parser.add_argument("--size-factors", choices=("true", "total"), default="true")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=100, help="SVI steps per chunk")
    parser.add_argument("--genes", type=int, default=None, help="override the screen's genes")
    parser.add_argument("--cells", type=int, default=None, help="override the screen's cells")
    parser.add_argument("--particles", type=int, default=1, help="latent draws per cell")
    arguments = parser.parse_args()
    loss = {} if arguments.particles == 1 else {"loss": LocalImportanceELBO(arguments.particles)}
    condition_batch = arguments.condition_batch
    if condition_batch not in ("auto", "none"):
        condition_batch = int(condition_batch)
    started = time.perf_counter()
    adata = screen(
        arguments.screen,
        arguments.seed,
        arguments.cache,
        genes=arguments.genes,
        cells=arguments.cells,
    )
    simulate_seconds = time.perf_counter() - started
    kind = SCREENS[arguments.screen]["kind"]
    conditions = list(adata.obs["perturbation"].cat.categories)
    if SCREENS[arguments.screen]["doubles"]:
        split = evaluation.split_combinations(conditions, seed=arguments.seed)
    else:  # singles only: fit everything, report time and memory
        split = evaluation.HeldOutSplit(conditions, [])
    train = adata[adata.obs["perturbation"].isin(split.train)].copy()
    started = time.perf_counter()
    model = LCD.fit(
        train,
        intervention=kind,
        size_factor_key="size_factor" if arguments.size_factors == "true" else None,
        num_steps=arguments.steps,
        condition_batch=None if condition_batch == "none" else condition_batch,
        key=arguments.seed,
        progress_bar=False,
        chunk_size=arguments.chunk_size,
        **loss,
    )
    fit_seconds = time.perf_counter() - started
    chunks = np.asarray(model.posterior.config["chunk_seconds"])
    step_seconds = float(np.median(chunks[1:]) / model.posterior.config["chunk_size"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"# {arguments.screen}: {kind}, {adata.n_vars} genes, {adata.n_obs} cells, "
        f"{len(split.train)} training and {len(split.held_out)} held-out conditions; "
        f"{arguments.size_factors} size factors; simulated (or read) in {simulate_seconds:.0f} s"
    )
    print(
        f"# LCD: {len(model.modelled_genes)} modelled genes + {model.space.programs} programs, "
        f"condition_batch={model.posterior.config['strata_per_batch']}, {arguments.steps} "
        f"steps, {arguments.particles} particle(s) per cell, in {fit_seconds:.0f} s "
        f"({step_seconds:.3f} s per step after compilation, "
        f"first chunk {chunks[0]:.0f} s); peak memory {peak:.0f} MB"
    )
    if not split.held_out:
        if set(model.modelled_genes) == set(adata.var_names):  # every gene perturbed
            print_network_recovery(model, adata, arguments)
        return
    started = time.perf_counter()
    predicted = model.predict(list(split.held_out), num_cells=PREDICTED_CELLS, key=1)
    predict_seconds = time.perf_counter() - started
    expression, labels = evaluation.observed_expression(adata)
    labels = np.asarray(labels)
    means = evaluation.baseline_predictions(expression, labels, split)
    cells = baseline_cells(expression, labels, means, arguments.seed)
    means["lcd"], cells["lcd"] = evaluation.generated_predictions(predicted, split.held_out)
    table = evaluation.evaluate_predictions(expression, labels, split.held_out, means, cells)
    wide = table.pivot(index="model", columns="metric", values="value")
    wide = wide.loc[["lcd", "additive", "linear", "no_change"]]
    floor = noise_floor(expression, labels, split.held_out, PREDICTED_CELLS)
    wide.loc["floor"] = pd.Series(floor)
    print(
        f"# held-out doubles ({PREDICTED_CELLS} cells each, predicted in {predict_seconds:.0f} s)"
    )
    print(wide.to_string(float_format="{:.3f}".format))


if __name__ == "__main__":
    main()
