"""The fitted linear-drift LCD as a NumPyro program of generated cells, so that
:class:`causalcell.handlers.do` and :func:`causalcell.queries.interventional` act on it.

``do(program, {"genes": {"GATA1": learned()}})`` (built by :func:`action_request`) ORs GATA1
into the cells' targets with its learned parameter: with the same posterior draws it is
:meth:`LCD.predict` ``("GATA1")`` in law.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from causalcell.handlers import learned
from causalcell.models.lcd._pairs import pair_design, screen_kinds
from causalcell.models.lcd._program import lcd_model
from causalcell.models.lcd._targets import UnseenTargetError, perturbation_targets

__all__ = ["action_request", "lcd_program", "linear_only"]


def linear_only(model, query: str) -> None:
    if not model.backend.exact_worlds:
        raise NotImplementedError(
            f"{query} needs linear drift, whose stationary law and path-wise counterfactuals are "
            "exact; neural drift has neither in closed form (it would need shared-noise "
            "simulation of both worlds). Fit with drift='linear', or compare predict() "
            "outputs of the neural fit."
        )


def lcd_program(model):
    """The fitted ``model`` as a NumPyro program of generated cells.

    ``program(num_cells=100, *, perturbation="control", size_factors=None)`` runs
    :func:`._program.lcd_model` for ``num_cells`` cells of condition ``perturbation``
    (library sizes: the training cells' in turn, unless given), with the fit's priors and gene
    space. Its global sites are the fit's, so ``posterior_samples=model.posterior.sample(...)``
    in :func:`causalcell.queries.interventional` (or ``numpyro.infer.Predictive``) makes it the
    fitted model; alone it draws the globals from the prior. Sites: ``latent``
    ``[cells, m]`` over ``model.coordinates`` and ``counts`` ``[cells, genes]`` with the
    modelled genes first (``[model.genes[i] for i in model.space.order]``; AnnData order in a
    full space).
    """
    linear_only(model, "LCD.program")
    data = model.posterior.data
    fixed = {
        name: data[name]
        for name in ("baseline_prior", "prior_mask", "decoded_prior", "response_scales")
        if name in data
    }
    settings = dict(model.posterior.model_kwargs)
    # Its conditions are not the training ones (a combination may have more targets than any
    # trained condition): one solve per condition, not the fit's low-rank updates.
    settings.pop("knockout_rank", None)
    library_sizes = np.asarray(model.library_sizes, np.float32)

    design = pair_design(model.registry, model.coordinates, screen_kinds(model.intervention)[0])

    def program(num_cells: int = 100, *, perturbation: str = "control", size_factors=None):
        request = perturbation_targets(model, perturbation, allow_prior_only=True)
        if size_factors is None:
            size_factors = np.resize(library_sizes, num_cells)
        return lcd_model(
            None,
            condition_index=jnp.zeros(num_cells, jnp.int32),
            condition_targets=jnp.asarray(request.row[None], jnp.float32),
            **_program_pairs(model, design, request),
            size_factors=jnp.asarray(size_factors, jnp.float32),
            coordinates=model.coordinates,
            **fixed,
            **settings,
        )

    return program


def _program_pairs(model, design, request) -> dict:
    """The program's pair data for one query condition: trained perturbations only (the
    program's deviation site has one entry per trained pair)."""
    if design is None:
        return {}
    if request.prior_only:
        raise UnseenTargetError(
            f"{request.label!r} names a perturbation or target no training cell carried; the "
            "program samples trained pairs only. LCD.predict and LCD.counterfactual draw unseen "
            "perturbations from the fitted spread."
        )
    pairs = design.pairs(np.isin(model.registry.perturbations, request.members)[None])
    return {
        "pair_active": pairs.active,
        "pair_coordinates": pairs.coordinates,
        "pair_kinds": pairs.kinds,
    }


def action_request(model, perturbation: str, allow_prior_only: bool = False) -> dict:
    """``{"genes": {gene: learned()}}`` asking ``do`` for the learned intervention (the
    screen's kind) of every target of ``perturbation``; raises :class:`UnseenTargetError` as
    :meth:`LCD.predict` does. ``do`` acts on genes: on a screen of perturbations named apart
    from their targets, a gene's learned intervention is its targets' shared parameter
    (``mu_j`` of :mod:`._pairs`), so a perturbation of the table is refused here."""
    request = perturbation_targets(model, perturbation, allow_prior_only)
    named = [name for name in request.members if name in model.registry.perturbation_targets]
    if named:
        raise ValueError(
            f"{perturbation!r} names perturbations of perturbation_targets ({named}); do() acts "
            "on genes. Name their target genes, or ask LCD.counterfactual or LCD.predict."
        )
    genes = [gene for gene, hit in zip(model.coordinates, request.row, strict=False) if hit]
    return {"genes": {gene: learned() for gene in genes}}
