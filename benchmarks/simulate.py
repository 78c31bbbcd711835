"""How long simulating a screen takes, and its peak memory.

Usage::

    python benchmarks/simulate.py [--genes 50 500 2000] [--cells 10000] [--drift linear neural]

Each configuration runs in a fresh subprocess (so peak resident memory is its own): the first
call includes JAX compilation ("cold"), the second, with another seed, does not ("warm").
The design is 10 single and 10 double knockouts, so 21 conditions.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def run_one(genes: int, cells: int, drift: str) -> dict:
    import jax

    from causalcell.datasets import simulate_screen

    timings = []
    for seed in (0, 1):
        started = time.perf_counter()
        adata = simulate_screen(
            num_genes=genes,
            num_cells=cells,
            drift=drift,
            perturbed_genes=10,
            double_perturbations=10,
            intervention="knockout",
            key=seed,
        )
        timings.append(time.perf_counter() - started)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "genes": genes,
        "cells": cells,
        "drift": drift,
        "conditions": int(adata.obs["perturbation"].nunique()),
        "cold_s": timings[0],
        "warm_s": timings[1],
        "peak_mb": peak_mb,
        "device": jax.devices()[0].platform,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[50, 500, 2000])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--drift", nargs="+", default=["linear", "neural"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one:
        genes, cells, drift = arguments.one.split(",")
        print(json.dumps(run_one(int(genes), int(cells), drift)))
        return
    print(f"# simulate_screen benchmark on {platform.processor() or platform.machine()}")
    columns = ("drift", "genes", "cells", "conds", "cold s", "warm s", "peak MB")
    print("".join(f"{name:>9}" for name in columns) + "  device")
    for drift in arguments.drift:
        for genes in arguments.genes:
            output = (
                subprocess.run(
                    [sys.executable, __file__, "--one", f"{genes},{arguments.cells},{drift}"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            row = json.loads(output)
            cells = (row["drift"], row["genes"], row["cells"], row["conditions"])
            timings = (row["cold_s"], row["warm_s"], row["peak_mb"])
            print(
                "".join(f"{value:>9}" for value in cells)
                + "".join(f"{value:>9.1f}" for value in timings)
                + f"  {row['device']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
