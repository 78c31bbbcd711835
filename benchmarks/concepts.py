"""The causal concept model against three baselines on simulated concept-labelled cells whose
every counterfactual is known (issue 17).

Usage::

    python benchmarks/concepts.py [--cells 10000] [--genes 200] [--steps 3000] [--seeds 0 1 2]
        [--size-factors true|total] [--draws 100] [--test-cells 1000]
        [--decoder-posterior laplace|normal|lowrank|point] [--hidden 128]
    python benchmarks/concepts.py --scale [--cells 50000] [--genes 2000] [--steps 3000]
    python benchmarks/concepts.py --known-noise [--cells 10000] [--genes 100] [--steps 3000]

Data: :func:`causalcell.datasets.simulate_concepts` (age and region drive cell type, donor
decides batch; every cell's exogenous noise kept). One combination (90-week-old cells of donor
d4: two root concepts, so no mechanism between concepts is biased by leaving it out) is left
out of training. The query is ``do(age = 90w)`` on up to ``--test-cells``
training cells aged 4 weeks: a parent concept, so cell type may change with it.

Methods (all :class:`causalcell.ConceptModel` fits of the same size and steps):

- ``scm``: the model with the true concept graph, Bayesian decoder (``--decoder-posterior``:
  the fit's default, mean-field globals with the Laplace readout; ``--hidden`` units, 128 by
  default); per-cell abduction.
- ``swap``: the same fit, ``abduction="swap"``: CausCell's population-level counterfactual
  (the intervened concept's noise from a random cell of the new level, fresh unexplained part,
  descendants from fresh noise).
- ``ind``: no concept graph (CausCell's "IND" ablation): cell type never follows age.
- ``cvae``: no graph and no variation within a level (``concept_noise=False``): concepts as
  covariates of a conditional VAE; counterfactual = change the covariate, keep the latent.
- ``oracle mean``: the true mean change of each gene over the queried cells, given to every
  cell: the best any population-level answer can do (it knows the truth).

Columns: per-cell counterfactual change of log-rates against the truth (correlation and RMSE over
cells x genes; coverage and mean width of 90% intervals), energy distance of the counterfactual
counts (log1p-normalised, coupled draw) to true counterfactual counts with the noise floor of two
true draws (``floor``); concept prediction from each concept's embedding (nearest centroid, half the
cells to train: mean accuracy and macro F1 over concepts) and from the unexplained part (``leak``;
``chance``: the same classifier on permuted labels); reconstruction from one posterior predictive
draw per cell (per-cell Pearson and MSE of log1p-normalised counts, not an average of draws); the
held-out combination generated (energy distance to half of its true cells, ``ood``, and the floor of
the other half, ``ood floor``); fit seconds.
``--scale`` fits ``scm`` only and prints seconds per step and peak memory. ``--known-noise``
fits the program with every cell's own noise given (its local sites conditioned on the
simulator's, full batches) and prints how well the decoder alone learns the per-cell change:
correlation of the changes' group means (cells grouped by their levels before and after) and of
their deviations from each gene's mean change, and of the variation within groups.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from numpyro.handlers import condition

import causalcell as cc
from causalcell.datasets import concept_truth, simulate_concepts
from causalcell.metrics import energy_distance
from causalcell.models.concepts import (
    DECODER_POSTERIORS,
    ConceptSpec,
    concept_model,
    counterfactual_draws,
)
from causalcell.preprocessing import normalize_log1p

HELD_OUT = {"age": "90w", "donor": "d4"}
QUERY = {"age": "90w"}


def fit(train, truth, method, arguments, graph=True):
    start = time.time()
    model = cc.ConceptModel.fit(
        train,
        list(truth.levels),
        truth.graph if graph else None,
        genes=None,
        num_steps=arguments.steps,
        decoder_posterior=arguments.decoder_posterior,
        hidden=arguments.hidden,
        concept_noise=method != "cvae",
        size_factor_key="size_factor" if arguments.size_factors == "true" else None,
        key=arguments.fit_key,
        progress_bar=False,
    )
    return model, time.time() - start


def true_counts(rng, log_rate, sizes, concentration):
    mean = sizes[:, None] * np.exp(log_rate)
    return rng.negative_binomial(concentration, concentration / (concentration + mean))


def log1p(counts):
    counts = np.asarray(counts, np.float64)
    return normalize_log1p(counts, np.maximum(counts.sum(1), 1.0))


def nearest_centroid(features, labels, rng):
    """Accuracy and macro F1 of a nearest-centroid classifier trained on half the cells."""
    order = rng.permutation(len(labels))
    train, test = order[: len(order) // 2], order[len(order) // 2 :]
    classes = np.unique(labels[train])
    centroids = np.stack([features[train][labels[train] == c].mean(0) for c in classes])
    distance = ((features[test][:, None] - centroids[None]) ** 2).sum(-1)
    predicted = classes[np.argmin(distance, axis=1)]
    truth = labels[test]
    f1 = []
    for c in classes:
        hit = ((predicted == c) & (truth == c)).sum()
        precision = hit / max((predicted == c).sum(), 1)
        recall = hit / max((truth == c).sum(), 1)
        f1.append(0.0 if hit == 0 else 2 * precision * recall / (precision + recall))
    return (predicted == truth).mean(), float(np.mean(f1))


def true_worlds(cells, truth, rng):
    """The true counterfactual log-rates of ``cells`` and two independent draws of their
    counts (the second gives the noise floor)."""
    true = truth.counterfactual(cells, QUERY)
    concentration = np.asarray(cells.uns["concept_simulation"]["concentration"])
    sizes = cells.obs["size_factor"].to_numpy(np.float64)
    draws = [true_counts(rng, true["log_rate"], sizes, concentration) for _ in range(2)]
    return true["log_rate"], draws


def score(model, method, cells, worlds, rng, arguments, seconds, held):
    """One row of the table for one fitted model and counterfactual method."""
    abduction = "swap" if method == "swap" else "cell"
    result = model.counterfactual(
        cells, QUERY, num_samples=arguments.draws, key=arguments.seed, abduction=abduction
    )
    changed = result[result.obs["world"].to_numpy() == "counterfactual"]
    log_rate, (first, second) = worlds
    shift = log_rate - cells.layers["log_rate"]
    mean, lower, upper = (changed.layers[f"shift_{f}"] for f in ("mean", "lower", "upper"))
    row = {
        "method": method,
        "corr": np.corrcoef(shift.ravel(), mean.ravel())[0, 1],
        "rmse": np.sqrt(np.mean((shift - mean) ** 2)),
        "cover": np.mean((shift >= lower) & (shift <= upper)),
        "width": np.mean(upper - lower),
        "ed": energy_distance(log1p(changed.X.toarray()), log1p(first)),
        "floor": energy_distance(log1p(second), log1p(first)),
        "seconds": seconds,
    }
    if method != "swap":
        embedded = model.embed(cells)
        scores = [
            nearest_centroid(embedded[c], cells.obs[c].cat.codes.to_numpy(), rng)
            for c in model.spec.names
        ]
        row["accuracy"] = np.mean([s[0] for s in scores])
        row["f1"] = np.mean([s[1] for s in scores])
        leaks, chance = [], []
        for c in model.spec.names:
            codes = cells.obs[c].cat.codes.to_numpy()
            leaks.append(nearest_centroid(embedded["unexplained"], codes, rng)[0])
            chance.append(nearest_centroid(embedded["unexplained"], rng.permutation(codes), rng)[0])
        row["leak"], row["chance"] = np.mean(leaks), np.mean(chance)
        observed = log1p(cells.X.toarray())
        drawn = log1p(model.reconstruct(cells, key=arguments.seed).X.toarray())
        row["pearson"] = np.mean(
            [np.corrcoef(a, b)[0, 1] for a, b in zip(observed, drawn, strict=True)]
        )
        row["mse"] = np.mean((observed - drawn) ** 2)
        half = held.n_obs // 2
        generated = model.generate(HELD_OUT, half, key=arguments.seed)
        reference = log1p(held.X[:half].toarray())
        row["ood"] = energy_distance(log1p(generated.X.toarray()), reference)
        row["ood floor"] = energy_distance(log1p(held.X[half : 2 * half].toarray()), reference)
    return row


COLUMNS = (
    "seed", "method", "corr", "rmse", "cover", "width", "ed", "floor", "accuracy", "f1",
    "leak", "chance", "pearson", "mse", "ood", "ood floor", "seconds",
)  # fmt: skip


def markdown(rows) -> str:
    def cell(value):
        if isinstance(value, float | np.floating):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def scale(arguments) -> None:
    adata = simulate_concepts(arguments.cells, arguments.genes, key=0)
    truth = concept_truth(adata)
    model, seconds = fit(adata, truth, "scm", arguments)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"{arguments.cells} cells x {arguments.genes} genes, {arguments.steps} steps: "
        f"fit {seconds:.0f} s ({seconds / arguments.steps:.3f} s per step with compilation), "
        f"peak memory {peak:.1f} GB"
    )
    del model


def per_cell_parts(true, estimate, groups) -> str:
    """Correlations of the group means, of their deviations from each gene's mean change, and
    of the variation within groups, between the true and the estimated changes."""

    def split(change):
        means = pd.DataFrame(change).groupby(groups).transform("mean").to_numpy()
        return means, means - change.mean(0), change - means

    pairs = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(split(true), split(estimate))]
    spread = (true - split(true)[0]).std(), (estimate - split(estimate)[0]).std()
    return (
        f"group means {pairs[0]:.3f}, their deviations from the mean change {pairs[1]:.3f}, "
        f"within groups {pairs[2]:.3f} (sd {spread[0]:.3f} true, {spread[1]:.3f} model)"
    )


def known_noise(arguments) -> None:
    adata = simulate_concepts(arguments.cells, arguments.genes, key=0)
    truth = concept_truth(adata)
    spec = ConceptSpec.from_graph(truth.graph, truth.levels)
    arrays = cc.data.concept_arrays(adata, spec.names, size_factor_key="size_factor")
    own = np.concatenate([adata.obsm[f"embedding_noise_{c}"] for c in spec.names], axis=1)
    rest = np.asarray(adata.obsm["unexplained"])
    data = {
        "labels": jnp.asarray(arrays.labels),
        "counts": jnp.asarray(arrays.counts),
        "size_factors": jnp.asarray(arrays.size_factors),
        "log_mean": jnp.log((arrays.counts / arrays.size_factors[:, None]).mean(0) + 1e-6),
    }
    kwargs = {"spec": spec, "num_genes": arrays.counts.shape[1], "hidden": arguments.hidden}
    kwargs.update(dimension=own.shape[1] // len(spec.names), unexplained=rest.shape[1])
    noise = {"concept_noise": jnp.asarray(own, jnp.float32), "unexplained": jnp.asarray(rest)}
    start = time.time()
    posterior = cc.fit(
        condition(concept_model, data=noise),
        data,
        guide="normal",
        model_kwargs=kwargs,
        batch_size=None,
        num_steps=arguments.steps,
        optimizer=optax.adam(optax.exponential_decay(3e-3, arguments.steps, 0.1)),
        progress_bar=False,
    )
    young = np.flatnonzero(adata.obs["age"].to_numpy() != QUERY["age"])[: arguments.test_cells]
    draws = posterior.sample(0, arguments.draws)
    shape = (arguments.draws, len(young))
    worlds = counterfactual_draws(
        jax.random.key(0),
        draws,
        spec,
        jnp.asarray(arrays.labels[young]),
        jnp.broadcast_to(noise["concept_noise"][young], (*shape, own.shape[1])),
        jnp.broadcast_to(noise["unexplained"][young], (*shape, rest.shape[1])),
        ((spec.index("age"), spec.level("age", QUERY["age"])),),
    )
    estimate = np.asarray(worlds["counterfactual"] - worlds["factual"]).mean(0)
    cells = adata[young]
    true = truth.counterfactual(cells, QUERY)
    change = true["log_rate"] - cells.layers["log_rate"]
    before = cells.obs[list(truth.levels)].astype(str).agg("|".join, axis=1).to_numpy()
    after = true["concepts"].astype(str).agg("|".join, axis=1).to_numpy()
    print(
        f"known noise, {arguments.cells} cells x {arguments.genes} genes, {arguments.steps} full "
        f"steps ({time.time() - start:.0f} s): correlation "
        f"{np.corrcoef(change.ravel(), estimate.ravel())[0, 1]:.3f}; "
        + per_cell_parts(change, estimate, before + ">" + after)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10000)
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size-factors", choices=("true", "total"), default="true")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--test-cells", type=int, default=1000)
    parser.add_argument("--fit-key", type=int, default=0)
    parser.add_argument("--decoder-posterior", choices=DECODER_POSTERIORS, default="laplace")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--known-noise", action="store_true")
    arguments = parser.parse_args()
    if arguments.scale:
        scale(arguments)
        return
    if arguments.known_noise:
        known_noise(arguments)
        return
    rows = []
    for seed in arguments.seeds:
        arguments.seed = seed
        rng = np.random.default_rng(seed)
        adata = simulate_concepts(arguments.cells, arguments.genes, key=seed)
        truth = concept_truth(adata)
        mask = np.ones(adata.n_obs, bool)
        for concept, level in HELD_OUT.items():
            mask &= adata.obs[concept].to_numpy() == level
        train, held = adata[~mask].copy(), adata[mask].copy()
        young = np.flatnonzero(train.obs["age"].to_numpy() != QUERY["age"])
        cells = train[young[: arguments.test_cells]].copy()
        fits = {}
        for method, graph in (("scm", True), ("ind", False), ("cvae", False)):
            fits[method] = fit(train, truth, method, arguments, graph)
        worlds = true_worlds(cells, truth, rng)
        shift = worlds[0] - cells.layers["log_rate"]
        oracle = np.broadcast_to(shift.mean(0), shift.shape)
        rows.append(
            {
                "seed": seed,
                "method": "oracle mean",
                "corr": np.corrcoef(shift.ravel(), oracle.ravel())[0, 1],
                "rmse": np.sqrt(np.mean((shift - oracle) ** 2)),
            }
        )
        for method in ("scm", "swap", "ind", "cvae"):
            model, seconds = fits["scm" if method == "swap" else method]
            row = score(model, method, cells, worlds, rng, arguments, seconds, held)
            rows.append({"seed": seed, **row})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(
        f"\n{arguments.cells} cells ({arguments.size_factors} size factors), "
        f"{arguments.genes} genes, {arguments.steps} steps, do({QUERY}) on "
        f"{min(arguments.test_cells, len(young))} cells; held out {HELD_OUT}.\n"
    )
    print(markdown(rows))


if __name__ == "__main__":
    main()
