"""Screens in other tools' conventions, mapped to causalcell's labels (:func:`read_screen`).

Conventions read (facts of each format; the mapping is ours):

- **scPerturb** (Peidli et al. 2024): ``obs["perturbation"]`` with ``"control"`` for control
  cells, several targets joined by ``"_"`` (``"CBL_CNN1"``), and ``obs["nperts"]``, the number
  of targets of each cell (0 for controls).
- **GEARS / Norman-style** (Roohani et al. 2024): ``obs["condition"]`` with ``"ctrl"`` for
  controls, a single target padded with ``"ctrl"`` (``"CBL+ctrl"`` or ``"ctrl+CBL"``) and
  doubles ``"CBL+CNN1"``.
- Guide-level labels (``"GATA1_2"``, ``"GATA1-sg1"``): a gene followed by a guide suffix; the
  gene is the target.
- Control aliases: ``control``, ``ctrl``, ``non-targeting``, ``non_targeting``,
  ``nontargeting``, ``NT``, ``safe-targeting``, ``negative_control`` (any case).

References
----------
Peidli, S. et al. (2024). scPerturb: harmonized single-cell perturbation data. Nature Methods
21, 531-540.
Roohani, Y., Huang, K. & Leskovec, J. (2024). Predicting transcriptional outcomes of novel
multigene perturbations with GEARS. Nature Biotechnology 42, 927-935.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from causalcell.perturbations import canonical_label

__all__ = ["CONTROL_ALIASES", "FORMATS", "GUIDES", "read_screen"]

#: Labels of control cells in common screens (compared case-insensitively).
CONTROL_ALIASES = (
    "control",
    "ctrl",
    "non-targeting",
    "non_targeting",
    "nontargeting",
    "nt",
    "safe-targeting",
    "negative_control",
)
#: ``format=`` values of :func:`read_screen`.
FORMATS = ("auto", "scperturb", "gears", "causalcell")
#: ``guides=`` values of :func:`read_screen`: a guide becomes its gene, or stays itself.
GUIDES = ("genes", "perturbations")
#: Where each format keeps its labels, and how it joins several targets.
_COLUMNS = {"scperturb": "perturbation", "gears": "condition", "causalcell": "perturbation"}
_SEPARATORS = {"scperturb": "_", "gears": "+", "causalcell": "+"}
#: A guide suffix after a gene name: ``_2``, ``-sg1``, ``.g3``, ``_guide2``, ``_a``.
_GUIDE_SUFFIX = re.compile(r"^(?P<gene>.+?)[_\-.](?:sg|g|guide|sgrna)?[0-9a-z]{1,3}$", re.I)


def _detect(obs: pd.DataFrame) -> str:
    if "condition" in obs and "perturbation" not in obs:
        labels = obs["condition"].astype(str)
        if labels.str.lower().str.contains(r"(?:^|\+)ctrl(?:\+|$)").any():
            return "gears"
    if "perturbation" in obs and "nperts" in obs:
        return "scperturb"
    if "perturbation" in obs:
        return "causalcell"
    raise ValueError(
        "read_screen found no perturbation labels: .obs has neither 'perturbation' (scPerturb, "
        "causalcell) nor 'condition' with 'ctrl' labels (GEARS). Pass perturbation_key= and "
        "format=."
    )


def _target(token: str, genes: set[str]) -> tuple[str | None, str]:
    """The gene a label member names and how: ``(gene, "gene" | "guide")``, ``(None,
    "control")``, or ``(token, "unknown")``."""
    if token.lower() in CONTROL_ALIASES or token == "":
        return None, "control"
    if token in genes:
        return token, "gene"
    match = _GUIDE_SUFFIX.match(token)
    if match and match["gene"] in genes:
        return match["gene"], "guide"
    return token, "unknown"


def _map_label(label: str, separator: str, genes: set[str], count) -> tuple[str, str, str]:
    """Canonical label of the targeted genes, how it was read (``"control"``, ``"gene"``,
    ``"guide"``, ``"combination"``, ``"unknown"``) and the canonical label of the members as
    named (guides kept)."""
    if label in genes:  # a gene whose name contains the separator (e.g. "HLA-A" with "-")
        return label, "gene", label
    members = [label] if count == 1 else label.split(separator)
    members = [member.strip() for member in members]
    mapped = [_target(member, genes) for member in members]
    if any(kind == "unknown" for _, kind in mapped) and count is None and len(members) > 1:
        whole = _target(label.strip(), genes)  # "GATA1_2": a guide, not two members
        if whole[1] != "unknown":
            members, mapped = [label.strip()], [whole]
    targets = [gene for gene, kind in mapped if kind != "control"]
    named = [member for member, (_, kind) in zip(members, mapped, strict=True) if kind != "control"]
    kinds = {kind for _, kind in mapped}
    if "unknown" in kinds:
        return label, "unknown", label
    if not targets:
        return "control", "control", "control"
    as_named = canonical_label(named)
    if len(set(targets)) > 1:
        return canonical_label(targets), "combination", as_named
    return targets[0], "guide" if "guide" in kinds else "gene", as_named


def read_screen(
    source,
    format: str = "auto",
    *,
    perturbation_key: str | None = None,
    gene_key: str | None = None,
    guides: str = "genes",
) -> anndata.AnnData:
    """A screen in scPerturb, GEARS or guide-level conventions, with causalcell's labels.

    Every label becomes ``"control"``, a gene (``"GATA1"``) or a combination of genes
    (``"CEBPA+GATA1"``); guide-level labels map to their gene; control aliases to
    ``"control"``. The result shares ``X``, layers and ``.var`` with ``source`` (nothing is
    copied or changed there) and has a new ``.obs``: ``"perturbation"`` holds the mapped
    labels, ``"perturbation_original"`` the labels as read and ``"perturbation_target"`` the
    targeted genes of each label. ``.uns["read_screen"]`` reports
    the mapping: the format, the column, and per original label its mapped label, how it was
    read and its cells. Labels that map to no gene are kept as they were and listed there
    (``register`` then names them).

    Parameters
    ----------
    source
        An AnnData or the path of an ``.h5ad`` file.
    format
        ``"scperturb"``, ``"gears"``, ``"causalcell"`` (labels already ``"A+B"``; only aliases
        and guides are mapped) or ``"auto"``: GEARS when ``.obs`` has ``"condition"`` with
        ``ctrl`` labels, scPerturb when it has ``"perturbation"`` and ``"nperts"``, else
        causalcell.
    perturbation_key
        The ``.obs`` column of labels, where it is not the format's (``"perturbation"``;
        ``"condition"`` for GEARS).
    gene_key
        A ``.var`` column of gene names the labels use (default: ``.var_names``).
    guides
        ``"genes"``: a guide-level label becomes its gene (every guide of a gene is one
        perturbation); ``"perturbations"``: guides keep their names in ``"perturbation"``
        (``"GATA1_2"``), so that ``LCD.fit(..., perturbation_targets="perturbation_target")``
        learns one intervention per guide around its gene's.

    Raises
    ------
    FileNotFoundError
        If ``source`` is a path that does not exist.
    ValueError
        For an unknown format or a missing column.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> gears = anndata.AnnData(
    ...     np.ones((4, 2), np.float32),
    ...     obs=pd.DataFrame({"condition": ["ctrl", "A+ctrl", "ctrl+B", "A+B"]},
    ...                      index=["c0", "c1", "c2", "c3"]),
    ...     var=pd.DataFrame(index=["A", "B"]))
    >>> list(read_screen(gears).obs["perturbation"])
    ['control', 'A', 'B', 'A+B']
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    if guides not in GUIDES:
        raise ValueError(f"guides must be one of {GUIDES}, got {guides!r}.")
    if not isinstance(source, anndata.AnnData):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (or is not a file).")
        source = anndata.read_h5ad(path)
    obs = source.obs
    if format == "auto":
        format = _detect(obs) if perturbation_key is None else "causalcell"
    column = perturbation_key or _COLUMNS[format]
    if column not in obs:
        raise ValueError(
            f".obs has no column {column!r} of perturbation labels ({format} format); pass "
            f"perturbation_key= (columns: {list(obs.columns)[:10]})."
        )
    genes = set(source.var_names if gene_key is None else source.var[gene_key].astype(str))
    labels = obs[column].astype(str)
    counts = None
    if format == "scperturb" and "nperts" in obs:
        counts = pd.to_numeric(obs["nperts"], errors="coerce")
    rows = []
    mapped = np.empty(len(labels), dtype=object)
    targeted = np.empty(len(labels), dtype=object)
    keys = labels if counts is None else labels + "\x00" + counts.astype(str)
    for positions in keys.groupby(keys, sort=False).indices.values():
        label = labels.iloc[positions[0]]
        count = None if counts is None else counts.iloc[positions[0]]
        count = None if count is None or not np.isfinite(count) else int(count)
        target, how, as_named = _map_label(label, _SEPARATORS[format], genes, count)
        chosen = as_named if guides == "perturbations" else target
        mapped[positions], targeted[positions] = chosen, target
        rows.append({"original": label, "mapped": chosen, "read_as": how, "cells": len(positions)})
    new_obs = obs.copy()
    new_obs["perturbation_original"] = labels.to_numpy()
    new_obs["perturbation"] = pd.Categorical(mapped, categories=list(dict.fromkeys(mapped)))
    new_obs["perturbation_target"] = targeted
    report = pd.DataFrame(rows).sort_values("cells", ascending=False, kind="stable")
    result = anndata.AnnData(
        X=source.X,
        obs=new_obs,
        var=source.var,
        layers=dict(source.layers),
        obsm=dict(source.obsm),
        uns=dict(source.uns),
    )
    result.uns["read_screen"] = {
        "format": format,
        "column": column,
        "labels": {name: report[name].to_numpy() for name in report.columns},
        "unmapped": report.loc[report["read_as"] == "unknown", "original"].to_numpy(),
    }
    return result
