"""Cost of an LCD fit as screens grow: seconds per SVI step, compilation and peak memory.

Usage::

    python benchmarks/lcd_scaling.py [--genes 20 46 107] [--interventions shift knockout]
        [--cells-per-condition 100] [--steps 30] [--condition-batch none 16]

Each configuration is a simulated linear screen with every gene perturbed alone (``genes + 1``
conditions, all genes modelled, so the latent state has ``m = genes`` coordinates), fitted by
``LCD.fit`` in a fresh subprocess with chunks of 10 steps. The first chunk includes compilation;
the time per step is the median of the later chunks. ``--condition-batch`` compares uniform
minibatches (``none``: every condition's law every step) with condition-by-condition ones
(``LCD.fit(condition_batch=k)``). Issue 14 measured, before the shared
covariance of shift and knockdown screens, 0.35-0.59 s per step at 46 genes and 7.1 s at 107.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import subprocess
import sys

CHUNK = 10


def run_one(
    genes: int, intervention: str, cells_per_condition: int, steps: int, condition_batch
) -> dict:
    import jax
    import numpy as np

    import causalcell as cc

    conditions = genes + 1
    adata = cc.datasets.simulate_screen(
        num_genes=genes,
        num_cells=cells_per_condition * conditions,
        perturbed_genes=genes,
        double_perturbations=0,
        intervention=intervention,
        control_fraction=1.0 / conditions,
        key=0,
    )
    model = cc.LCD.fit(
        adata,
        intervention=intervention,
        num_steps=steps,
        chunk_size=CHUNK,
        progress_bar=False,
        key=0,
        condition_batch=condition_batch,
    )
    seconds = np.asarray(model.posterior.config["chunk_seconds"])
    return {
        "genes": genes,
        "conditions": conditions,
        "cells": adata.n_obs,
        "intervention": intervention,
        "condition_batch": condition_batch,
        "first_chunk_s": float(seconds[0]),
        "step_s": float(np.median(seconds[1:]) / CHUNK),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": jax.devices()[0].platform,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[20, 46, 107])
    parser.add_argument("--interventions", nargs="+", default=["shift", "knockout"])
    parser.add_argument("--cells-per-condition", type=int, default=100)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--condition-batch", nargs="+", default=["none"])
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a subprocess's configuration
    arguments = parser.parse_args()
    if arguments.one:
        print(json.dumps(run_one(**json.loads(arguments.one))))
        return
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(
        "intervention  genes  conditions  cells  cond/batch  first chunk (s)  s/step   peak MB  "
        "device"
    )
    batches = [None if value == "none" else int(value) for value in arguments.condition_batch]
    for intervention, genes, condition_batch in itertools.product(
        arguments.interventions, arguments.genes, batches
    ):
        configuration = {
            "genes": genes,
            "intervention": intervention,
            "cells_per_condition": arguments.cells_per_condition,
            "steps": arguments.steps,
            "condition_batch": condition_batch,
        }
        output = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(configuration)],
            capture_output=True,
            text=True,
        )
        if output.returncode:
            print(f"{intervention:12s} {genes:6d}  failed: {output.stderr.strip()[-300:]}")
            continue
        row = json.loads(output.stdout.strip().splitlines()[-1])
        print(
            f"{row['intervention']:12s} {row['genes']:6d} {row['conditions']:11d} "
            f"{row['cells']:6d} {row['condition_batch']!s:>11s} "
            f"{row['first_chunk_s']:16.1f} {row['step_s']:8.3f} "
            f"{row['peak_mb']:9.0f}  {row['device']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
