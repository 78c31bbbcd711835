"""``causalcell fit | predict | effects | counterfactual | evaluate``: LCD on a user's ``.h5ad``.

Every command checks its paths and arguments before reading data or fitting (a run must not
fail after an hour on an output path it could have checked first), writes files that scanpy
and pandas open (``.h5ad``, ``.csv``, ``.graphml``), and reports a user's mistake as one line
(see :func:`causalcell.cli.main`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anndata
import networkx as nx
import numpy as np
import pandas as pd

from causalcell import evaluation
from causalcell.data import FORMATS, GUIDES, read_screen, register
from causalcell.models.lcd import LCD, NOISE_MODELS

__all__ = ["UsageError", "add_model_commands", "output_file"]

PERTURBATION = "perturbation"  # the default .obs column of labels


class UsageError(ValueError):
    """A bad argument or path: the command stops with this message and exit code 2."""


def input_file(path, what: str) -> Path:
    """``path`` if it is an existing file, else a :class:`UsageError` naming ``what``."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"the {what} {path} does not exist.")
    if not path.is_file():
        raise UsageError(f"the {what} {path} is a folder; give a file.")
    return path


def output_file(path, suffixes: tuple[str, ...]) -> Path:
    """``path`` if a file with one of ``suffixes`` can be written there (its folder is created),
    else a :class:`UsageError`; checked before any work."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"{path}: the output file must end in {' or '.join(suffixes)}.")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the path of a file to write.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the folder of {path}: {error.strerror}.") from None
    if not os.access(path.parent, os.W_OK):
        raise UsageError(f"cannot write in {path.parent} (permission denied).")
    return path


def read_h5ad(path, what: str, arguments=None) -> anndata.AnnData:
    """The AnnData at ``path`` (checked by :func:`input_file`), or a :class:`UsageError`; with
    ``arguments.format``, its labels mapped by :func:`causalcell.data.read_screen` (reported)
    into ``obs["perturbation"]``, and ``arguments`` pointed there."""
    path = input_file(path, what)
    try:
        adata = anndata.read_h5ad(path)
    except Exception as error:  # h5py and anndata raise many kinds for a file that is not one
        raise UsageError(
            f"{path} is not a readable .h5ad file ({type(error).__name__}: {error})."
        ) from None
    if arguments is None or arguments.format is None:
        return adata
    key = arguments.perturbation_key
    adata = read_screen(
        adata,
        arguments.format,
        perturbation_key=None if key == PERTURBATION else key,
        guides=arguments.guides,
    )
    arguments.perturbation_key, arguments.control = PERTURBATION, "control"
    report = adata.uns["read_screen"]
    kinds = pd.Series(report["labels"]["read_as"]).value_counts()
    read = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    print(f"Read the labels of obs[{report['column']!r}] as {report['format']}: {read} label(s).")
    if len(report["unmapped"]):
        print(f"Labels that name no gene, kept as they are: {list(report['unmapped'])[:10]}.")
    return adata


def model_folder(path) -> Path:
    """``path`` if it exists (what is in it is checked by :meth:`LCD.load`)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"the model folder {path} does not exist; write one with causalcell fit.")
    return path


def _modelled_genes(value: str | None):
    """``--modelled-genes``: none, ``all``, a number of variable genes, or gene names."""
    if value is None or value == "all":
        return value
    if value.isdigit():
        return int(value)
    return [name.strip() for name in value.split(",") if name.strip()]


def perturbation_table(arguments):
    """``--perturbation-targets``: the table read from a ``.csv``/``.tsv`` file (columns
    ``perturbation`` and ``target``, one row per pair), an ``.obs`` column's name (any other
    value), ``read_screen``'s ``perturbation_target`` column with ``--guides perturbations``,
    or None."""
    value = arguments.perturbation_targets
    if value is None and arguments.format is not None and arguments.guides == "perturbations":
        return "perturbation_target"  # read_screen's column of each cell's targets
    if value is None or Path(value).suffix not in (".csv", ".tsv"):
        return value
    path = input_file(value, "perturbation table")
    table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str)
    if not {"perturbation", "target"} <= set(table.columns):
        raise UsageError(
            f"{path} needs the columns 'perturbation' and 'target' (one row per pair); it has "
            f"{list(table.columns)}."
        )
    return table


def _fit(arguments) -> int:
    started = time.perf_counter()
    screen = input_file(arguments.screen, "screen")
    output = LCD.check_folder(arguments.output)
    if arguments.checkpoint is not None:
        output_file(arguments.checkpoint, (".npz",))
    table = perturbation_table(arguments)
    adata = read_h5ad(screen, "screen", arguments)
    print(f"Read {adata.n_obs} cells x {adata.n_vars} genes from {screen}.")
    model = LCD.fit(
        adata,
        perturbation_key=arguments.perturbation_key,
        control=arguments.control,
        layer=arguments.layer,
        size_factor_key=arguments.size_factor_key,
        intervention=arguments.intervention,
        num_steps=arguments.steps,
        batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        key=arguments.key,
        progress_bar=not arguments.quiet,
        global_guide=arguments.global_guide,
        modelled_genes=_modelled_genes(arguments.modelled_genes),
        programs=arguments.programs,
        drift=arguments.drift,
        noise=arguments.noise,
        checkpoint=arguments.checkpoint,
        perturbation_targets=table,
    )
    model.save(output)
    losses = np.asarray(model.posterior.losses)
    print(
        f"Fitted LCD ({model.drift_kind} drift, {model.intervention}) on "
        f"{len(model.registry.conditions)} conditions, {len(model.modelled_genes)} modelled "
        f"genes + {model.space.programs} programs: {losses.size} steps, final loss "
        f"{losses[-100:].mean():.4g}."
    )
    print(f"Wrote the model to {output} in {time.perf_counter() - started:.1f} s.")
    return 0


def _predict(arguments) -> int:
    output = output_file(arguments.output, (".h5ad",))
    model = LCD.load(model_folder(arguments.model))
    predicted = model.predict(
        arguments.perturbations,
        num_cells=arguments.cells,
        key=arguments.key,
        allow_prior_only=arguments.allow_prior_only,
    )
    predicted.write_h5ad(output)
    print(f"Wrote {predicted.n_obs} generated cells x {predicted.n_vars} genes to {output}.")
    return 0


def _effects(arguments) -> int:
    output = output_file(arguments.output, (".csv", ".tsv"))
    graph = None if arguments.graph is None else output_file(arguments.graph, (".graphml",))
    plot = None if arguments.plot is None else output_file(arguments.plot, (".png", ".pdf"))
    model = LCD.load(model_folder(arguments.model))
    effects = model.effects(
        targets=arguments.targets,
        key=arguments.key,
        num_samples=arguments.samples,
        probability=arguments.probability,
    )
    table = effects.table()
    table.to_csv(output, index=False, sep="\t" if output.suffix.lower() == ".tsv" else ",")
    written = [str(output)]
    if graph is not None:
        nx.write_graphml(effects.to_networkx(arguments.threshold), graph)
        written.append(str(graph))
    if plot is not None:
        axes = effects.plot()
        axes.figure.savefig(plot, dpi=150, bbox_inches="tight")
        written.append(str(plot))
    excluding = int(((table["lower"] > 0) | (table["upper"] < 0)).sum())
    print(
        f"{len(table)} direct effects among {len(effects.genes)} genes, "
        f"{int(table['identified'].sum())} identified, {excluding} with a "
        f"{arguments.probability:.0%} interval that excludes zero. Wrote {', '.join(written)}."
    )
    return 0


def _counterfactual(arguments) -> int:
    output = output_file(arguments.output, (".h5ad",))
    model = model_folder(arguments.model)
    cells = read_h5ad(arguments.cells, "cells file")
    worlds = LCD.load(model).counterfactual(
        cells,
        arguments.perturbation,
        num_samples=arguments.samples,
        key=arguments.key,
        coupling=arguments.coupling,
        compose=not arguments.replace,
        probability=arguments.probability,
    )
    worlds.write_h5ad(output)
    print(f"Wrote the factual and counterfactual worlds of {cells.n_obs} cells to {output}.")
    return 0


def _evaluate(arguments) -> int:
    table_path = None if arguments.output is None else output_file(arguments.output, (".csv",))
    screen = read_h5ad(arguments.screen, "screen", arguments)
    predicted = read_h5ad(arguments.predicted, "predictions file")
    registry = register(
        screen,
        perturbation_key=arguments.perturbation_key,
        control=arguments.control,
        perturbation_targets=perturbation_table(arguments),
    )
    if list(predicted.var_names) != list(registry.genes):
        raise UsageError(
            f"{arguments.predicted} does not have the screen's genes in its order; predict with "
            "a model fitted on this screen."
        )
    if "perturbation" not in predicted.obs or "expression" not in predicted.layers:
        raise UsageError(
            f"{arguments.predicted} has no obs['perturbation'] or layers['expression']: give "
            "the output of causalcell predict."
        )
    requested = list(dict.fromkeys(predicted.obs["perturbation"].astype(str)))
    unknown = [label for label in requested if label not in registry.conditions]
    if unknown:
        raise UsageError(
            f"the screen has no observed cells of {unknown}; evaluate predictions of conditions "
            "that the screen observed (and the model did not see)."
        )
    held_out = tuple(label for label in requested if label != registry.control[0])
    train = tuple(label for label in registry.conditions if label not in held_out)
    expression, labels = evaluation.observed_expression(screen, registry)
    split = evaluation.HeldOutSplit(train, held_out)
    means = evaluation.baseline_predictions(expression, labels, split, control=registry.control[0])
    model_means, model_cells = evaluation.generated_predictions(predicted, held_out)
    means = {"model": model_means, **means}
    table = evaluation.evaluate_predictions(
        expression, labels, held_out, means, {"model": model_cells}, control=registry.control[0]
    )
    wide = table.pivot(index="model", columns="metric", values="value")
    wide = wide.loc[list(means), list(evaluation.METRICS)]
    print(
        f"{len(held_out)} conditions scored against the baselines fitted on the screen's other "
        f"{len(train)} (mean over conditions; Pearson: higher is better, others: lower):"
    )
    print(wide.to_string(float_format=lambda value: f"{value:.4f}"))
    if table_path is not None:
        table.to_csv(table_path, index=False)
        print(f"Wrote {table_path}.")
    return 0


def _screen_keys(parser) -> None:
    parser.add_argument(
        "--perturbation-key", default=PERTURBATION, help="obs column of perturbation labels"
    )
    parser.add_argument("--control", default="control", help="label of control cells")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="map another tool's labels first (scPerturb 'A_B', GEARS 'A+ctrl', guides "
        "'A_2', 'non-targeting'): causalcell.data.read_screen",
    )
    parser.add_argument(
        "--guides",
        choices=GUIDES,
        default="genes",
        help="with --format: a guide-level label ('GATA1_2') becomes its gene, or stays a "
        "perturbation of its own, learned around its gene's",
    )
    parser.add_argument(
        "--perturbation-targets",
        help="target gene(s) of perturbations that are not genes (guides, reagents, drugs): "
        "a .csv or .tsv with columns perturbation,target (and optionally kind, where it is not "
        "--intervention's), or an obs column of each cell's target(s)",
    )


def _draws(parser, samples: int) -> None:
    parser.add_argument("--samples", type=int, default=samples, help="posterior draws")
    parser.add_argument("--probability", type=float, default=0.9, help="interval mass")


def _key(parser) -> None:
    parser.add_argument("--key", type=int, default=0, help="random seed")


def add_model_commands(commands) -> None:
    """The ``fit``, ``predict``, ``effects``, ``counterfactual`` and ``evaluate`` subcommands."""
    fit = commands.add_parser("fit", help="fit LCD to a screen (.h5ad of counts) and save it")
    fit.add_argument("screen", help=".h5ad of counts, perturbation labels in obs")
    fit.add_argument("--output", required=True, help="folder to save the fitted model in")
    _screen_keys(fit)
    fit.add_argument("--layer", help="layer of counts (default: X)")
    fit.add_argument("--size-factor-key", help="obs column of size factors (default: totals)")
    fit.add_argument("--intervention", choices=("shift", "knockdown", "knockout"), default="shift")
    fit.add_argument("--drift", choices=("linear", "neural"), default="linear")
    fit.add_argument(
        "--noise",
        choices=tuple(NOISE_MODELS),
        default="negative_binomial",
        help="observation model; gaussian for continuous data on a log scale (e.g. cytometry)",
    )
    fit.add_argument("--steps", type=int, default=3000, help="SVI steps")
    fit.add_argument("--batch-size", type=int, default=512, help="cells per step")
    fit.add_argument("--learning-rate", type=float, default=0.01)
    fit.add_argument(
        "--global-guide", choices=("auto", "full", "lowrank", "kronecker", "normal"), default="auto"
    )
    fit.add_argument(
        "--modelled-genes",
        help="'all', a number of most variable genes to add, or comma-separated gene names "
        "(default: every gene up to 64, else the perturbed genes)",
    )
    fit.add_argument("--programs", type=int, help="latent programs (default: 0 or 8)")
    fit.add_argument("--checkpoint", help=".npz file to checkpoint to and resume from")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    _key(fit)
    fit.set_defaults(handler=_fit)

    predict = commands.add_parser("predict", help="generate cells under perturbations")
    predict.add_argument("model", help="folder written by causalcell fit")
    predict.add_argument("perturbations", nargs="+", help="e.g. GATA1 'GATA1+CEBPA' control")
    predict.add_argument("--cells", type=int, default=500, help="cells per perturbation")
    predict.add_argument("--output", required=True, help=".h5ad file to write")
    predict.add_argument(
        "--allow-prior-only", action="store_true", help="allow targets never perturbed"
    )
    _key(predict)
    predict.set_defaults(handler=_predict)

    effects = commands.add_parser("effects", help="direct gene-to-gene effects (CLIPR)")
    effects.add_argument("model", help="folder written by causalcell fit")
    effects.add_argument("--output", required=True, help=".csv or .tsv table to write")
    effects.add_argument("--graph", help=".graphml of the effects whose interval excludes 0")
    effects.add_argument("--plot", help=".png or .pdf heatmap")
    effects.add_argument("--targets", nargs="+", help="genes perturbed in silico")
    _draws(effects, samples=200)
    effects.add_argument("--threshold", type=float, default=0.0, help="|effect| for --graph")
    _key(effects)
    effects.set_defaults(handler=_effects)

    counterfactual = commands.add_parser(
        "counterfactual", help="these cells, had a perturbation been applied"
    )
    counterfactual.add_argument("model", help="folder written by causalcell fit")
    counterfactual.add_argument("cells", help=".h5ad of observed cells (the training genes)")
    counterfactual.add_argument("perturbation", help="e.g. GATA1 or 'GATA1+CEBPA'")
    counterfactual.add_argument("--output", required=True, help=".h5ad file to write")
    _draws(counterfactual, samples=100)
    counterfactual.add_argument("--coupling", choices=("quantile", "resample"), default="quantile")
    counterfactual.add_argument(
        "--replace", action="store_true", help="instead of the cells' own perturbations"
    )
    _key(counterfactual)
    counterfactual.set_defaults(handler=_counterfactual)

    evaluate = commands.add_parser(
        "evaluate", help="score predicted cells against observed ones and the baselines"
    )
    evaluate.add_argument("screen", help=".h5ad with the observed cells of every condition")
    evaluate.add_argument("predicted", help=".h5ad written by causalcell predict")
    _screen_keys(evaluate)
    evaluate.add_argument("--output", help=".csv of the table (long format)")
    evaluate.set_defaults(handler=_evaluate)
