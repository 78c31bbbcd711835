"""The drift families of LCD as a table: everything that differs between linear and neural
drift, chosen once when a model is built (``LCD.backend``), instead of a string switch in each
query.

A :class:`DriftBackend` bundles the family's fit and its queries with one signature each, so
:class:`LCD` calls ``self.backend.predict(...)`` whatever the drift. A new drift family is a new
row of :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from causalcell.models.lcd import _linear, _neural
from causalcell.models.lcd._fit import NOISE_MODELS, linear_problem
from causalcell.models.lcd._neural_fit import neural_problem

__all__ = ["BACKENDS", "LINEAR", "NEURAL", "DriftBackend", "backend_named"]


class DriftBackend(NamedTuple):
    """One drift family of LCD.

    Attributes
    ----------
    name
        ``"linear"`` or ``"neural"`` (``LCD.drift_kind``).
    problem
        ``(screen: PreparedScreen, settings) -> SviProblem`` (``LCD.settings``): the program,
        its data and its guide's arguments, which ``LCD.fit`` fits and ``LCD.load`` rebuilds.
    drift
        ``(model, draws, programs) -> [S, n, n]``: drift matrices (neural: Jacobians at the
        control fixed point).
    responses
        ``(model, draws, columns) -> [S, n, k]``: CLIPR's responses to unit shifts of the
        columns.
    stationary
        ``(model, request, *, key, num_samples, **simulation) -> (mean, covariance)``, the
        request a :class:`._targets.Request`.
    predict
        ``(model, perturbations, num_cells, *, key, allow_prior_only, **simulation) -> AnnData``.
    exact_worlds
        Whether the family has the exact counterfactual worlds and the ``do``-able program of
        :mod:`._worlds` (the path-wise Gaussian conditional needs linear drift).
    takes_options
        Whether ``LCD.fit`` accepts ``drift_options`` for it.
    default_modelled_genes
        ``modelled_genes`` when the user gives none (``"all"`` for a program with no decoder).
    noises
        The ``noise`` names (:data:`._fit.NOISE_MODELS`) its program and queries observe.
    perturbation_pairs
        Whether its program learns a parameter per (perturbation, target) pair when the
        perturbations are named apart from their targets (:mod:`._pairs`).
    """

    name: str
    problem: Callable
    drift: Callable
    responses: Callable
    stationary: Callable
    predict: Callable
    exact_worlds: bool
    takes_options: bool
    default_modelled_genes: str | None
    noises: tuple[str, ...]
    perturbation_pairs: bool


LINEAR = DriftBackend(
    name="linear",
    problem=linear_problem,
    drift=_linear.linear_drifts,
    responses=_linear.responses,
    stationary=_linear.stationary_linear,
    predict=_linear.predict_linear,
    exact_worlds=True,
    takes_options=False,
    default_modelled_genes=None,
    noises=tuple(NOISE_MODELS),
    perturbation_pairs=True,
)

NEURAL = DriftBackend(
    name="neural",
    problem=neural_problem,
    drift=_neural.drift_matrices,
    responses=_neural.responses,
    stationary=_neural.stationary_neural,
    predict=_neural.predict_neural,
    exact_worlds=False,
    takes_options=True,
    default_modelled_genes="all",  # the neural program has no decoder
    noises=("negative_binomial",),  # its program, guide and simulations are the NB's
    perturbation_pairs=False,  # its program takes one parameter per target
)

#: Every drift family by name.
BACKENDS = {backend.name: backend for backend in (LINEAR, NEURAL)}


def backend_named(name: str) -> DriftBackend:
    """The backend of ``drift=name``.

    Raises
    ------
    ValueError
        For an unknown name (listing the known ones).
    """
    if name not in BACKENDS:
        raise ValueError(f"drift must be one of {sorted(BACKENDS)}, got {name!r}.")
    return BACKENDS[name]
