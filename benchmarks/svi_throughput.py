"""SVI throughput of a negative-binomial latent-factor model with the amortized guide.

Usage::

    python benchmarks/svi_throughput.py [--genes 100 1000 5000] [--batch 256 1024] [--cells 10000]

Model: ``z_c ~ N(0, I_10)``, ``counts_cg ~ NB(l_c exp(z_c W + b)_g, theta_g)`` with global
``W, b, theta`` (AutoNormal) and an encoder (one hidden layer of 128) for ``z_c``. Each
configuration runs in a fresh subprocess: compile time (first chunk), then steps/s and cells/s
over timed chunks, and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

LATENT = 10


def run_one(genes: int, batch: int, cells: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    import optax

    from causalcell.inference import fit

    def model(counts, size_factors):
        loadings = numpyro.sample(
            "loadings", dist.Normal(0.0, 0.3).expand([LATENT, genes]).to_event(2)
        )
        bias = numpyro.sample("bias", dist.Normal(-8.0, 2.0).expand([genes]).to_event(1))
        concentration = numpyro.sample(
            "concentration", dist.LogNormal(1.0, 1.0).expand([genes]).to_event(1)
        )
        with numpyro.plate("cells", counts.shape[0]) as index:
            latent = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
            mean = size_factors[index, None] * jnp.exp(latent @ loadings + bias)
            numpyro.sample(
                "counts", dist.NegativeBinomial2(mean, concentration).to_event(1), obs=counts[index]
            )

    rng = np.random.default_rng(0)
    sizes = np.exp(rng.normal(np.log(5000.0), 0.3, cells)).astype(np.float32)
    counts = rng.poisson(sizes[:, None] / genes, (cells, genes)).astype(np.float32)
    data = {"counts": counts, "size_factors": sizes}
    chunk = 50
    posterior = fit(
        model,
        data,
        optimizer=optax.adam(1e-3),
        num_steps=steps,
        chunk_size=chunk,
        batch_size=batch,
        key=0,
        progress_bar=False,
    )
    seconds = np.asarray(posterior.config["chunk_seconds"])
    steady = chunk / np.median(seconds[1:])  # the first chunk includes compilation
    return {
        "genes": genes,
        "batch": batch,
        "compile_s": seconds[0],  # compilation plus the first chunk
        "steps_per_s": steady,
        "cells_per_s": steady * batch,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": jax.devices()[0].platform,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.one:
        genes, batch = (int(value) for value in arguments.one.split(","))
        print(json.dumps(run_one(genes, batch, arguments.cells, arguments.steps)))
        return
    print(
        f"# SVI throughput, NB factor model + amortized guide, {arguments.cells} cells, "
        f"{platform.machine()}"
    )
    columns = ("genes", "batch", "compile s", "steps/s", "cells/s", "peak MB")
    print("".join(f"{name:>11}" for name in columns) + "  device")
    for genes in arguments.genes:
        for batch in arguments.batch:
            command = [
                sys.executable,
                __file__,
                "--one",
                f"{genes},{batch}",
                "--cells",
                str(arguments.cells),
                "--steps",
                str(arguments.steps),
            ]
            output = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(output.stdout.strip().splitlines()[-1])
            print(
                f"{row['genes']:>11}{row['batch']:>11}{row['compile_s']:>11.1f}"
                f"{row['steps_per_s']:>11.1f}{row['cells_per_s']:>11.0f}{row['peak_mb']:>11.0f}"
                f"  {row['device']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
