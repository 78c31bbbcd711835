"""Held-out evaluation of perturbation predictions: the table every benchmark and the demo print.

For each held-out condition ``p`` the observed cells are compared with a model's prediction:

- ``pearson_delta_top20``: Pearson correlation of predicted and observed pseudobulk changes from
  control on the 20 most differentially expressed genes of ``p`` (Welch t, see
  :func:`causalcell.metrics.top_de_genes`); where the correlation is undefined (a predicted, or
  observed, change that is the same on all those genes, e.g. no change at all) it is scored 0,
  the value of an uninformative predictor;
- ``pseudobulk_l2``: Euclidean norm of the difference of pseudobulk means over all genes;
- ``energy_distance``: between predicted and observed cells (mean-only models are turned into
  cells with :func:`causalcell.models.baselines.shift_control_cells`).

Each metric is averaged over the held-out conditions. All expression is log1p-normalised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from causalcell import metrics
from causalcell.data import register, to_arrays
from causalcell.models.baselines import Additive, LinearIndicators, NoChange, shift_control_cells
from causalcell.preprocessing import normalize_log1p

__all__ = [
    "METRICS",
    "HeldOutSplit",
    "baseline_predictions",
    "evaluate_predictions",
    "generated_predictions",
    "observed_expression",
    "split_combinations",
]

#: Metric names, in table order.
METRICS = ("pearson_delta_top20", "pseudobulk_l2", "energy_distance")
#: Number of top differentially expressed genes for ``pearson_delta_top20`` (GEARS convention).
TOP_GENES = 20


class HeldOutSplit(NamedTuple):
    """Conditions used for training and those held out for evaluation."""

    train: tuple[str, ...]
    held_out: tuple[str, ...]


def observed_expression(adata, registry=None) -> tuple[np.ndarray, np.ndarray]:
    """Expression ``[cells, genes]`` on the scale cells are compared on, and canonical
    condition labels of a screen: log1p-normalised counts, or for continuous data
    (``registry.count_data`` False) the values as registered.

    ``registry`` defaults to :func:`causalcell.data.register` with its default keys.
    """
    registry = register(adata) if registry is None else registry
    arrays = to_arrays(adata, registry)
    labels = np.asarray(registry.conditions)[arrays.condition_index]
    if not registry.count_data:
        return np.asarray(arrays.counts, np.float32), labels
    return normalize_log1p(arrays.counts, arrays.size_factors), labels


def generated_predictions(
    generated, conditions: Sequence[str], *, layer: str = "expression", key: str = "perturbation"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pseudobulk means ``[len(conditions), genes]`` and cells of a generative model's output.

    ``generated`` is an AnnData of generated cells (e.g. :meth:`causalcell.models.lcd.LCD.predict`)
    with each cell's condition in ``.obs[key]`` and its expression, on the scale of
    :func:`observed_expression`, in ``.layers[layer]`` (``"expression"``: log1p-normalised
    counts, or continuous values); the result plugs into :func:`evaluate_predictions` as one
    model's ``predicted_means`` and ``predicted_cells``.
    """
    names = generated.obs[key].astype(str).to_numpy()
    expression = np.asarray(generated.layers[layer])
    cells = []
    for condition in conditions:
        block = expression[names == condition]
        if block.shape[0] == 0:
            raise ValueError(f"No generated cells of condition {condition!r} in .obs[{key!r}].")
        cells.append(block)
    return np.stack([block.mean(axis=0) for block in cells]), cells


def split_combinations(
    conditions: Sequence[str],
    *,
    fraction: float = 0.5,
    seed: int = 0,
    separator: str = "+",
) -> HeldOutSplit:
    """Hold out a random ``fraction`` of the combinations (labels containing ``separator``).

    Singles and the control always stay in training, so every held-out combination is made of
    targets that were seen alone: the "unseen combination" task.

    Raises
    ------
    ValueError
        If there are no combinations to hold out.
    """
    combinations = [label for label in conditions if separator in label]
    if not combinations:
        raise ValueError("No combination conditions (labels with the separator) to hold out.")
    count = max(1, round(fraction * len(combinations)))
    chosen = np.random.default_rng(seed).choice(len(combinations), size=count, replace=False)
    held_out = tuple(combinations[index] for index in sorted(chosen))
    train = tuple(label for label in conditions if label not in held_out)
    return HeldOutSplit(train, held_out)


def baseline_predictions(
    expression: np.ndarray,
    labels: Sequence[str],
    split: HeldOutSplit,
    *,
    control: str = "control",
) -> dict[str, np.ndarray]:
    """Predicted pseudobulk ``[held_out, genes]`` of each baseline fitted on the training split."""
    labels = np.asarray(labels)
    training = np.isin(labels, split.train)
    bulk = metrics.pseudobulk(expression[training], labels[training])
    models = (NoChange, Additive, LinearIndicators)
    fitted = [model.fit(bulk.means, bulk.conditions, control=control) for model in models]
    return {model.name: model.predict(list(split.held_out)) for model in fitted}


def evaluate_predictions(
    expression: np.ndarray,
    labels: Sequence[str],
    held_out: Sequence[str],
    predicted_means: Mapping[str, np.ndarray],
    predicted_cells: Mapping[str, Sequence[np.ndarray]] | None = None,
    *,
    control: str = "control",
) -> pd.DataFrame:
    """Score predictions of held-out conditions against the observed cells.

    Parameters
    ----------
    expression
        Observed log1p-normalised expression ``[cells, genes]``.
    labels
        Condition label of each cell.
    held_out
        The conditions to score.
    predicted_means
        Model name -> predicted pseudobulk ``[len(held_out), genes]``.
    predicted_cells
        Model name -> one ``[cells, genes]`` array per held-out condition, for models that
        generate cells. Models absent here are scored by shifting the control cells.
    control
        Control label.

    Returns
    -------
    pandas.DataFrame
        Long table with columns ``model, metric, value`` (metrics averaged over conditions).
    """
    labels = np.asarray(labels)
    control_cells = expression[labels == control]
    # The same computation the baselines' training pseudobulk uses, so that a prediction of
    # "no change" is exactly the control mean here too.
    observed_bulk = metrics.pseudobulk(expression, labels)
    control_mean = observed_bulk.mean_of(control)
    predicted_cells = dict(predicted_cells or {})
    # What is observed does not depend on the model: cells, DE genes and the within-sample term
    # of the energy distance once per condition. Control cells shifted rigidly keep their
    # pairwise distances, so the control's within term serves every mean-only model.
    observed_cells, top_genes, observed_within = [], [], []
    for condition in held_out:
        observed = expression[labels == condition]
        if observed.shape[0] == 0:
            raise ValueError(f"No observed cells of held-out condition {condition!r}.")
        observed_cells.append(observed)
        top_genes.append(metrics.top_de_genes(observed, control_cells, k=TOP_GENES))
        observed_within.append(metrics.mean_within_distance(observed))
    control_within = metrics.mean_within_distance(control_cells)
    rows = []
    for model, means in predicted_means.items():
        means = np.asarray(means)
        scores = {name: [] for name in METRICS}
        for index, condition in enumerate(held_out):
            observed_mean = observed_bulk.mean_of(condition)
            correlation = metrics.pearson_delta(
                means[index], observed_mean, control_mean, genes=top_genes[index]
            )
            scores["pearson_delta_top20"].append(0.0 if np.isnan(correlation) else correlation)
            scores["pseudobulk_l2"].append(metrics.pseudobulk_l2(means[index], observed_mean))
            if model in predicted_cells:
                cells, cells_within = predicted_cells[model][index], None
            else:
                cells = shift_control_cells(control_cells, control_mean, means[index])
                cells_within = control_within
            energy = metrics.energy_distance(
                cells, observed_cells[index], within_x=cells_within, within_y=observed_within[index]
            )
            scores["energy_distance"].append(energy)
        rows += [(model, name, float(np.mean(values))) for name, values in scores.items()]
    return pd.DataFrame(rows, columns=["model", "metric", "value"])
