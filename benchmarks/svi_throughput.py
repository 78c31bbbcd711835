"""SVI throughput of a negative-binomial latent-factor model, side by side with scvi-tools.

Usage::

    python benchmarks/svi_throughput.py [--genes 100 1000 5000] [--batch 256 1024]
        [--cells 10000] [--steps 300] [--decoder mlp|linear] [--threads N]
        [--scvi-python /tmp/scvi-env/bin/python]

Data: negative-binomial counts (per-gene mean fractions, log-normal library sizes, dispersion
5), simulated once per gene count and written to a temporary ``.npz`` that both engines read.
Both take the observed total counts as the library size.

causalcell: :func:`causalcell.inference.fit` with the amortized guide (an encoder with one
hidden layer of 128 for ``z_c``; AutoNormal for the globals) on ``z_c ~ N(0, I_10)``,
``counts_cg ~ NB(mean_cg, theta_g)`` with a ``LogNormal`` prior on the per-gene dispersion
``theta`` and either decoder:

- ``mlp`` (the default; scVI's architecture): ``mean_c = l_c softmax(MLP(z_c))``, one hidden
  layer of 128 with ReLU, its weights point estimates (an equinox module registered with
  ``numpyro.contrib.module.eqx_module``, as a VAE's decoder);
- ``linear``: ``mean_c = l_c exp(z_c W + b)`` with ``W, b`` global sample sites (AutoNormal).

scvi-tools (``--scvi-python``, a Python with ``scvi-tools`` installed; without one, or where it
cannot import scvi-tools, its columns show ``-`` and a line above the table says why):
``SCVI(gene_likelihood="nb", n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0,
use_batch_norm="none", use_layer_norm="none")`` trained on all cells (``train_size=1``) with the
same batch size; the same architecture, except that its decoder also computes a zero-inflation
head that the NB likelihood does not read. It runs in its own environment because it needs
PyTorch, which causalcell does not.

Each engine and configuration runs in a fresh subprocess pinned to the same ``--threads``
cores (CPU affinity, and ``torch.set_num_threads``), so neither gets more of the machine. On a
machine that other jobs load, prefer ``--threads 1``: with 2 threads on 2 busy cores, PyTorch's
OpenMP steps ran about 6 times slower than with 1 (JAX's about 1.5 times), which measures the
contention rather than the engines.
Throughput is the median over windows of 50 steps after a warm-up, excluding set-up: for
causalcell the first window includes compilation, for scvi-tools the warm-up is the first
epoch. Peak memory is the worker process's peak resident size (its imports included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: Latent dimensions and hidden width of the encoder and decoder (scVI's defaults).
LATENT = 10
HIDDEN = 128
#: Steps per timed window: the SVI engine's chunk (one jitted ``lax.scan``), and the window of
#: scvi-tools steps over which its throughput is taken, so both medians are over equal spans.
WINDOW = 50
#: Mean library size and NB dispersion of the simulated counts (a droplet data set's scale).
LIBRARY = 5000.0
DISPERSION = 5.0


def simulate_counts(genes: int, cells: int, path: Path, seed: int = 0) -> None:
    """Write ``counts`` ``[cells, genes]`` (float32) and ``size_factors`` (their totals) to
    ``path``: NB counts as a gamma-Poisson mixture, simulated in blocks of cells to bound the
    memory of the integer draws."""
    rng = np.random.default_rng(seed)
    fractions = rng.lognormal(0.0, 1.0, genes)
    fractions /= fractions.sum()
    library = np.exp(rng.normal(np.log(LIBRARY), 0.3, cells))
    counts = np.empty((cells, genes), np.float32)
    for start in range(0, cells, 1000):
        mean = library[start : start + 1000, None] * fractions
        rate = rng.standard_gamma(DISPERSION, mean.shape) * (mean / DISPERSION)
        counts[start : start + 1000] = rng.poisson(rate)
    np.savez(path, counts=counts, size_factors=counts.sum(axis=1))


def pin_threads(threads: int) -> None:
    """Restrict this process to its first ``threads`` allowed cores, before JAX or PyTorch
    start their thread pools (both size them from the cores the process may use)."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)


def window_median(seconds, cells) -> float:
    """Cells per second: the median over consecutive windows of :data:`WINDOW` steps of the
    window's cells over its seconds (all the steps when there are fewer)."""
    seconds, cells = np.asarray(seconds), np.asarray(cells)
    windows = max(len(seconds) // WINDOW, 1)
    size = len(seconds) // windows
    rates = [
        cells[w * size : (w + 1) * size].sum() / seconds[w * size : (w + 1) * size].sum()
        for w in range(windows)
    ]
    return float(np.median(rates))


def factor_model(genes: int, decoder: str):
    """The NB latent-factor model with a ``"linear"`` or ``"mlp"`` decoder (module docstring)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.contrib.module import eqx_module

    network = eqx.nn.MLP(
        LATENT, genes, width_size=HIDDEN, depth=1, activation=jax.nn.relu, key=jax.random.key(1)
    )

    def decode():
        """The globals of the decoder, and the map from latents to each gene's expected share
        of a cell's counts (mlp) or its rate per unit of library size (linear)."""
        if decoder == "mlp":
            registered = jax.vmap(eqx_module("decoder", network))  # weights: numpyro params
            return lambda latent: jax.nn.softmax(registered(latent), axis=-1)
        loadings = numpyro.sample(
            "loadings", dist.Normal(0.0, 0.3).expand([LATENT, genes]).to_event(2)
        )
        bias = numpyro.sample("bias", dist.Normal(-8.0, 2.0).expand([genes]).to_event(1))
        return lambda latent: jnp.exp(latent @ loadings + bias)

    def model(counts, size_factors):
        rates = decode()
        concentration = numpyro.sample(
            "concentration", dist.LogNormal(1.0, 1.0).expand([genes]).to_event(1)
        )
        with numpyro.plate("cells", counts.shape[0]) as index:
            latent = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
            mean = size_factors[index, None] * rates(latent)
            numpyro.sample(
                "counts", dist.NegativeBinomial2(mean, concentration).to_event(1), obs=counts[index]
            )

    return model


def run_causalcell(path: str, batch: int, steps: int, decoder: str) -> dict:
    """Fit the factor model on the counts at ``path``; throughput after the compiling window."""
    import jax
    import optax

    from causalcell.inference import fit

    data = dict(np.load(path))
    genes = data["counts"].shape[1]
    posterior = fit(
        factor_model(genes, decoder),
        data,
        optimizer=optax.adam(1e-3),
        num_steps=steps,
        chunk_size=WINDOW,
        batch_size=batch,
        key=0,
        progress_bar=False,
        guide_kwargs={"hidden": (HIDDEN,)},
    )
    seconds = np.asarray(posterior.config["chunk_seconds"])
    return {
        "compile_s": float(seconds[0]),  # compilation plus the first window
        "cells_per_s": window_median(seconds[1:], np.full(len(seconds) - 1, WINDOW * batch)),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": jax.devices()[0].platform,
    }


def run_scvi(path: str, batch: int, steps: int, threads: int) -> dict:
    """Train scvi-tools' SCVI on the counts at ``path`` (public API only) for one warm-up epoch
    and then at least ``steps`` steps, timing every step from the end of the one before."""
    import anndata
    import scvi
    from lightning.pytorch.callbacks import Callback

    class StepClock(Callback):
        """The end time, cells and epoch of every training step."""

        def __init__(self):
            self.ends, self.cells, self.epochs = [], [], []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
            self.ends.append(time.perf_counter())
            self.cells.append(len(next(iter(batch.values()))))
            self.epochs.append(trainer.current_epoch)

    scvi.settings.num_threads = threads  # torch.set_num_threads
    scvi.settings.seed = 0
    counts = np.load(path)["counts"]
    started = time.perf_counter()
    adata = anndata.AnnData(counts)
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(
        adata,
        n_hidden=HIDDEN,
        n_latent=LATENT,
        n_layers=1,
        dropout_rate=0.0,
        gene_likelihood="nb",
        use_batch_norm="none",
        use_layer_norm="none",
    )
    setup_s = time.perf_counter() - started
    clock = StepClock()
    per_epoch = math.ceil(counts.shape[0] / batch)
    model.train(
        max_epochs=1 + math.ceil(steps / per_epoch),
        batch_size=batch,
        train_size=1.0,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=[clock],
    )
    ends, epochs = np.asarray(clock.ends), np.asarray(clock.epochs)
    timed = np.flatnonzero(epochs >= 1)  # each timed step runs from the previous step's end
    return {
        "setup_s": setup_s,
        "warmup_s": float(ends[timed[0] - 1] - started - setup_s),
        "timed_steps": len(timed),
        "cells_per_s": window_median(ends[timed] - ends[timed - 1], np.asarray(clock.cells)[timed]),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def worker(python: str, engine: str, path: Path, batch: int, arguments) -> dict:
    """Run one engine on one data set in a fresh subprocess; its result, or ``{"error": ...}``."""
    command = [
        python,
        __file__,
        "--worker",
        engine,
        "--data",
        str(path),
        "--batch",
        str(batch),
        "--steps",
        str(arguments.steps),
        "--decoder",
        arguments.decoder,
        "--threads",
        str(arguments.threads),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": str(arguments.threads)}
    output = subprocess.run(command, capture_output=True, text=True, env=environment)
    if output.returncode != 0:
        lines = output.stderr.strip().splitlines() or [f"exit status {output.returncode}"]
        return {"error": lines[-1]}
    return json.loads(output.stdout.strip().splitlines()[-1])


def probe_scvi(python: str | None) -> tuple[str | None, str | None]:
    """``(versions, problem)``: scvi-tools' and torch's versions under ``python``, or why the
    scvi-tools column cannot run."""
    if python is None:
        return None, "no --scvi-python given"
    probe = (
        "import anndata, scvi, torch; "
        "print(f'scvi-tools {scvi.__version__}, torch {torch.__version__}')"
    )
    check = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines() or [f"exit status {check.returncode}"]
        return None, f"{python} cannot import scvi-tools ({lines[-1]})"
    return check.stdout.strip(), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--decoder", choices=("mlp", "linear"), default="mlp")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="cores each engine is pinned to (default: all this process may use)",
    )
    parser.add_argument("--scvi-python", help="a Python with scvi-tools (else the column skips)")
    parser.add_argument("--worker", choices=("causalcell", "scvi"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        pin_threads(arguments.threads)
        batch = arguments.batch[0]
        if arguments.worker == "causalcell":
            row = run_causalcell(arguments.data, batch, arguments.steps, arguments.decoder)
        else:
            row = run_scvi(arguments.data, batch, arguments.steps, arguments.threads)
        print(json.dumps(row))
        return
    versions, problem = probe_scvi(arguments.scvi_python)
    print(
        f"# SVI throughput, NB factor model ({arguments.decoder} decoder) + amortized guide, "
        f"{arguments.cells} cells, {arguments.steps} steps, {arguments.threads} threads, "
        f"{platform.machine()}"
    )
    print(f"# scvi-tools skipped: {problem}" if problem else f"# {versions}")
    columns = ("genes", "batch", "compile s", "cells/s", "peak MB", "scvi cells/s", "scvi MB")
    print("".join(f"{name:>13}" for name in columns) + "  ratio  device")
    with tempfile.TemporaryDirectory() as folder:
        for genes in arguments.genes:
            path = Path(folder) / f"counts_{genes}.npz"
            simulate_counts(genes, arguments.cells, path)
            for batch in arguments.batch:
                ours = worker(sys.executable, "causalcell", path, batch, arguments)
                if "error" in ours:
                    raise RuntimeError(f"causalcell at {genes} genes, batch {batch}: {ours}")
                theirs = {"error": "skipped"}
                if not problem:
                    theirs = worker(arguments.scvi_python, "scvi", path, batch, arguments)
                if "error" in theirs:
                    scvi_columns, ratio = f"{'-':>13}{'-':>13}", "    -"
                else:
                    scvi_columns = f"{theirs['cells_per_s']:>13.0f}{theirs['peak_mb']:>13.0f}"
                    ratio = f"{ours['cells_per_s'] / theirs['cells_per_s']:>5.2f}"
                print(
                    f"{genes:>13}{batch:>13}{ours['compile_s']:>13.1f}"
                    f"{ours['cells_per_s']:>13.0f}{ours['peak_mb']:>13.0f}{scvi_columns}"
                    f"  {ratio}  {ours['device']}",
                    flush=True,
                )
                if "error" in theirs and not problem:
                    print(f"# scvi-tools failed at {genes} genes, batch {batch}: {theirs['error']}")
    print("# ratio: causalcell cells/s over scvi-tools cells/s")


if __name__ == "__main__":
    main()
