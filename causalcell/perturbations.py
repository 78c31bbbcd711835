"""Perturbation labels: parse ``"control"``, ``"GATA1"``, ``"GATA1+CEBPA"`` into target sets.

A *condition* is the set of genes perturbed together in a cell. Its canonical label lists the
targets in sorted order joined by the separator, so ``"CEBPA+GATA1"`` and ``"GATA1+CEBPA"`` name
the same condition; the empty set is the control label.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["canonical_label", "parse_perturbation"]


def parse_perturbation(
    label: str,
    *,
    control: str | Iterable[str] = "control",
    separator: str = "+",
) -> tuple[str, ...]:
    """Return the sorted tuple of target genes named by a perturbation label.

    Parameters
    ----------
    label
        A perturbation label such as ``"control"``, ``"GATA1"`` or ``"GATA1+CEBPA"``.
        Whitespace around members is ignored. A control label inside a combination
        (``"GATA1+ctrl"``, as in the Norman et al. 2019 tables) means "no further target".
    control
        The label (or labels) of unperturbed cells.
    separator
        The string between the members of a combination.

    Returns
    -------
    tuple of str
        The targets, sorted and without duplicates; ``()`` for control cells.

    Raises
    ------
    ValueError
        If the label is empty or has an empty member (``"GATA1++CEBPA"``).

    Examples
    --------
    >>> parse_perturbation("GATA1+CEBPA")
    ('CEBPA', 'GATA1')
    >>> parse_perturbation("control")
    ()
    >>> parse_perturbation("A|ctrl", control="ctrl", separator="|")
    ('A',)
    """
    controls = {control} if isinstance(control, str) else set(control)
    if not isinstance(label, str):
        raise TypeError(
            f"Perturbation labels must be strings, got {label!r} ({type(label).__name__})."
        )
    text = label.strip()
    if not text:
        raise ValueError(
            "Empty perturbation label: label unperturbed cells with the control label "
            f"({sorted(controls)!r}) instead of an empty string."
        )
    if text in controls:
        return ()
    members = [member.strip() for member in text.split(separator)]
    if any(not member for member in members):
        raise ValueError(
            f"Perturbation label {label!r} has an empty member when split on {separator!r}; "
            "check the separator argument."
        )
    return tuple(sorted({member for member in members if member not in controls}))


def canonical_label(
    targets: Iterable[str], *, control: str = "control", separator: str = "+"
) -> str:
    """Return the canonical label of a set of targets (sorted, joined; ``control`` if empty).

    Examples
    --------
    >>> canonical_label(["GATA1", "CEBPA"])
    'CEBPA+GATA1'
    >>> canonical_label([])
    'control'
    """
    members = sorted(set(targets))
    return separator.join(members) if members else control
