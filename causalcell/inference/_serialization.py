"""Pytrees to files and back: one ``.npz`` archive of array leaves plus a JSON header.

The archive holds one member per leaf of the flattened pytree (``leaf_0``, ``leaf_1``, ...) and a
member ``header`` with UTF-8 JSON: the file ``format_version``, the causalcell version that wrote
it, a table of the leaves (``path`` as :func:`jax.tree_util.keystr` writes it, ``shape``,
``dtype``) and the caller's ``metadata``. Reading needs no pickle: the structure of the tree comes
from a *template* the caller rebuilds (for instance by tracing a guide), so equinox modules and
other registered pytrees round-trip; the leaf table only checks that template and file agree.
Writing is atomic (a temporary file in the same folder, then :func:`os.replace`), so a crash
never leaves a half-written checkpoint behind. What a saved posterior records besides (its
model's sites, its guide) lives in :mod:`causalcell.inference._posterior_files`.

Examples
--------
>>> import tempfile, pathlib
>>> import jax.numpy as jnp
>>> tree = {"loc": jnp.zeros(3), "scale": jnp.ones((2, 2))}
>>> path = pathlib.Path(tempfile.mkdtemp()) / "tree.npz"
>>> save_tree(path, tree, {"step": 10})
>>> loaded, metadata = load_tree(path, template=tree)
>>> loaded["scale"].shape, metadata
((2, 2), {'step': 10})
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from causalcell._core.files import write_atomically
from causalcell._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "load_tree",
    "read_header",
    "read_metadata",
    "save_tree",
]

#: Version of the file layout written by :func:`save_tree`; files with a larger one are refused.
FORMAT_VERSION = 1

_HEADER = "header"


def _leaf_name(position: int) -> str:
    return f"leaf_{position}"


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _dtype_string(leaf) -> str:
    """``'<f4'``-style dtype of an array, scalar or ShapeDtypeStruct; ``'key<fry>'`` for keys."""
    if _is_key(leaf):
        return str(leaf.dtype)
    dtype = getattr(leaf, "dtype", None)
    return np.dtype(np.asarray(leaf).dtype if dtype is None else dtype).str


def save_tree(path, tree, metadata: Mapping | None = None) -> None:
    """Write the array leaves of ``tree`` and JSON ``metadata`` to ``path``, atomically.

    Parameters
    ----------
    path
        Destination file; written exactly there (no suffix is added), replacing any old file
        only once the new one is complete.
    tree
        Any pytree of arrays (dicts, tuples, equinox modules; typed PRNG keys are kept as key
        data and re-wrapped on loading). ``None`` nodes are empty subtrees, as in JAX.
    metadata
        JSON-serialisable mapping stored with the leaves (numpy scalars are converted).

    Raises
    ------
    TypeError
        If ``metadata`` is not JSON-serialisable.
    """
    path = Path(path)
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    arrays, table = {}, []
    for position, (key_path, leaf) in enumerate(leaves):
        array = np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
        arrays[_leaf_name(position)] = array
        entry = {"path": jax.tree_util.keystr(key_path), "shape": list(np.shape(leaf))}
        entry["dtype"] = _dtype_string(leaf)
        if _is_key(leaf):
            entry["key_impl"] = str(jax.random.key_impl(leaf))
        table.append(entry)
    header = {
        "format_version": FORMAT_VERSION,
        "causalcell_version": __version__,
        "leaves": table,
        "metadata": dict(metadata or {}),
    }
    try:
        text = json.dumps(header, default=_json_default, sort_keys=True)
    except TypeError as error:
        raise TypeError(
            f"The metadata saved with a tree must be JSON-serialisable: {error}"
        ) from None
    arrays[_HEADER] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    write_atomically(path, lambda file: np.savez(file, **arrays))


def _json_default(value):
    if isinstance(value, np.generic | np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def read_header(path) -> dict:
    """The whole JSON header of a file written by :func:`save_tree`, after its version check.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not such an archive (or a truncated or corrupted one), or its
        ``format_version`` is unknown or newer than :data:`FORMAT_VERSION`.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file).")
    try:
        with np.load(Path(path), allow_pickle=False) as archive:
            if _HEADER not in archive.files:
                raise ValueError(f"{path} was not written by causalcell (no {_HEADER!r} entry).")
            header = json.loads(archive[_HEADER].tobytes().decode("utf-8"))
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(
            f"{path} is not a file causalcell wrote, or it is truncated or corrupted; save it "
            "again (a checkpoint: delete it to start the fit afresh)."
        ) from None
    except ValueError as error:
        if "pickle" not in str(error):  # numpy's message for a file that is not an archive
            raise
        raise ValueError(f"{path} is not a file causalcell wrote (not an .npz archive).") from None
    version = header.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{path} has file format_version {version!r}; this causalcell "
            f"({header.get('causalcell_version', 'unknown')} wrote it) reads versions 1 to "
            f"{FORMAT_VERSION}. Upgrade causalcell to read it."
        )
    return header


def read_metadata(path) -> dict:
    """The ``metadata`` mapping stored by :func:`save_tree` (after the version check)."""
    return read_header(path)["metadata"]


def load_tree(path, template=None, *, allow_shape_change: Sequence[str] = ()):
    """Read a tree written by :func:`save_tree`: ``(tree, metadata)``.

    Parameters
    ----------
    path
        File written by :func:`save_tree`.
    template
        A pytree with the structure to rebuild; its leaves may be arrays or
        :class:`jax.ShapeDtypeStruct` (for instance from :func:`jax.eval_shape`). ``None``
        returns the leaves as a flat ``{path: array}`` dict, ``path`` as in the leaf table.
    allow_shape_change
        Top-level keys of a dict template (e.g. ``("losses",)``) whose leaves are taken as
        stored, whatever their shape and dtype (histories whose length the template cannot know).

    Returns
    -------
    tree, metadata
        The tree (leaves as ``jax.Array``, bit for bit as saved) and the stored metadata.

    Raises
    ------
    ValueError
        If the format version is unsupported, or the template's leaves (paths, shapes, dtypes)
        differ from the file's; the message lists the differences.
    """
    header = read_header(path)
    table = header["leaves"]
    with np.load(Path(path), allow_pickle=False) as archive:
        leaves = []
        for position, entry in enumerate(table):
            array = jnp.asarray(archive[_leaf_name(position)])
            if "key_impl" in entry:
                array = jax.random.wrap_key_data(array, impl=entry["key_impl"])
            leaves.append(array)
    if template is None:
        return {entry["path"]: leaf for entry, leaf in zip(table, leaves)}, header["metadata"]
    expected, treedef = jax.tree_util.tree_flatten_with_path(template)
    free = tuple(
        jax.tree_util.keystr((jax.tree_util.DictKey(name),)) for name in allow_shape_change
    )

    def row(path: str, shape, dtype: str) -> tuple:
        return (path,) if path.startswith(free) else (path, tuple(shape), dtype)

    wanted = [
        row(jax.tree_util.keystr(key_path), np.shape(leaf), _dtype_string(leaf))
        for key_path, leaf in expected
    ]
    stored = [row(entry["path"], entry["shape"], entry["dtype"]) for entry in table]
    if wanted != stored:
        raise ValueError(f"{path} does not hold the expected tree: {_describe(wanted, stored)}")
    return jax.tree_util.tree_unflatten(treedef, leaves), header["metadata"]


def _describe(wanted: list, stored: list) -> str:
    """Differences between two leaf tables, as one readable line."""
    expected, found = {row[0]: row[1:] for row in wanted}, {row[0]: row[1:] for row in stored}
    parts = []
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    if missing:
        parts.append(f"missing leaves {missing}")
    if extra:
        parts.append(f"unexpected leaves {extra}")
    for name in expected.keys() & found.keys():
        if expected[name] != found[name]:
            parts.append(
                f"{name} has shape {found[name][0]} and dtype {found[name][1]} in the file but "
                f"{expected[name][0]} and {expected[name][1]} are expected"
            )
    return "; ".join(sorted(parts)) or "the leaves come in a different order"


#: A dict key in a path written by ``jax.tree_util.keystr``: ``['name']`` (the key's repr).
DICT_KEY = r"\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]"
