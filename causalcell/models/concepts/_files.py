"""A fitted concept model in a folder and back (:meth:`ConceptModel.save`, ``load``).

The folder holds ``posterior.npz`` (the fit's :class:`causalcell.inference.Posterior`),
``cells.npz`` (the training arrays the guide and the swap counterfactual read: labels, counts
as CSR, size factors, the baseline's centre) and ``concepts.json`` (concepts, levels, parents,
genes, settings, the training combinations, causalcell's version and the folder's
``format_version``), and under ``decoder_posterior="laplace"`` ``readout.npz`` (each gene's
Gaussian readout, :class:`._laplace.Readout`). ``concepts.json`` is written last, so a save
that stopped midway leaves a folder that ``load`` refuses as incomplete; each file is written
atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import scipy.sparse

from causalcell._core.files import write_atomically
from causalcell._version import __version__
from causalcell.inference import AmortizedGuide, Posterior
from causalcell.models.concepts._fit import guide_kwargs, model_kwargs
from causalcell.models.concepts._laplace import Readout
from causalcell.models.concepts._program import concept_model
from causalcell.models.concepts._scm import ConceptSpec

__all__ = ["FORMAT_VERSION", "read_folder", "write_folder"]

#: Version of the folder layout; folders with a larger one are refused (2: ``readout.npz``,
#: which a reader of version 1 would have ignored, answering with another posterior).
FORMAT_VERSION = 2
KIND = "causalcell.ConceptModel"
HEADER_FILE, POSTERIOR_FILE, CELLS_FILE = "concepts.json", "posterior.npz", "cells.npz"
READOUT_FILE = "readout.npz"


def write_folder(model, folder) -> None:
    """Write ``model`` (a fitted :class:`ConceptModel`) to ``folder`` (created if missing)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; pass a folder to save the model in.")
    folder.mkdir(parents=True, exist_ok=True)
    model.posterior.save(folder / POSTERIOR_FILE)
    data = model.posterior.data
    counts = scipy.sparse.csr_matrix(np.asarray(data["counts"]))
    arrays = {
        "labels": np.asarray(data["labels"]),
        "size_factors": np.asarray(data["size_factors"]),
        "log_mean": np.asarray(data["log_mean"]),
        "counts_data": counts.data,
        "counts_indices": counts.indices,
        "counts_indptr": counts.indptr,
        "counts_shape": np.asarray(counts.shape),
    }
    write_atomically(folder / CELLS_FILE, lambda file: np.savez(file, **arrays))
    if model.readout is not None:
        readout = model.readout.arrays()
        write_atomically(folder / READOUT_FILE, lambda file: np.savez(file, **readout))
    spec = model.spec
    header = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "causalcell_version": __version__,
        "concepts": list(spec.names),
        "levels": [list(levels) for levels in spec.levels],
        "parents": [list(parents) for parents in spec.parents],
        "genes": list(model.genes),
        "settings": {**model.settings, "encoder_hidden": list(model.settings["encoder_hidden"])},
        "seen": sorted(list(row) for row in model.seen),
    }
    text = json.dumps(header, indent=1)
    write_atomically(folder / HEADER_FILE, lambda file: file.write(text), binary=False)


def read_folder(folder) -> dict:
    """The constructor arguments of the :class:`ConceptModel` saved in ``folder``.

    Raises
    ------
    FileNotFoundError
        For a folder without a complete save.
    ValueError
        For another kind of folder or a newer ``format_version``.
    """
    folder = Path(folder)
    header_path = folder / HEADER_FILE
    if not header_path.exists():
        raise FileNotFoundError(
            f"{folder} holds no complete concept model ({HEADER_FILE} is missing): save it with "
            "ConceptModel.save(folder)."
        )
    header = json.loads(header_path.read_text(encoding="utf-8"))
    if header.get("kind") != KIND:
        raise ValueError(f"{folder} holds a {header.get('kind')!r}, not a concept model.")
    if header["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"{folder} was saved by causalcell {header['causalcell_version']} in format "
            f"{header['format_version']}; this causalcell reads up to {FORMAT_VERSION}: upgrade."
        )
    spec = ConceptSpec(
        names=tuple(header["concepts"]),
        levels=tuple(tuple(levels) for levels in header["levels"]),
        parents=tuple(tuple(parents) for parents in header["parents"]),
    )
    settings = dict(header["settings"])
    settings["encoder_hidden"] = tuple(settings["encoder_hidden"])
    settings["missing"] = tuple(settings["missing"])
    with np.load(folder / CELLS_FILE) as stored:
        counts = scipy.sparse.csr_matrix(
            (stored["counts_data"], stored["counts_indices"], stored["counts_indptr"]),
            shape=tuple(stored["counts_shape"]),
        )
        data = {
            "labels": jnp.asarray(stored["labels"]),
            "counts": jnp.asarray(counts.toarray()),
            "size_factors": jnp.asarray(stored["size_factors"]),
            "log_mean": jnp.asarray(stored["log_mean"]),
        }
    kwargs = model_kwargs(spec, len(header["genes"]), settings)
    kwargs_of_guide = guide_kwargs(spec, settings, data["log_mean"], np.asarray(data["labels"]))
    guide = AmortizedGuide(concept_model, **kwargs_of_guide)
    posterior = Posterior.load(
        folder / POSTERIOR_FILE, concept_model, data=data, guide=guide, model_kwargs=kwargs
    )
    return {
        "posterior": posterior,
        "spec": spec,
        "genes": tuple(header["genes"]),
        "settings": settings,
        "library_sizes": np.asarray(data["size_factors"]),
        "seen": {tuple(row) for row in header["seen"]},
        "readout": _read_readout(folder, settings),
    }


def _read_readout(folder: Path, settings) -> Readout | None:
    if settings["decoder_posterior"] != "laplace":
        return None
    with np.load(folder / READOUT_FILE) as stored:
        return Readout(loc=stored["loc"], factor=stored["factor"])
