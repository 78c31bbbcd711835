"""The :class:`Registry` of :mod:`causalcell.data` (private module; import it from there)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from causalcell.data import _checks as checks
from causalcell.interventions import INTERVENTION_KINDS
from causalcell.perturbations import canonical_label, parse_perturbation

#: Version of the ``Registry.to_dict`` layout; bumped when it changes incompatibly.
_SCHEMA_VERSION = 1

#: How many genes, conditions or targets ``repr(registry)`` shows before it abbreviates.
_REPR_ITEMS = 5

#: Registry fields holding one string, bool or None (not a sequence).
_SCALAR_FIELDS = {
    "perturbation_key",
    "separator",
    "layer",
    "gene_key",
    "size_factor_key",
    "count_data",
}


def control_labels(control: str | Iterable[str]) -> tuple[str, ...]:
    """Control labels as a tuple; the first one names the control condition (sets are sorted)."""
    labels = (control,) if isinstance(control, str) else control
    labels = sorted(labels) if isinstance(labels, set | frozenset) else list(labels)
    if not labels or not all(isinstance(label, str) for label in labels):
        raise TypeError(f"control must be a label or a collection of labels, got {control!r}.")
    return tuple(dict.fromkeys(str(label) for label in labels))


def as_tuple(values) -> tuple:
    """A tuple of plain Python values (also from the NumPy arrays that h5ad returns)."""
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    if isinstance(values, np.ndarray):
        return tuple(values.tolist())
    return tuple(value.item() if isinstance(value, np.generic) else value for value in values)


def perturbation_table(table, genes, control=()) -> dict[str, tuple[str, ...]]:
    """``{perturbation: (target genes, ...)}`` from a mapping (a target or a list of targets
    per perturbation) or a DataFrame with columns ``perturbation`` and ``target`` (one row per
    pair), checked against ``genes`` and the ``control`` labels.

    Raises
    ------
    TypeError
        For another kind of table, or a name that is not a string.
    ValueError
        For a target that is not a gene, a perturbation without targets, a control label or a
        gene named as a perturbation of other genes.
    """
    if table is None:
        return {}
    if isinstance(table, pd.DataFrame):
        missing = {"perturbation", "target"} - set(table.columns)
        if missing:
            raise ValueError(
                f"perturbation_targets as a table needs the columns 'perturbation' and 'target' "
                f"(one row per pair); missing {sorted(missing)}, present {list(table.columns)}."
            )
        grouped: dict[str, list] = {}
        for name, target in table[["perturbation", "target"]].itertuples(index=False):
            grouped.setdefault(name, []).append(target)
        table = grouped
    if not isinstance(table, Mapping):
        raise TypeError(
            "perturbation_targets must map each perturbation to its target gene(s), e.g. "
            f"{{'PMA': 'PKC', 'drug': ['A', 'B']}}, or be a DataFrame; got {type(table).__name__}."
        )
    gene_set, result = set(genes), {}
    for name, targets in table.items():
        targets = tuple(dict.fromkeys(str(target) for target in as_tuple(targets)))
        if not isinstance(name, str) or not name:
            raise TypeError(f"perturbation_targets names must be non-empty strings, got {name!r}.")
        if not targets:
            raise ValueError(f"perturbation_targets[{name!r}] names no target gene.")
        unknown = [target for target in targets if target not in gene_set]
        if unknown:
            raise ValueError(
                f"perturbation_targets[{name!r}] names targets that are not genes: {unknown}. "
                "Name genes of the data (.var_names, or the gene_key column)."
            )
        if name in control:
            raise ValueError(f"perturbation_targets names the control label {name!r}.")
        if name in gene_set and targets != (name,):
            raise ValueError(
                f"perturbation_targets[{name!r}] = {list(targets)}, but {name!r} is a gene: a "
                "label naming a gene perturbs that gene. Give the perturbation another name."
            )
        result[name] = targets
    return result


def kind_table(kinds) -> dict[str, str]:
    """``{perturbation: kind}`` from a mapping (or None), each kind one of
    :data:`causalcell.interventions.INTERVENTION_KINDS`.

    Raises
    ------
    TypeError
        For another kind of table.
    ValueError
        For an unknown kind.
    """
    if kinds is None:
        return {}
    if not isinstance(kinds, Mapping):
        raise TypeError(
            "perturbation_kinds must map perturbations to kinds, e.g. {'sgGATA1': 'knockout'}; "
            f"got {type(kinds).__name__}."
        )
    result = {
        str(name): str(kind.item() if hasattr(kind, "item") else kind)
        for name, kind in kinds.items()
    }
    unknown = {name: kind for name, kind in result.items() if kind not in INTERVENTION_KINDS}
    if unknown:
        raise ValueError(
            f"perturbation_kinds names unknown kinds {unknown}; use {INTERVENTION_KINDS}."
        )
    return result


def targets_from_column(adata, perturbation_key, column, control, separator) -> dict:
    """The perturbation table read off ``.obs[column]`` (each cell's target gene(s), in
    label syntax): a single perturbation maps to every target of its cells; the members of a
    combination that no single names map to its targets in order."""
    checks.require_key(
        column, list(adata.obs.columns), where="adata.obs", argument="perturbation_targets"
    )
    pairs = adata.obs[[perturbation_key, column]].astype(str).drop_duplicates()
    parsed = [
        (
            parse_perturbation(label, control=control, separator=separator),
            parse_perturbation(targets, control=control, separator=separator),
            label,
            targets,
        )
        for label, targets in pairs.itertuples(index=False)
    ]
    parsed.sort(key=lambda row: len(row[0]))  # singles first: they name their members' targets
    table: dict[str, tuple[str, ...]] = {}
    for members, genes, label, targets in parsed:
        if not members or (len(members) > 1 and all(member in table for member in members)):
            continue
        if len(members) == 1:
            found = {members[0]: tuple(genes)}
        elif len(genes) == len(members):
            found = {member: (gene,) for member, gene in zip(members, genes, strict=True)}
        else:
            raise ValueError(
                f".obs[{column!r}] gives {targets!r} for the combination {label!r}: name one "
                f"target per member ({len(members)}), joined by {separator!r}, or pass a table."
            )
        for member, genes_of in found.items():
            if table.setdefault(member, genes_of) != genes_of:
                raise ValueError(
                    f".obs[{column!r}] gives {member!r} two sets of targets: "
                    f"{list(table[member])} and {list(genes_of)}."
                )
    return {member: genes for member, genes in table.items() if genes != (member,)}


@dataclass(frozen=True, eq=False, kw_only=True)
class Registry:
    """Where an AnnData keeps each piece of a screen, and the vocabularies found in it.

    Built by :func:`register`; stored with :meth:`to_dict` and rebuilt with :meth:`from_dict`.
    Two registries are equal when their keys and vocabularies are.

    Attributes
    ----------
    perturbation_key, control, separator
        ``.obs`` column of perturbation labels, the control label(s) (the first names the control
        condition), and the separator of combinations.
    layer, gene_key, size_factor_key, covariate_keys, count_data
        As passed to :func:`register`.
    genes
        Gene names in ``.var`` order.
    conditions
        Canonical condition labels: control first, then in order of first appearance.
    covariate_categories
        Categories of each categorical covariate (numeric covariates are absent).
    perturbation_targets
        The target genes of each named perturbation (a guide, reagent or drug) that is not
        itself a gene: ``{"PMA": ("PKC",), "GATA1_2": ("GATA1",)}``. A label's members are
        perturbations; a member absent from this table is a gene perturbed by itself.
    perturbation_kinds
        The intervention kind of perturbations whose kind is not the screen's
        (``{"sgGATA1": "knockout"}`` in a CRISPRi screen); a model's default applies to the
        others.
    condition_targets
        Read-only bool ``[P, d]``; ``condition_targets[p, g]`` iff condition ``p`` targets gene
        ``g``.
    targets
        Every perturbed gene, in gene order.
    perturbations
        Every perturbation of the conditions (table entries and genes alike), in order of first
        appearance.
    condition_perturbations, perturbation_genes
        Read-only bool ``[P, R]`` (condition ``p`` applies perturbation ``r``) and ``[R, d]``
        (perturbation ``r`` targets gene ``g``); ``condition_targets`` is their boolean product.
    """

    perturbation_key: str = "perturbation"
    control: tuple[str, ...] = ("control",)
    separator: str = "+"
    layer: str | None = None
    gene_key: str | None = None
    size_factor_key: str | None = None
    covariate_keys: tuple[str, ...] = ()
    count_data: bool = True
    genes: tuple[str, ...]
    conditions: tuple[str, ...]
    covariate_categories: dict[str, tuple] = field(default_factory=dict)
    perturbation_targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    perturbation_kinds: dict[str, str] = field(default_factory=dict)
    condition_targets: np.ndarray = field(init=False, repr=False)
    targets: tuple[str, ...] = field(init=False)
    perturbations: tuple[str, ...] = field(init=False, repr=False)
    condition_perturbations: np.ndarray = field(init=False, repr=False)
    perturbation_genes: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        assign = lambda name, value: object.__setattr__(self, name, value)
        assign("control", control_labels(self.control))
        assign("covariate_keys", as_tuple(self.covariate_keys))
        assign("genes", tuple(str(gene) for gene in as_tuple(self.genes)))
        assign("conditions", tuple(str(label) for label in as_tuple(self.conditions)))
        categories = {str(key): as_tuple(value) for key, value in self.covariate_categories.items()}
        assign("covariate_categories", categories)
        if len(set(self.genes)) != len(self.genes) or len(set(self.conditions)) != len(
            self.conditions
        ):
            raise ValueError("Registry genes and conditions must be unique.")
        if not self.conditions or self.conditions[0] != self.control[0]:
            raise ValueError(f"The first condition must be the control {self.control[0]!r}.")
        if not set(categories) <= set(self.covariate_keys):
            raise ValueError("covariate_categories names covariates missing from covariate_keys.")
        table = perturbation_table(self.perturbation_targets, self.genes, self.control)
        assign("perturbation_targets", table)
        assign("perturbation_kinds", kind_table(self.perturbation_kinds))
        column = {gene: index for index, gene in enumerate(self.genes)}  # gene -> column
        stray = [name for name in self.perturbation_kinds if name not in table | column]
        if stray:
            raise ValueError(
                f"perturbation_kinds names {stray}, which are neither genes nor perturbations "
                "of perturbation_targets: a kind must belong to a perturbation of the screen."
            )
        members = []
        for label in self.conditions:
            parsed = parse_perturbation(label, control=self.control, separator=self.separator)
            if self.canonical_label(parsed) != label or not all(
                member in table or member in column for member in parsed
            ):
                raise ValueError(
                    f"Condition {label!r} is not a canonical label of perturbations in the "
                    "registry (genes, or entries of perturbation_targets)."
                )
            members.append(parsed)
        perturbations = tuple(dict.fromkeys(member for parsed in members for member in parsed))
        position = {name: index for index, name in enumerate(perturbations)}
        applied = np.zeros((len(self.conditions), len(perturbations)), dtype=bool)
        for row, parsed in enumerate(members):
            applied[row, [position[member] for member in parsed]] = True
        genes_of = np.zeros((len(perturbations), len(self.genes)), dtype=bool)
        for row, name in enumerate(perturbations):
            genes_of[row, [column[gene] for gene in table.get(name, (name,))]] = True
        condition_targets = (applied.astype(np.int64) @ genes_of) > 0
        for array in (applied, genes_of, condition_targets):
            array.flags.writeable = False
        assign("perturbations", perturbations)
        assign("condition_perturbations", applied)
        assign("perturbation_genes", genes_of)
        assign("condition_targets", condition_targets)
        assign("targets", tuple(np.asarray(self.genes)[condition_targets.any(axis=0)].tolist()))

    def canonical_label(self, targets: Iterable[str]) -> str:
        """The condition label of a set of targets, with this registry's control and separator.

        Examples
        --------
        >>> Registry(genes=("a", "b"), conditions=("ctrl",), control="ctrl").canonical_label([])
        'ctrl'
        """
        return canonical_label(targets, control=self.control[0], separator=self.separator)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (lists, strings, numbers, None) that :meth:`from_dict` reads.

        Examples
        --------
        >>> registry = Registry(genes=("a", "b"), conditions=("control", "a+b"))
        >>> Registry.from_dict(registry.to_dict()) == registry
        True
        """
        data: dict[str, Any] = {"schema_version": _SCHEMA_VERSION}
        for item in fields(self):
            if item.init:
                value = getattr(self, item.name)
                data[item.name] = list(value) if isinstance(value, tuple) else value
        data["covariate_categories"] = {
            key: list(values) for key, values in self.covariate_categories.items()
        }
        data["perturbation_targets"] = {
            key: list(values) for key, values in self.perturbation_targets.items()
        }
        data["perturbation_kinds"] = dict(self.perturbation_kinds)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Registry:
        """Rebuild a registry from :meth:`to_dict` output (also after an h5ad round trip)."""
        data = dict(data)
        version = data.pop("schema_version", None)
        if version != _SCHEMA_VERSION:
            raise ValueError(
                f"Registry schema_version {version!r} is not {_SCHEMA_VERSION}: register the "
                "AnnData again with this version of causalcell."
            )
        for name in _SCALAR_FIELDS & set(data):
            if isinstance(data[name], np.ndarray | np.generic):
                data[name] = data[name].item()  # NumPy scalars after an h5ad round trip
        return cls(**data)

    def __repr__(self) -> str:
        def short(value):
            if isinstance(value, tuple) and len(value) > _REPR_ITEMS:
                shown = ", ".join(repr(item) for item in value[:_REPR_ITEMS])
                return f"({shown}, ... {len(value)} in all)"
            return repr(value)

        shown = [item.name for item in fields(self) if item.repr]
        return f"Registry({', '.join(f'{name}={short(getattr(self, name))}' for name in shown)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Registry) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.genes, self.conditions, self.perturbation_key, self.layer))
