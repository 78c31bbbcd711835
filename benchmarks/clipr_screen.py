"""CLIPR from a fitted LCD against closed-form CLIPR on pseudobulk, on a screen that perturbs
every gene (issue 14): network recovery, orientation, interval coverage and time.

Usage::

    python benchmarks/clipr_screen.py [--genes 107] [--intervention shift|knockout]
        [--cells-per-condition 100] [--steps 3000] [--condition-batch auto] [--draws 200]
        [--seed 0] [--size-factors true|total] [--guide auto] [--chunk-size 100]
        [--particles 1] [--save effects.npz]

The screen is linear (``causalcell.datasets.simulate_screen``): every gene perturbed alone,
``cells_per_condition`` cells in each of the ``genes + 1`` conditions, no doubles, so every
direct effect ``W_ij = A_ij / (-A_ii)`` is identified. Rows of the table:

- ``lcd``: ``LCD.fit`` on every gene with no latent programs (``modelled_genes="all"``,
  ``programs=0``; the default for a screen that perturbs every gene, stated so that CLIPR sees
  the whole drift, not a Schur complement through programs), then ``LCD.effects``: CLIPR on
  ``--draws`` posterior draws of the drift. ``seconds`` is fit plus effects.
- ``closed form (log1p)``: :func:`causalcell.clipr.direct_effects` of the observed responses
  ``R[:, j] = mu_j - mu_control``, pseudobulk means of log1p-normalised expression
  (:func:`causalcell.evaluation.observed_expression`); the point estimate gives the ``|W|``
  columns and sign accuracy. The closed form has no posterior, so its sign probabilities and
  90% intervals come from ``--draws`` bootstrap resamples of the cells within each condition
  (:func:`causalcell.clipr.posterior_direct_effects` of the resampled responses): they measure
  sampling noise only, not the bias of reading latent means off log1p counts.
- ``closed form (log rate)``: the same on ``log`` of each condition's mean of
  ``counts / size_factors``. Under a shift the latent covariance is unchanged, so differences
  of log mean rates are exactly the latent mean shifts (lognormal rates) up to sampling noise,
  where log1p is only close to them for well-expressed genes.
- ``random``: a random ranking (AUPRC = edge density, orientation 0.5).

Columns: AUPRC of the true graph by ``|W|`` and by sign probability, orientation accuracy of
the one-way true edges by both, sign accuracy of the mean on true edges, coverage and mean
width of the 90% intervals on true edges and on true zeros (off-diagonal), the least-squares
slope of the point estimates on the true effects over true edges (below 1: shrunk towards
zero) and their RMSE there, and seconds. Size
factors are the simulator's true library sizes (``true``) or total counts (``total``), for the
fit and the closed forms alike. The header gives the time per SVI step (median of the chunks
after the first, which compiles) and the peak resident memory of the process.

``--guide`` is ``LCD.fit``'s ``global_guide``. ``"auto"`` takes the full-covariance guide up to
:data:`causalcell.inference.FULL_RANK_LIMIT` global dimensions (about 20 genes) and mean-field
``"normal"`` above, whose intervals ``LCD.fit`` documents as 2-3 times too narrow: at 30 genes
and more the coverage columns measure that guide (the header names the guide that was used);
``"lowrank"`` is the middle way at 100 genes.

``--particles K`` above 1 fits with ``loss=causalcell.inference.LocalImportanceELBO(K)`` (each
cell's term importance-weighted over ``K`` draws of its latents) instead of the ELBO.

``--save FILE`` writes the true effects, the masks of true edges and zeros, LCD's effect draws
and its SVI losses to ``FILE`` (``numpy.savez``), to study which intervals miss.

Orientation: the truth and every ``DirectEffects`` matrix are in drift orientation (row =
target); :mod:`causalcell.metrics` scores graph orientation ``[source, target]``, which
``adjacency_scores`` returns and ``.T`` gives for the means.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from causalcell import clipr, metrics
from causalcell.data import register, to_arrays
from causalcell.datasets import ground_truth, simulate_screen
from causalcell.evaluation import observed_expression
from causalcell.graph import to_adjacency
from causalcell.inference import LocalImportanceELBO
from causalcell.models.lcd import LCD, NOISE_MODELS

COLUMNS = (
    "auprc_abs",
    "auprc_sign",
    "orient_abs",
    "orient_sign",
    "sign",
    "cover_edges",
    "cover_zeros",
    "width_edges",
    "width_zeros",
    "slope_edges",
    "rmse_edges",
    "seconds",
)
#: Mass of the credible (or bootstrap percentile) intervals scored.
PROBABILITY = 0.9


class Truth:
    """True direct effects ``[d, d]`` (drift orientation, row = target, zero diagonal), the true
    adjacency (graph orientation ``[source, target]``) and the masks of true edges and true
    zeros in drift orientation."""

    def __init__(self, adata):
        truth = ground_truth(adata)
        genes = list(adata.var_names)
        drift = np.asarray(truth.drift.matrix())
        self.direct = drift / -np.diag(drift)[:, None]  # drift orientation: row = target
        np.fill_diagonal(self.direct, 0.0)
        self.adjacency = to_adjacency(truth.graph, genes)  # graph orientation: [source, target]
        off_diagonal = ~np.eye(len(genes), dtype=bool)
        self.edges = self.adjacency.T.astype(bool)  # drift orientation, as the effects
        self.zeros = off_diagonal & ~self.edges
        if not np.array_equal(self.edges, (self.direct != 0) & off_diagonal):
            raise AssertionError("the graph's edges are not the nonzero entries of the drift")
        self.density = float(self.adjacency.sum() / off_diagonal.sum())


def score(point: clipr.DirectEffects, draws: clipr.DirectEffects, truth: Truth) -> dict:
    """Recovery scores of a point estimate (``|W|``, sign) and of draws (sign probability and
    intervals; ``draws.mean`` is not used). For LCD both are the same posterior."""
    magnitude = point.adjacency_scores("magnitude")
    sign_probability = draws.adjacency_scores("sign_probability")
    row = {
        "auprc_abs": metrics.auprc(truth.adjacency, magnitude),
        "auprc_sign": metrics.auprc(truth.adjacency, sign_probability),
        "orient_abs": metrics.orientation_accuracy(truth.adjacency, magnitude),
        "orient_sign": metrics.orientation_accuracy(truth.adjacency, sign_probability),
        "sign": metrics.sign_accuracy(truth.direct.T, point.mean.T),
    }
    for name, mask in (("edges", truth.edges), ("zeros", truth.zeros)):
        lower, upper = draws.lower[mask], draws.upper[mask]
        row[f"cover_{name}"] = metrics.interval_coverage(truth.direct[mask], lower, upper)
        row[f"width_{name}"] = float(np.mean(upper - lower))
    # Shrinkage and error of the point estimate on true edges: the least-squares slope of the
    # estimates on the true effects (1 unbiased, below 1 shrunk towards zero) and the RMSE.
    estimate, true = point.mean[truth.edges], truth.direct[truth.edges]
    row["slope_edges"] = float(estimate @ true / (true @ true))
    row["rmse_edges"] = float(np.sqrt(np.mean((estimate - true) ** 2)))
    return row


def condition_means(values, labels, conditions, draws: int, seed: int):
    """Mean of ``values`` [cells, d] per condition ``[conditions, d]``, and ``draws`` bootstrap
    means ``[draws, conditions, d]`` (cells resampled with replacement within each condition)."""
    rng = np.random.default_rng(seed)
    means, resampled = [], []
    for condition in conditions:
        block = values[labels == condition]
        means.append(block.mean(axis=0))
        index = rng.integers(0, block.shape[0], size=(draws, block.shape[0]))
        resampled.append(block[index].mean(axis=1))
    return np.stack(means), np.stack(resampled, axis=1)


def closed_form(values, labels, genes, draws: int, seed: int, truth: Truth, transform) -> dict:
    """Closed-form CLIPR of the responses ``transform(mu_gene) - transform(mu_control)`` of the
    condition means of ``values``: the point estimate, and bootstrap draws for sign probability
    and intervals."""
    started = time.perf_counter()
    means, resampled = condition_means(values, labels, ["control", *genes], draws, seed)
    means, resampled = transform(means), transform(resampled)
    point = clipr.direct_effects((means[1:] - means[0]).T, genes=genes)
    responses = np.swapaxes(resampled[:, 1:] - resampled[:, :1], 1, 2)  # [draws, genes, targets]
    bootstrap = clipr.posterior_direct_effects(responses, genes=genes, probability=PROBABILITY)
    row = score(point, bootstrap, truth)
    row["seconds"] = time.perf_counter() - started
    return row


def log_rate(means):
    """Log of mean rates; 1e-6 (as ``LCD.fit``'s starting values) keeps a condition whose
    resample has no count of a gene finite (rates of simulated genes are above ~1e-4)."""
    return np.log(means + 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=107)
    parser.add_argument("--intervention", choices=("shift", "knockout"), default="shift")
    parser.add_argument("--cells-per-condition", type=int, default=100)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--condition-batch", default="auto", help="auto, none or a number")
    parser.add_argument("--draws", type=int, default=200, help="posterior and bootstrap draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size-factors", choices=("true", "total"), default="true")
    parser.add_argument(
        "--guide", choices=("auto", "normal", "lowrank", "full", "kronecker"), default="auto"
    )
    parser.add_argument("--chunk-size", type=int, default=100, help="SVI steps per chunk")
    parser.add_argument("--particles", type=int, default=1, help="latent draws per cell")
    parser.add_argument("--noise", choices=tuple(NOISE_MODELS), default="negative_binomial")
    parser.add_argument(
        "--save", default=None, help="write the truth, effect draws and losses (.npz)"
    )
    arguments = parser.parse_args()
    loss = {} if arguments.particles == 1 else {"loss": LocalImportanceELBO(arguments.particles)}
    condition_batch = arguments.condition_batch
    if condition_batch not in ("auto", "none"):
        condition_batch = int(condition_batch)
    conditions = arguments.genes + 1
    adata = simulate_screen(
        num_genes=arguments.genes,
        num_cells=arguments.cells_per_condition * conditions,
        perturbed_genes=arguments.genes,
        double_perturbations=0,
        intervention=arguments.intervention,
        control_fraction=1.0 / conditions,
        noise=arguments.noise,
        key=arguments.seed,
    )
    truth = Truth(adata)
    genes = list(adata.var_names)
    size_factor_key = "size_factor" if arguments.size_factors == "true" else None

    started = time.perf_counter()
    model = LCD.fit(
        adata,
        intervention=arguments.intervention,
        size_factor_key=size_factor_key,
        num_steps=arguments.steps,
        condition_batch=None if condition_batch == "none" else condition_batch,
        global_guide=arguments.guide,
        modelled_genes="all",
        programs=0,
        chunk_size=arguments.chunk_size,
        noise=arguments.noise,
        key=arguments.seed,
        progress_bar=False,
        **loss,
    )
    fit_seconds = time.perf_counter() - started
    effects = model.effects(num_samples=arguments.draws, key=arguments.seed)
    off_diagonal = truth.edges | truth.zeros
    if list(model.modelled_genes) != genes or not effects.identified[off_diagonal].all():
        raise AssertionError("LCD's effects are not over every gene, all identified")
    rows = {"lcd": score(effects, effects, truth)}
    rows["lcd"]["seconds"] = time.perf_counter() - started
    if arguments.save:
        np.savez(
            arguments.save,
            truth=truth.direct,
            edges=truth.edges,
            zeros=truth.zeros,
            draws=np.asarray(effects.draws),
            losses=np.asarray(model.posterior.losses),
        )

    count_data = arguments.noise != "gaussian"
    registry = register(adata, size_factor_key=size_factor_key, count_data=count_data)
    expression, labels = observed_expression(adata, registry)
    arrays = to_arrays(adata, registry)
    closed_forms = [("closed form (log1p)", expression, lambda means: means)]
    if arguments.noise == "gaussian":  # the values are already on the latent's scale
        closed_forms = [("closed form (values)", expression, lambda means: means)]
    else:
        rates = arrays.counts / arrays.size_factors[:, None]
        closed_forms.append(("closed form (log rate)", rates, log_rate))
    for name, values, transform in closed_forms:
        rows[name] = closed_form(
            values, labels, genes, arguments.draws, arguments.seed, truth, transform
        )
    rows["random"] = {"auprc_abs": truth.density, "auprc_sign": truth.density}
    rows["random"].update(orient_abs=0.5, orient_sign=0.5)

    chunks = np.asarray(model.posterior.config["chunk_seconds"])
    chunk_size = model.posterior.config["chunk_size"]
    step_seconds = float(np.median(chunks[1:]) / chunk_size) if chunks.size > 1 else np.nan
    global_guide = type(model.posterior.guide.global_guide).__name__  # what "auto" chose
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"# {arguments.genes} genes all perturbed ({arguments.intervention}), {adata.n_obs} "
        f"cells, {int(truth.adjacency.sum())} true edges (density {truth.density:.3f}); "
        f"{arguments.noise} noise, {arguments.size_factors} size factors; seed {arguments.seed}"
    )
    print(
        f"# LCD: {arguments.steps} steps, guide {arguments.guide!r} ({global_guide}), "
        f"{arguments.particles} particle(s) per cell, "
        f"condition_batch="
        f"{model.posterior.config['strata_per_batch']}, {step_seconds:.3f} s/step after "
        f"compilation (first chunk {chunks[0]:.0f} s), fit {fit_seconds:.0f} s; "
        f"{arguments.draws} draws; peak memory {peak:.0f} MB"
    )
    print(f"| method | {' | '.join(COLUMNS)} |")
    print("|---|" + "---:|" * len(COLUMNS))
    for method, row in rows.items():
        cells = [f"{row[name]:.3f}" if name in row else "" for name in COLUMNS]
        print(f"| {method} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
