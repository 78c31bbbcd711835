"""What a perturbation label asks of a fitted LCD: its targets over the latent coordinates.

One place for every query (predictions, stationary laws, ``do`` requests, counterfactual
worlds), so that unknown, decoded and untrained targets raise the same errors everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from causalcell.perturbations import canonical_label, parse_perturbation

__all__ = [
    "Request",
    "UnseenTargetError",
    "effect_columns",
    "perturbation_labels",
    "perturbation_targets",
]


class UnseenTargetError(ValueError):
    """A prediction asks for a target that no training cell carried."""


class Request(NamedTuple):
    """What a perturbation label asks of a fitted LCD (:func:`perturbation_targets`)."""

    row: np.ndarray  #: bool ``[m]``: the targets over the latent coordinates
    prior_only: bool  #: a target or a perturbation that no training cell carried
    label: str  #: the canonical label
    members: tuple[str, ...]  #: the label's perturbations (genes, or table entries)


def perturbation_targets(model, perturbation: str, allow_prior_only: bool) -> Request:
    """The :class:`Request` of ``perturbation`` on the fitted ``model``: multi-hot targets over
    the latent coordinates, whether anything in it is unseen in training, its canonical label
    and its members. A member is a perturbation of the registry's ``perturbation_targets``
    table (its targets) or a gene (itself). A perturbation that no training cell carried,
    of targets that were trained, is flagged but allowed (:mod:`._pairs`).

    Raises
    ------
    UnseenTargetError
        For a member that is neither in the table nor a gene, a target that is not modelled,
        or (unless ``allow_prior_only``) a target that no training cell carried.
    """
    registry = model.registry
    members = parse_perturbation(
        perturbation, control=registry.control, separator=registry.separator
    )
    table = registry.perturbation_targets
    unknown = [name for name in members if name not in model.genes and name not in table]
    if unknown:
        shown = ", ".join(model.genes[:5]) + (", ..." if len(model.genes) > 5 else "")
        named = f" or perturbations of perturbation_targets ({', '.join(table)})" if table else ""
        raise UnseenTargetError(
            f"{perturbation!r} names genes that are not modelled: {unknown}. Name genes of the "
            f"training data (LCD.genes: {shown}){named} joined by {registry.separator!r}, or "
            f"{registry.control[0]!r}."
        )
    genes = list(dict.fromkeys(gene for name in members for gene in table.get(name, (name,))))
    decoded = [gene for gene in genes if gene not in model.modelled_genes]
    if decoded:
        raise UnseenTargetError(
            f"{perturbation!r} targets {decoded}, which are not modelled (they are decoded "
            "from the latent state, so no intervention can act on them). Refit with "
            "LCD.fit(..., modelled_genes=[...]) naming them."
        )
    unseen = [gene for gene in genes if gene not in model.trained_targets]
    if unseen and not allow_prior_only:
        raise UnseenTargetError(
            f"{perturbation!r} targets {unseen}, which no training cell carried, so LCD has "
            "learned nothing about their interventions. Pass allow_prior_only=True to predict "
            "from the prior of their intervention parameters (flagged in the output)."
        )
    new = bool(table) and any(name not in registry.perturbations for name in members)
    row = np.isin(np.asarray(model.modelled_genes), genes)
    row = np.concatenate([row, np.zeros(model.space.programs, bool)])  # programs: untargeted
    label = canonical_label(members, control=registry.control[0], separator=registry.separator)
    return Request(row, bool(unseen) or new, label, tuple(members))


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
