"""A fitted LCD in a folder and back (:meth:`LCD.save`, :meth:`LCD.load`).

The folder holds three files:

- ``posterior.npz``: the fit's :class:`causalcell.inference.Posterior` (guide parameters, loss
  history, settings, and the program's identity, checked on loading);
- ``screen.npz``: the training arrays in AnnData gene order (counts as CSR, size factors,
  each cell's condition) and the prior mask, from which the guide is rebuilt as the fit built
  it (its messages and condition means come from the counts);
- ``lcd.json``: the model's settings (drift family, intervention kind, registry, gene space,
  guide family), the causalcell version and folder ``format_version``, a fingerprint of the
  training data and a SHA-256 checksum of each other file.

``lcd.json`` is written last, so a save that stopped midway leaves a folder that
:meth:`SavedLCD.load` refuses as incomplete rather than a stale model; every file is written
atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import scipy.sparse

from causalcell._core.files import write_atomically
from causalcell._version import __version__
from causalcell.data import Registry, ScreenArrays
from causalcell.inference import load_tree, save_tree
from causalcell.models.lcd._backends import backend_named
from causalcell.models.lcd._fit import noise_model, prepare_screen
from causalcell.models.lcd._gene_space import GeneSpace

__all__ = ["FORMAT_VERSION", "SavedLCD", "check_folder", "data_fingerprint", "read_header"]

#: Version of the folder layout; folders with a larger one are refused.
FORMAT_VERSION = 1
KIND = "causalcell.LCD"
HEADER_FILE = "lcd.json"
POSTERIOR_FILE = "posterior.npz"
SCREEN_FILE = "screen.npz"


def data_fingerprint(counts, size_factors, condition_index) -> str:
    """SHA-256 of the training arrays (AnnData gene order), as a hex string."""
    digest = hashlib.sha256()
    for array in (counts, size_factors, condition_index):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_folder(directory) -> Path:
    """``directory`` as a path LCD.save can write: a folder or nothing yet (checked before any
    work, e.g. by the command line before a fit)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"{directory} is a file; a fitted LCD is saved to a folder: give a folder path."
        )
    if directory.is_dir() and any(directory.iterdir()) and not (directory / HEADER_FILE).exists():
        raise ValueError(
            f"{directory} is a folder with other files in it; save the model to a new or empty "
            "folder (or to one that holds a saved LCD, which is replaced)."
        )
    return directory


def _save(model, directory) -> None:
    directory = check_folder(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / HEADER_FILE).unlink(missing_ok=True)  # incomplete until the header is back
    data = model.posterior.data
    counts = np.asarray(data["counts"])[:, model.space.inverse]  # AnnData gene order
    sizes = np.asarray(data["size_factors"])
    conditions = np.asarray(data["condition_index"])
    sparse = scipy.sparse.csr_matrix(counts)
    if sparse.nnz >= 2**31:
        raise ValueError(f"{sparse.nnz} nonzero counts are more than a saved LCD holds (2^31).")
    screen = {
        "counts_data": sparse.data,
        "counts_indices": sparse.indices.astype(np.int32),
        "counts_indptr": sparse.indptr.astype(np.int32),
        "size_factors": sizes,
        "condition_index": conditions,
    }
    if model.prior_mask is not None:
        screen["prior_mask"] = model.space.gene_mask(model.prior_mask)
    save_tree(directory / SCREEN_FILE, screen, {"shape": list(counts.shape)})
    model.posterior.save(directory / POSTERIOR_FILE)
    header = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "causalcell_version": __version__,
        "drift": model.drift_kind,
        "intervention": model.intervention,
        "registry": model.registry.to_dict(),
        "space": {"modelled": model.space.modelled.tolist(), "programs": model.space.programs},
        "settings": model.settings,
        "data_fingerprint": data_fingerprint(counts, sizes, conditions),
        "files": {name: _checksum(directory / name) for name in (POSTERIOR_FILE, SCREEN_FILE)},
    }
    text = json.dumps(header, indent=1, sort_keys=True)
    write_atomically(directory / HEADER_FILE, lambda file: file.write(text), binary=False)


def read_header(directory) -> dict:
    """The checked ``lcd.json`` of a saved LCD, its other files checked against it."""
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(
            f"{directory} does not exist: give the folder that LCD.save (or `causalcell fit "
            "--output`) wrote."
        )
    if not directory.is_dir():
        raise ValueError(f"{directory} is a file; a saved LCD is a folder (LCD.save).")
    path = directory / HEADER_FILE
    if not path.exists():
        raise ValueError(
            f"{directory} holds no {HEADER_FILE}: it is not a saved LCD, or its save did not "
            "finish; save the model again."
        )
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is corrupted ({error}); save the model again.") from None
    if not isinstance(header, dict) or header.get("kind") != KIND:
        raise ValueError(f"{path} does not describe a saved LCD; save the model again.")
    version = header.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{directory} has folder format_version {version!r} (written by causalcell "
            f"{header.get('causalcell_version', 'unknown')}); this causalcell ({__version__}) "
            f"reads versions 1 to {FORMAT_VERSION}. Upgrade causalcell to load it."
        )
    for name, checksum in header["files"].items():
        if not (directory / name).exists():
            raise ValueError(f"{directory / name} is missing; save the model again.")
        if _checksum(directory / name) != checksum:
            raise ValueError(
                f"{directory / name} is not the file LCD.save wrote (its checksum differs: "
                "changed or corrupted); save the model again."
            )
    return header


def _load(cls, directory):
    directory = Path(directory)
    header = read_header(directory)
    registry = Registry.from_dict(header["registry"])
    space = GeneSpace(
        registry.genes, np.asarray(header["space"]["modelled"]), header["space"]["programs"]
    )
    stored, metadata = load_tree(directory / SCREEN_FILE)
    stored = {path.strip("[]'\""): np.asarray(value) for path, value in stored.items()}
    counts = scipy.sparse.csr_matrix(
        (stored["counts_data"], stored["counts_indices"], stored["counts_indptr"]),
        shape=tuple(metadata["shape"]),
    ).toarray()
    arrays = ScreenArrays(
        counts,
        stored["size_factors"],
        stored["condition_index"],
        registry.condition_targets,
        {},
        registry.genes,
        registry.conditions,
    )
    fingerprint = data_fingerprint(counts, arrays.size_factors, arrays.condition_index)
    if fingerprint != header["data_fingerprint"]:
        raise ValueError(f"{directory / SCREEN_FILE} does not hold the training data it should.")
    intervention, settings = header["intervention"], header["settings"]
    noise = noise_model(settings["noise"])
    screen = prepare_screen(
        space.reorder(arrays), space, registry, intervention, stored.get("prior_mask"), noise
    )
    posterior = backend_named(header["drift"]).problem(screen, settings)
    posterior = posterior.load(directory / POSTERIOR_FILE)
    return cls(
        posterior,
        registry,
        intervention,
        arrays.size_factors,
        screen.prior_mask,
        space,
        header["drift"],
        settings,
    )


class SavedLCD:
    """Saving and loading of :class:`LCD` (its base class; the folder is described above)."""

    @staticmethod
    def check_folder(directory) -> Path:
        """``directory`` as a path, if :meth:`save` can write there (raises as it would):
        check it before a long fit."""
        return check_folder(directory)

    def save(self, directory) -> None:
        """Write the fitted model to the folder ``directory`` (created; a saved LCD there is
        replaced): posterior, settings, gene space, registry, training data and checksums.
        :meth:`load` gives back a model whose predictions and effects are bit-identical for
        the same keys.

        Raises
        ------
        ValueError
            If ``directory`` is a file, or a folder with other files in it.
        """
        _save(self, directory)

    @classmethod
    def load(cls, directory):
        """Read a model written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If ``directory`` does not exist.
        ValueError
            If it is not a saved LCD, is incomplete (a file missing, or a save that did not
            finish), corrupted (a checksum differs), or written in a newer folder format.
        """
        return _load(cls, directory)
