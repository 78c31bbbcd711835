"""LCD's queries of individual cells: its fitted program for ``do`` and the queries, the ``do``
request of a perturbation, and counterfactuals of observed cells (a base class of
:class:`._model.LCD`; the maths in :mod:`._worlds`)."""

from __future__ import annotations

import anndata

from causalcell._core.keys import as_key
from causalcell.models.lcd._do_program import action_request, lcd_program
from causalcell.models.lcd._worlds import counterfactual_worlds, worlds_anndata

__all__ = ["CellWorlds"]


class CellWorlds:
    """:attr:`program`, :meth:`actions` and :meth:`counterfactual` of a fitted LCD."""

    @property
    def program(self):
        """The fitted model as a NumPyro program of generated cells, for :func:`causalcell.do`
        and :mod:`causalcell.queries`: ``program(num_cells=100, *, perturbation="control",
        size_factors=None)`` (:func:`._worlds.lcd_program`; sites ``latent`` and
        ``counts``). It asks for the vectorised site ``"genes"`` over :attr:`coordinates`: a
        request for the learned intervention (:meth:`actions`: ``learned()``, or the screen's
        kind without a value, e.g. ``knockout()`` on a knockout screen) ORs the gene into the
        cells' targets with its learned parameter, so with posterior draws of the globals the
        cells are :meth:`predict`'s in law; explicit
        values (``shift(0.5)``, ``knockout(-2.0)``) compose on top. Linear drift only.

        Examples
        --------
        >>> result = queries.interventional(  # doctest: +SKIP
        ...     model.program, model.actions("GATA1"), key=jax.random.key(0),
        ...     posterior_samples=model.posterior.sample(0, 200), model_kwargs={"num_cells": 1})
        """
        return lcd_program(self)

    def actions(self, perturbation: str, *, allow_prior_only: bool = False) -> dict:
        """The ``do`` request ``{"genes": {gene: spec}}`` for the learned intervention of every
        target of ``perturbation`` (``learned()``: the screen's kind, with its learned
        parameter), for :attr:`program`; raises :class:`UnseenTargetError` as :meth:`predict`
        does."""
        return action_request(self, perturbation, allow_prior_only)

    def counterfactual(
        self,
        cells: anndata.AnnData,
        perturbation: str,
        *,
        num_samples: int = 100,
        key=0,
        coupling: str = "quantile",
        compose: bool = True,
        probability: float = 0.9,
        allow_prior_only: bool = False,
    ) -> anndata.AnnData:
        """These observed cells, had ``perturbation`` also (or instead) been applied.

        Per posterior draw of the globals: abduction of each cell's latent from the fit's exact
        local posterior under that draw, action, and prediction with the cell's Brownian path
        shared by both worlds (exact for linear drift), then counts (:mod:`._worlds`).
        Every draw: :func:`causalcell.queries.counterfactual` with this model.

        Parameters
        ----------
        cells
            Observed cells (training genes; each cell's own perturbation, a trained condition
            or control, in ``obs[perturbation_key]``). Not modified.
        perturbation
            E.g. ``"GATA1"`` or ``"GATA1+CEBPA"`` (trained targets, or ``allow_prior_only``).
        num_samples, key, probability
            Posterior draws, seed, and mass of the equal-tailed credible intervals.
        coupling
            ``"quantile"`` (each count keeps its randomised quantile) or ``"resample"``.
        compose
            True: union of the cell's targets and ``perturbation``'s (a target the cell
            carries is unchanged; ``"control"`` changes nothing); False: ``perturbation``
            replaces the cell's own (``"control"``: had it been unperturbed).

        Returns
        -------
        anndata.AnnData
            Factual then counterfactual rows: ``obs["world"]``, ``obs["cell"]`` (source cell),
            ``obs["perturbation"]`` (the world's condition); ``X`` counts (observed; draw 0 in
            the counterfactual world), ``layers["log1p"]``, ``obsm["latent"]`` (draw 0),
            ``obsm["latent_mean"]``; ``layers["shift_mean"|"shift_lower"|"shift_upper"]``:
            posterior mean and interval of the counterfactual minus factual log-rate (zero in
            factual rows); ``uns["counterfactual"]``: the settings.

        Raises
        ------
        UnseenTargetError
            Unknown or untrained targets, or cells of an untrained condition.
        NotImplementedError
            For neural drift.

        References
        ----------
        Pearl, J. (2009). Causality, 2nd ed., ch. 7 (abduction, action, prediction).
        """
        settings = {"coupling": coupling, "compose": compose}
        worlds = counterfactual_worlds(
            self,
            cells,
            perturbation,
            num_samples=num_samples,
            key=as_key(key),
            allow_prior_only=allow_prior_only,
            **settings,
        )
        return worlds_anndata(self, worlds, probability=probability, settings=settings)
