"""The AnnData edge: register an AnnData once, then convert it to the arrays models consume.

:func:`register` reads which keys hold what (perturbation labels, counts layer, gene names, size
factors, covariates), checks the data and returns a :class:`Registry` with the vocabularies
(genes, conditions, targets). :func:`to_arrays` turns any AnnData that matches a registry into a
:class:`ScreenArrays` of plain NumPy arrays. Models never see AnnData. The user's AnnData is never
modified, except that ``register(..., store=True)`` writes the registry to
``adata.uns["causalcell"]``.

A *condition* is a set of perturbed genes, named by its canonical label
(:func:`causalcell.perturbations.canonical_label`): ``"A+B"`` and ``"B+A"`` are one condition.

Examples
--------
>>> import anndata, numpy as np, pandas as pd
>>> adata = anndata.AnnData(
...     np.array([[1.0, 0.0], [2.0, 3.0], [0.0, 4.0]], dtype=np.float32),
...     obs=pd.DataFrame({"perturbation": ["control", "a", "b+a"]}, index=["c0", "c1", "c2"]),
...     var=pd.DataFrame(index=["a", "b"]),
... )
>>> registry = register(adata)
>>> registry.conditions
('control', 'a', 'a+b')
>>> arrays = to_arrays(adata, registry)
>>> arrays.condition_index
array([0, 1, 2], dtype=int32)
>>> arrays.size_factors
array([1., 5., 4.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import anndata
import numpy as np
import pandas as pd
from scipy import sparse

from causalcell.data import _checks as checks
from causalcell.data._concepts import MISSING_LEVEL, ConceptArrays, concept_arrays
from causalcell.data._formats import CONTROL_ALIASES, FORMATS, GUIDES, read_screen
from causalcell.data._registry import (
    Registry,
    as_tuple,
    control_labels,
    kind_table,
    perturbation_table,
    targets_from_column,
)
from causalcell.perturbations import canonical_label, parse_perturbation

__all__ = [
    "CONTROL_ALIASES",
    "FORMATS",
    "GUIDES",
    "MISSING_LEVEL",
    "UNS_KEY",
    "ConceptArrays",
    "Registry",
    "ScreenArrays",
    "concept_arrays",
    "condition_labels",
    "read_screen",
    "register",
    "to_arrays",
]

#: Key of ``adata.uns`` where ``register(..., store=True)`` writes ``Registry.to_dict()``.
UNS_KEY = "causalcell"


class ScreenArrays(NamedTuple):
    """The arrays of one screen, as the models consume them (``n`` cells, ``d`` genes)."""

    counts: np.ndarray  #: float32 ``[n, d]``, dense
    size_factors: np.ndarray  #: float32 ``[n]``
    condition_index: np.ndarray  #: int32 ``[n]``, index into ``conditions``
    condition_targets: np.ndarray  #: bool ``[P, d]``, multi-hot targets of each condition
    covariates: dict[str, np.ndarray]  #: int32 codes (categorical) or float32 values
    genes: tuple[str, ...]
    conditions: tuple[str, ...]


def _check_anndata(adata) -> None:
    if not isinstance(adata, anndata.AnnData):
        raise TypeError(
            f"Expected an anndata.AnnData, got {type(adata).__name__}; build one with "
            "anndata.AnnData(X=counts, obs=cell_table, var=gene_table)."
        )
    checks.check_not_empty(adata)


def _check_keys(adata, perturbation_key, covariate_keys=(), size_factor_key=None) -> None:
    """Fail on a missing ``.obs`` column before reading any data."""
    columns = list(adata.obs.columns)
    checks.require_key(perturbation_key, columns, where="adata.obs", argument="perturbation_key")
    for key in covariate_keys:
        checks.require_key(key, columns, where="adata.obs", argument="covariate_keys")
    if size_factor_key is not None:
        checks.require_key(
            size_factor_key, columns, where="adata.obs", argument="size_factor_key",
            also=", or size_factor_key=None for library sizes",
        )  # fmt: skip


def _factorize_labels(adata, perturbation_key: str, control: tuple[str, ...], separator: str):
    """Codes per cell into the unique labels (first-appearance order) and their target tuples."""
    column = adata.obs[perturbation_key]
    missing = column.isna().to_numpy()
    if missing.any():
        first = str(adata.obs_names[np.flatnonzero(missing)[0]])
        raise ValueError(
            f".obs[{perturbation_key!r}] has {int(missing.sum())} missing (NaN) labels (first: "
            f"cell {first!r}). Label unperturbed cells {control[0]!r} or drop unlabelled cells."
        )
    codes, labels = pd.factorize(column)  # vectorised; no loop over cells
    labels = list(labels)
    try:
        targets = [
            parse_perturbation(label, control=control, separator=separator) for label in labels
        ]
    except (TypeError, ValueError) as error:
        raise type(error)(f"In .obs[{perturbation_key!r}]: {error}") from error
    return codes, labels, targets


def _check_targets_are_genes(adata, codes, labels, label_targets, genes, gene_key) -> None:
    gene_set = set(genes)
    missing = list(
        dict.fromkeys(t for targets in label_targets for t in targets if t not in gene_set)
    )
    if not missing:
        return
    bad_labels = [index for index, targets in enumerate(label_targets) if set(targets) - gene_set]
    cells = int(np.isin(codes, bad_labels).sum())
    source = ".var_names" if gene_key is None else f".var[{gene_key!r}]"
    hint = checks.targets_hint(adata, missing, genes, gene_key)
    raise ValueError(
        f"{len(missing)} perturbation target(s) are not among the genes ({source}): "
        f"{checks.listing(missing)}, in {cells} cell(s).{hint} "
        "Fix: add these genes to .var (e.g. keep perturbed genes when selecting variable genes), "
        f"drop those cells (labels {checks.listing([labels[i] for i in bad_labels], 5)}), or pass "
        "gene_key= naming the .var column the labels use. If some are control labels, pass them "
        "in control=; if they are guides, reagents or drugs, map them to their target genes "
        "with perturbation_targets=."
    )


def _covariate_column(adata, key: str) -> pd.Series:
    """``adata.obs[key]``, checked for missing (or, if numeric, non-finite) values."""
    column = adata.obs[key]
    if checks.is_numeric(column):
        bad = ~np.isfinite(column.to_numpy(dtype=np.float64, na_value=np.nan))
    else:
        bad = column.isna().to_numpy()
    if bad.any():
        first = str(adata.obs_names[np.flatnonzero(bad)[0]])
        raise ValueError(
            f"Covariate .obs[{key!r}] has {int(bad.sum())} missing or non-finite values "
            f"(first: cell {first!r}); fill or drop them."
        )
    return column


def _covariate_categories(adata, covariate_keys: tuple[str, ...]) -> dict[str, tuple]:
    """Categories of categorical covariates; numeric ones are checked finite and left out."""
    categories = {}
    for key in covariate_keys:
        column = _covariate_column(adata, key)
        if checks.is_numeric(column):
            continue
        if isinstance(column.dtype, pd.CategoricalDtype):
            found = column.cat.categories  # declared categories, used or not
        else:
            found = pd.Categorical(column).categories  # sorted unique values
        categories[key] = tuple(found.tolist())
    return categories


def register(
    adata: anndata.AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str | Iterable[str] = "control",
    separator: str = "+",
    layer: str | None = None,
    gene_key: str | None = None,
    size_factor_key: str | None = None,
    covariate_keys: Iterable[str] = (),
    count_data: bool = True,
    perturbation_targets=None,
    perturbation_kinds=None,
    store: bool = False,
) -> Registry:
    """Check an AnnData screen and return the :class:`Registry` that describes it.

    Parameters
    ----------
    adata
        The screen: cells x genes. Not modified unless ``store=True``.
    perturbation_key
        ``.obs`` column of perturbation labels (``"control"``, ``"A"``, ``"A+B"``, ``"A+ctrl"``).
    control
        Label, or collection of labels (e.g. ``("control", "non-targeting")``), of unperturbed
        cells. The first (sorted, for a set) names the control condition.
    separator
        Separator between the members of a combination label.
    layer
        Counts come from ``adata.layers[layer]``, or ``adata.X`` when None.
    gene_key
        ``.var`` column with gene names (the names perturbation targets use); ``.var_names``
        when None.
    size_factor_key
        ``.obs`` column of size factors; when None, the library sizes (row sums of counts), or
        ones for continuous data (``count_data=False``, which have no library size).
    covariate_keys
        ``.obs`` columns of covariates (a single key may be a string). Numeric columns (not bool)
        are numeric covariates; all others are categorical, with the column's categories
        (categorical dtype) or its sorted unique values.
    count_data
        Require finite non-negative integer counts (the count noise models need them). With
        False only finiteness is checked (for normalised data).
    perturbation_targets
        The target gene(s) of perturbations that are not genes themselves (guides, reagents,
        drugs): a mapping ``{"PMA": "PKC", "GATA1_2": "GATA1", "drug": ["A", "B"]}``, a
        DataFrame with columns ``perturbation`` and ``target``, or the name of an ``.obs``
        column holding each cell's target(s) in label syntax (``"GATA1"``, ``"A+B"`` for a
        drug with two targets, or one per member of a combination). Label members absent from
        it must be genes, each perturbing itself (the default for every member). A DataFrame
        may also have a ``kind`` column, read into ``perturbation_kinds``.
    perturbation_kinds
        The intervention kind (``"shift"``, ``"knockdown"``, ``"knockout"``) of perturbations
        whose kind is not the model's default, e.g. ``{"sgGATA1": "knockout"}`` in a CRISPRi
        screen.
    store
        Also write ``registry.to_dict()`` to ``adata.uns["causalcell"]``.

    Returns
    -------
    Registry

    Raises
    ------
    TypeError
        If ``adata`` is not an AnnData.
    KeyError
        If a named ``.obs``/``.var`` column or layer is missing (the message lists those present).
    ValueError
        For empty data, duplicate gene names, missing labels, targets that are not genes, no
        control cells, invalid counts or size factors, missing covariate values.
    """
    _check_anndata(adata)
    control = control_labels(control)
    covariate_keys = as_tuple(covariate_keys)
    _check_keys(adata, perturbation_key, covariate_keys, size_factor_key)
    genes = checks.gene_names(adata, gene_key)
    if isinstance(perturbation_targets, str):  # an .obs column of each cell's target(s)
        perturbation_targets = targets_from_column(
            adata, perturbation_key, perturbation_targets, control, separator
        )
    kinds = dict(kind_table(perturbation_kinds))
    if isinstance(perturbation_targets, pd.DataFrame) and "kind" in perturbation_targets:
        column = perturbation_targets.dropna(subset=["kind"])
        kinds = {**kind_table(dict(zip(column["perturbation"], column["kind"]))), **kinds}
    table = perturbation_table(perturbation_targets, genes, control)
    counts = checks.counts_matrix(adata, layer)
    codes, labels, label_targets = _factorize_labels(adata, perturbation_key, control, separator)
    if not any(len(targets) == 0 for targets in label_targets):
        raise ValueError(
            f"No control cells: no label in .obs[{perturbation_key!r}] is a control label "
            f"(control={control!r}). Labels present: {checks.listing(labels)}."
            f"{checks.control_hint(labels, control)} Pass control= with the label(s) of "
            "unperturbed cells, e.g. control=('control', 'non-targeting')."
        )
    _check_targets_are_genes(adata, codes, labels, label_targets, (*genes, *table), gene_key)
    covariate_categories = _covariate_categories(adata, covariate_keys)
    checks.check_counts(counts, adata=adata, genes=genes, layer=layer, count_data=count_data)
    checks.size_factors(adata, counts, size_factor_key, count_data)
    canonical = [canonical_label(t, control=control[0], separator=separator) for t in label_targets]
    registry = Registry(
        perturbation_key=perturbation_key,
        control=control,
        separator=separator,
        layer=layer,
        gene_key=gene_key,
        size_factor_key=size_factor_key,
        covariate_keys=covariate_keys,
        count_data=bool(count_data),
        genes=genes,
        conditions=tuple(dict.fromkeys([control[0], *canonical])),
        covariate_categories=covariate_categories,
        perturbation_targets=table,
        perturbation_kinds=kinds,
    )
    if store:
        adata.uns[UNS_KEY] = registry.to_dict()
    return registry


def _condition_index(adata, registry: Registry) -> np.ndarray:
    codes, labels, label_targets = _factorize_labels(
        adata, registry.perturbation_key, registry.control, registry.separator
    )
    position = {condition: index for index, condition in enumerate(registry.conditions)}
    canonical = [registry.canonical_label(targets) for targets in label_targets]
    unseen = [index for index, condition in enumerate(canonical) if condition not in position]
    if unseen:
        cells = int(np.isin(codes, unseen).sum())
        raise ValueError(
            f"{len(unseen)} condition(s) in .obs[{registry.perturbation_key!r}] are not in the "
            f"registry: {checks.listing([labels[index] for index in unseen])} ({cells} cell(s)). "
            "Register an AnnData that contains them, or drop those cells."
        )
    lookup = np.array([position[condition] for condition in canonical], dtype=np.int32)
    return lookup[codes]


def condition_labels(adata: anndata.AnnData, registry: Registry) -> np.ndarray:
    """Return the canonical condition label of each cell (a NumPy string array ``[n]``).

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> adata = anndata.AnnData(
    ...     np.ones((2, 2), dtype=np.float32),
    ...     obs=pd.DataFrame({"perturbation": ["b+a", "control"]}, index=["c0", "c1"]),
    ...     var=pd.DataFrame(index=["a", "b"]),
    ... )
    >>> condition_labels(adata, register(adata)).tolist()
    ['a+b', 'control']
    """
    _check_anndata(adata)
    _check_keys(adata, registry.perturbation_key)
    return np.asarray(registry.conditions, dtype=str)[_condition_index(adata, registry)]


def _covariate_arrays(adata, registry: Registry) -> dict[str, np.ndarray]:
    arrays = {}
    for key in registry.covariate_keys:
        column = _covariate_column(adata, key)
        if key not in registry.covariate_categories:
            if not checks.is_numeric(column):
                raise ValueError(f"Covariate .obs[{key!r}] was registered as numeric; it is not.")
            arrays[key] = column.to_numpy(dtype=np.float32)
            continue
        categories = registry.covariate_categories[key]
        codes = pd.Categorical(column, categories=categories).codes.astype(np.int32)
        if (codes < 0).any():
            unseen = pd.unique(column[codes < 0]).tolist()
            raise ValueError(
                f"Covariate .obs[{key!r}] has values not in the registry: {checks.listing(unseen)} "
                f"(registered: {checks.listing(categories)}). Drop those cells or register again."
            )
        arrays[key] = codes
    return arrays


def to_arrays(adata: anndata.AnnData, registry: Registry) -> ScreenArrays:
    """Convert an AnnData that matches ``registry`` into :class:`ScreenArrays`.

    The AnnData may be the registered one or another with the same genes (a held-out split);
    its conditions must be among ``registry.conditions``. Counts are densified (float32).

    Raises
    ------
    ValueError
        If the genes differ from ``registry.genes`` (names the missing and extra ones), a cell
        has a condition the registry has not seen, or the data fail the checks of
        :func:`register`.
    """
    _check_anndata(adata)
    _check_keys(adata, registry.perturbation_key, registry.covariate_keys, registry.size_factor_key)
    genes = checks.gene_names(adata, registry.gene_key)
    if genes != registry.genes:
        present, registered = set(genes), set(registry.genes)
        missing = [gene for gene in registry.genes if gene not in present]
        extra = [gene for gene in genes if gene not in registered]
        raise ValueError(
            f"The AnnData's genes do not match the registry: missing {checks.listing(missing)}, "
            f"extra {checks.listing(extra)}"
            f"{' (same genes, other order)' if not missing and not extra else ''}. Select and "
            "order them with adata[:, list(registry.genes)] when none is missing, or register "
            "this AnnData."
        )
    counts = checks.counts_matrix(adata, registry.layer)
    checks.check_counts(
        counts, adata=adata, genes=genes, layer=registry.layer, count_data=registry.count_data
    )
    size_factors = checks.size_factors(adata, counts, registry.size_factor_key, registry.count_data)
    if sparse.issparse(counts):
        dense = counts.toarray().astype(np.float32, copy=False)
    else:
        dense = np.array(counts, dtype=np.float32)  # a copy: never a view of the AnnData
    return ScreenArrays(
        counts=dense,
        size_factors=size_factors.astype(np.float32),
        condition_index=_condition_index(adata, registry),
        condition_targets=registry.condition_targets.copy(),
        covariates=_covariate_arrays(adata, registry),
        genes=registry.genes,
        conditions=registry.conditions,
    )
