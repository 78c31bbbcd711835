"""Baselines that predict the pseudobulk of held-out conditions from training pseudobulk.

Every benchmark reports these beside the causal models (DESIGN 3.3). Each baseline is fitted from
the mean log1p-normalised expression of the training conditions (e.g. ``Pseudobulk.means`` and
``Pseudobulk.conditions`` from :func:`causalcell.metrics.pseudobulk`) and predicts means for any
list of condition labels, singles or combinations. Labels are parsed with
:func:`causalcell.perturbations.parse_perturbation`, so ``"B+A"`` and ``"A+B"`` are the same.

- :class:`NoChange`: the control mean for every condition.
- :class:`Additive`: ``y_ctrl + sum_g (y_g - y_ctrl)`` over the members' training singles.
- :class:`LinearIndicators`: ``y_ctrl + sum_g beta_g 1[g in p]`` with ridge-fitted ``beta``.

:func:`shift_control_cells` turns a predicted mean into predicted cells, so that these
mean-only baselines can also be scored with distributional metrics (energy distance, MMD).

References
----------
Ahlmann-Eltze, Huber and Anders (2024). Deep learning-based predictions of gene perturbation
effects do not yet outperform simple linear baselines. bioRxiv 2024.09.16.613342.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from causalcell.perturbations import parse_perturbation

__all__ = ["Additive", "LinearIndicators", "NoChange", "shift_control_cells"]

Missing = Literal["raise", "control"]


def _parse_training(
    means, conditions: Sequence[str], control: str, separator: str
) -> tuple[np.ndarray, list[tuple[str, ...]], np.ndarray]:
    """Validate training pseudobulk; return float64 means, parsed targets and the control mean."""
    if isinstance(conditions, str):
        raise TypeError("conditions must be a sequence of labels, not a single string.")
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 2:
        raise ValueError(f"means must be 2-D [conditions, genes], got shape {means.shape}.")
    if len(conditions) != means.shape[0]:
        raise ValueError(
            f"Got {len(conditions)} conditions for means of shape {means.shape}: need one "
            "condition label per row."
        )
    if not np.isfinite(means).all():
        raise ValueError("means contains NaN or infinite values.")
    targets = [
        parse_perturbation(label, control=control, separator=separator) for label in conditions
    ]
    seen: dict[tuple[str, ...], str] = {}
    for label, members in zip(conditions, targets, strict=True):
        if members in seen:
            raise ValueError(
                f"Training conditions {seen[members]!r} and {label!r} name the same set of "
                "targets; pool their cells into one pseudobulk first."
            )
        seen[members] = label
    if () not in seen:
        raise ValueError(
            f"The control condition {control!r} is not among the training conditions "
            f"{list(conditions)!r}; every baseline needs the control mean."
        )
    return means, targets, means[targets.index(())]


def _parse_queries(
    conditions: Sequence[str], control: str, separator: str
) -> list[tuple[str, ...]]:
    if isinstance(conditions, str):
        raise TypeError(
            f"predict takes a sequence of labels; wrap a single label in a list: [{conditions!r}]."
        )
    return [parse_perturbation(label, control=control, separator=separator) for label in conditions]


def _indicators(
    targets: list[tuple[str, ...]], names: tuple[str, ...], missing: Missing, known: str
) -> np.ndarray:
    """Membership matrix ``[conditions, len(names)]``; unknown members raise or are dropped."""
    column = {name: index for index, name in enumerate(names)}
    matrix = np.zeros((len(targets), len(names)))
    for row, members in enumerate(targets):
        unknown = [gene for gene in members if gene not in column]
        if unknown and missing == "raise":
            raise ValueError(
                f"No training {known} for target(s) {unknown!r} of condition "
                f"{'+'.join(members)!r}. Add them to the training data, or pass "
                "missing='control' to treat their effect as zero."
            )
        matrix[row, [column[gene] for gene in members if gene in column]] = 1.0
    return matrix


def _check_missing(missing: str) -> None:
    if missing not in ("raise", "control"):
        raise ValueError(f"missing must be 'raise' or 'control', got {missing!r}.")


@dataclass(frozen=True, eq=False)
class NoChange:
    """Predict the control mean for every condition.

    Examples
    --------
    >>> model = NoChange.fit(np.array([[1.0, 2.0], [3.0, 5.0]]), ["control", "A"])
    >>> model.predict(["A", "A+B"])
    array([[1., 2.],
           [1., 2.]])
    """

    name: ClassVar[str] = "no_change"
    control_mean: np.ndarray
    control: str = "control"
    separator: str = "+"

    @classmethod
    def fit(
        cls, means, conditions: Sequence[str], *, control: str = "control", separator: str = "+"
    ) -> NoChange:
        """Fit from training pseudobulk ``means [conditions, genes]`` (control must be present).

        Raises
        ------
        ValueError
            If the control condition is missing, shapes disagree or two labels name the same
            targets.
        """
        _, _, control_mean = _parse_training(means, conditions, control, separator)
        return cls(control_mean=control_mean, control=control, separator=separator)

    def predict(self, conditions: Sequence[str]) -> np.ndarray:
        """Return predicted means ``[len(conditions), genes]``."""
        targets = _parse_queries(conditions, self.control, self.separator)
        return np.tile(self.control_mean, (len(targets), 1))


@dataclass(frozen=True, eq=False)
class Additive:
    """Add the members' single-perturbation effects: ``y_ctrl + sum_g (y_g - y_ctrl)``.

    Computed as ``sum_g y_g - (|p| - 1) y_ctrl``, so a double is exactly ``y_A + y_B - y_ctrl``,
    a single is exactly its training mean and the control is the control mean. The prediction
    uses only the training singles and control: a combination seen in training is still
    predicted additively (its own mean is not returned), so training and held-out combinations
    are treated alike.

    Attributes
    ----------
    control_mean
        ``[genes]``.
    targets
        Targets with a training single, sorted.
    single_means
        Their training means ``[len(targets), genes]``.
    missing
        ``"raise"`` (default): predicting a condition with a member that has no training single
        raises ValueError naming it. ``"control"``: such a member has effect zero.

    Examples
    --------
    >>> means = np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 4.0]])
    >>> model = Additive.fit(means, ["control", "A", "B"])
    >>> model.predict(["B+A"])
    array([[2., 4.]])
    """

    name: ClassVar[str] = "additive"
    control_mean: np.ndarray
    targets: tuple[str, ...]
    single_means: np.ndarray
    missing: Missing = "raise"
    control: str = "control"
    separator: str = "+"

    @classmethod
    def fit(
        cls,
        means,
        conditions: Sequence[str],
        *,
        control: str = "control",
        separator: str = "+",
        missing: Missing = "raise",
    ) -> Additive:
        """Fit from training pseudobulk; combinations among the conditions are ignored.

        Raises
        ------
        ValueError
            If the control condition is missing, shapes disagree, two labels name the same
            targets, or ``missing`` is not ``"raise"``/``"control"``.
        """
        _check_missing(missing)
        means, targets, control_mean = _parse_training(means, conditions, control, separator)
        singles = sorted(
            (members[0], row) for row, members in enumerate(targets) if len(members) == 1
        )
        return cls(
            control_mean=control_mean,
            targets=tuple(gene for gene, _ in singles),
            single_means=means[[row for _, row in singles]],
            missing=missing,
            control=control,
            separator=separator,
        )

    def predict(self, conditions: Sequence[str]) -> np.ndarray:
        """Return predicted means ``[len(conditions), genes]``.

        Raises
        ------
        ValueError
            If a member has no training single and ``missing="raise"``.
        """
        targets = _parse_queries(conditions, self.control, self.separator)
        membership = _indicators(targets, self.targets, self.missing, "single")
        # A member without a single (missing="control") counts as the control mean: effect zero.
        extra_controls = membership.sum(axis=1) - 1.0
        return membership @ self.single_means - extra_controls[:, None] * self.control_mean


@dataclass(frozen=True, eq=False)
class LinearIndicators:
    """Linear model on perturbation indicators: ``y_p = y_ctrl + sum_g beta_g 1[g in p]``.

    ``beta [targets, genes]`` minimises ``sum_p |y_p - y_ctrl - sum_{g in p} beta_g|^2 +
    ridge |beta|^2`` over all training conditions (singles and combinations, each weighted
    equally, whatever its number of cells), for all genes with one linear solve. Targets seen only
    inside combinations get coefficients too. With only singles in training the solution is
    ``beta_g = (y_g - y_ctrl) / (1 + ridge)``: the additive baseline shrunk by ``1 / (1 + ridge)``.

    Attributes
    ----------
    control_mean
        ``[genes]``.
    targets
        Targets appearing in any training condition, sorted.
    coefficients
        ``beta [len(targets), genes]``.
    missing
        As for :class:`Additive`: ``"raise"`` for a target never seen in training, or
        ``"control"`` for effect zero.

    Examples
    --------
    >>> means = np.array([[0.0], [1.0], [2.0], [6.0]])
    >>> model = LinearIndicators.fit(means, ["control", "A", "B", "A+B"], ridge=0.0)
    >>> model.coefficients.round(12)
    array([[2.],
           [3.]])
    """

    name: ClassVar[str] = "linear"
    control_mean: np.ndarray
    targets: tuple[str, ...]
    coefficients: np.ndarray
    missing: Missing = "raise"
    control: str = "control"
    separator: str = "+"

    @classmethod
    def fit(
        cls,
        means,
        conditions: Sequence[str],
        *,
        control: str = "control",
        separator: str = "+",
        ridge: float = 1e-3,
        missing: Missing = "raise",
    ) -> LinearIndicators:
        """Fit ``beta`` by ridge least squares on all training conditions.

        Parameters
        ----------
        means, conditions, control, separator
            Training pseudobulk, as for :meth:`Additive.fit`.
        ridge
            Penalty ``lambda >= 0`` on ``|beta|^2``. The default ``1e-3`` is small next to the
            Gram diagonal (each target occurs in at least one condition), so identified effects
            shrink by at most 0.1%, while effects the training conditions cannot separate (targets
            only ever perturbed together) get the minimum-norm split instead of failing.
            ``ridge=0`` needs an identifying design.
        missing
            ``"raise"`` or ``"control"`` (see the class).

        Raises
        ------
        ValueError
            As for :meth:`Additive.fit`; also if ``ridge < 0``, or ``ridge == 0`` and the
            training conditions do not identify every target's effect.
        """
        _check_missing(missing)
        if not (np.isfinite(ridge) and ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}.")
        means, targets, control_mean = _parse_training(means, conditions, control, separator)
        names = tuple(sorted({gene for members in targets for gene in members}))
        design = _indicators(targets, names, "raise", "condition")
        gram = design.T @ design + ridge * np.eye(len(names))
        if names and ridge == 0 and np.linalg.matrix_rank(gram) < len(names):
            raise ValueError(
                "With ridge=0 the training conditions do not identify the effect of every "
                "target (some are only perturbed together); pass ridge > 0."
            )
        right_hand_side = design.T @ (means - control_mean)
        coefficients = np.linalg.solve(gram, right_hand_side) if names else right_hand_side
        return cls(
            control_mean=control_mean,
            targets=names,
            coefficients=coefficients,
            missing=missing,
            control=control,
            separator=separator,
        )

    def predict(self, conditions: Sequence[str]) -> np.ndarray:
        """Return predicted means ``[len(conditions), genes]``.

        Raises
        ------
        ValueError
            If a member never occurs in training and ``missing="raise"``.
        """
        targets = _parse_queries(conditions, self.control, self.separator)
        membership = _indicators(targets, self.targets, self.missing, "condition")
        return self.control_mean + membership @ self.coefficients


def shift_control_cells(control_cells, control_mean, predicted_means) -> np.ndarray:
    """Predict cells by shifting control cells by each predicted change of the mean.

    Returns ``control_cells + (predicted_mean - control_mean)``: the control population moved
    rigidly so that its mean follows the prediction, with its spread, correlations and shape kept.
    This is how a baseline that predicts only means is scored with distributional metrics (energy
    distance, MMD); any change in variance is, by construction, never predicted.

    Parameters
    ----------
    control_cells
        Control expression ``[cells, genes]`` (log1p-normalised).
    control_mean
        The control mean ``[genes]`` the predictions are relative to (usually the baseline's
        ``control_mean``; use ``control_cells.mean(axis=0)`` to keep their own mean).
    predicted_means
        One prediction ``[genes]`` or a stack ``[conditions, genes]``.

    Returns
    -------
    numpy.ndarray
        ``[cells, genes]`` for one prediction, ``[conditions, cells, genes]`` for a stack
        (memory ``conditions x cells x genes``: call per condition for large screens).

    Raises
    ------
    ValueError
        If the number of genes differs between the arguments.

    Examples
    --------
    >>> shift_control_cells(np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([1.0, 2.0]), [1.5, 2.0])
    array([[0.5, 1. ],
           [2.5, 3. ]])
    """
    cells = np.asarray(control_cells)
    control_mean = np.asarray(control_mean)
    predicted_means = np.asarray(predicted_means)
    if (
        cells.ndim != 2
        or control_mean.shape != cells.shape[1:]
        or predicted_means.ndim not in (1, 2)
        or predicted_means.shape[-1:] != cells.shape[1:]
    ):
        raise ValueError(
            f"Expected control_cells [cells, genes], control_mean [genes] and predicted_means "
            f"[genes] or [conditions, genes]; got control_cells {cells.shape}, control_mean "
            f"{control_mean.shape} and predicted_means {predicted_means.shape}."
        )
    shifts = predicted_means - control_mean
    return cells + shifts[..., None, :]
