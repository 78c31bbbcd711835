"""What a perturbation label asks of a fitted LCD: its targets over the latent coordinates.

One place for every query (predictions, stationary laws, ``do`` requests, counterfactual
worlds), so that unknown, decoded and untrained targets raise the same errors everywhere.
"""

from __future__ import annotations

import numpy as np

from causalcell.perturbations import canonical_label, parse_perturbation

__all__ = ["UnseenTargetError", "effect_columns", "perturbation_labels", "perturbation_targets"]


class UnseenTargetError(ValueError):
    """A prediction asks for a target that no training cell carried."""


def perturbation_targets(model, perturbation: str, allow_prior_only: bool):
    """Multi-hot targets of ``perturbation`` over the latent coordinates of the fitted ``model``
    ``[m]``, whether any target is unseen in training, and its canonical label.

    Raises
    ------
    UnseenTargetError
        For a gene that is not in the data or not modelled, or (unless ``allow_prior_only``)
        that no training cell carried.
    """
    registry = model.registry
    members = parse_perturbation(
        perturbation, control=registry.control, separator=registry.separator
    )
    unknown = [gene for gene in members if gene not in model.genes]
    if unknown:
        shown = ", ".join(model.genes[:5]) + (", ..." if len(model.genes) > 5 else "")
        raise UnseenTargetError(
            f"{perturbation!r} names genes that are not modelled: {unknown}. Name genes of the "
            f"training data (LCD.genes: {shown}) joined by {registry.separator!r}, or "
            f"{registry.control[0]!r}."
        )
    decoded = [gene for gene in members if gene not in model.modelled_genes]
    if decoded:
        raise UnseenTargetError(
            f"{perturbation!r} targets {decoded}, which are not modelled (they are decoded "
            "from the latent state, so no intervention can act on them). Refit with "
            "LCD.fit(..., modelled_genes=[...]) naming them."
        )
    unseen = [gene for gene in members if gene not in model.trained_targets]
    if unseen and not allow_prior_only:
        raise UnseenTargetError(
            f"{perturbation!r} targets {unseen}, which no training cell carried, so LCD has "
            "learned nothing about their interventions. Pass allow_prior_only=True to predict "
            "from the prior of their intervention parameters (flagged in the output)."
        )
    row = np.isin(np.asarray(model.modelled_genes), members)
    row = np.concatenate([row, np.zeros(model.space.programs, bool)])  # programs: untargeted
    label = canonical_label(members, control=registry.control[0], separator=registry.separator)
    return row, bool(unseen), label


def effect_columns(model, targets) -> tuple[list[str], list[int]]:
    """The target genes of :meth:`LCD.effects` (the trained targets by default) and their
    columns among the modelled genes.

    Raises
    ------
    ValueError
        For a target that is not a modelled gene.
    """
    genes = model.modelled_genes
    if targets is None:
        targets = [gene for gene in genes if gene in model.trained_targets]
    unknown = [gene for gene in targets if gene not in genes]
    if unknown:
        raise ValueError(f"effects(targets=...) names genes that are not modelled: {unknown}.")
    return list(targets), [genes.index(gene) for gene in targets]


def perturbation_labels(perturbations) -> list[str]:
    """The labels a query asks for: one label (``"GATA1"``, not its characters) or several."""
    if isinstance(perturbations, str):
        return [perturbations]
    return list(perturbations)
