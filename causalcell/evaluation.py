"""Held-out evaluation of perturbation predictions: the table every benchmark and the demo print.

For each held-out condition ``p`` the observed cells are compared with a model's prediction:

- ``pearson_delta_top20``: Pearson correlation of predicted and observed pseudobulk changes from
  control on the 20 most differentially expressed genes of ``p`` (Welch t, see
  :func:`causalcell.metrics.top_de_genes`); a prediction of no change at all has no
  correlation and is scored 0, the value of an uninformative predictor;
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
from causalcell.models.baselines import Additive, LinearIndicators, NoChange, shift_control_cells

__all__ = [
    "METRICS",
    "HeldOutSplit",
    "baseline_predictions",
    "evaluate_predictions",
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
    """Log1p-normalised expression ``[cells, genes]`` and canonical condition labels of a screen.

    ``registry`` defaults to :func:`causalcell.data.register` with its default keys.
    """
    from causalcell.data import register, to_arrays
    from causalcell.preprocessing import normalize_log1p

    registry = register(adata) if registry is None else registry
    arrays = to_arrays(adata, registry)
    labels = np.asarray(registry.conditions)[arrays.condition_index]
    return normalize_log1p(arrays.counts, arrays.size_factors), labels


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
    # What is observed does not depend on the model: cells and DE genes once per condition.
    observed_cells, top_genes = [], []
    for condition in held_out:
        observed = expression[labels == condition]
        if observed.shape[0] == 0:
            raise ValueError(f"No observed cells of held-out condition {condition!r}.")
        observed_cells.append(observed)
        top_genes.append(metrics.top_de_genes(observed, control_cells, k=TOP_GENES))
    rows = []
    for model, means in predicted_means.items():
        means = np.asarray(means)
        scores = {name: [] for name in METRICS}
        for index, condition in enumerate(held_out):
            observed = observed_cells[index]
            observed_mean = observed_bulk.mean_of(condition)
            genes = top_genes[index]
            no_change = np.ptp(means[index][genes] - control_mean[genes]) == 0
            scores["pearson_delta_top20"].append(
                0.0
                if no_change
                else metrics.pearson_delta(means[index], observed_mean, control_mean, genes=genes)
            )
            scores["pseudobulk_l2"].append(metrics.pseudobulk_l2(means[index], observed_mean))
            if model in predicted_cells:
                cells = predicted_cells[model][index]
            else:
                cells = shift_control_cells(control_cells, control_mean, means[index])
            scores["energy_distance"].append(metrics.energy_distance(cells, observed))
        rows += [(model, name, float(np.nanmean(values))) for name, values in scores.items()]
    return pd.DataFrame(rows, columns=["model", "metric", "value"])
