"""What every causal query returns: posterior draws of named quantities (DESIGN 6).

A :class:`CausalResult` holds, for each named quantity (an expression, an effect, a latent), an
array of posterior draws whose leading axis is ``sample``. The axes after it have names (``dims``)
and optionally labels (``coords``), as in ArviZ and xarray: a counterfactual query, for instance,
returns draws of shape ``[sample, world, unit]`` with ``coords["world"] = ["factual",
"counterfactual"]``. Summaries reduce over the sample axis and are computed in numpy, so their
values and column names do not depend on the installed ArviZ; :meth:`CausalResult.to_arviz`
hands the draws to ArviZ as a one-chain posterior.

Examples
--------
>>> import numpy as np
>>> draws = np.array([[[1.0, 2.0], [2.0, 6.0]], [[3.0, 4.0], [4.0, 8.0]]])  # sample, world, gene
>>> result = CausalResult(
...     {"expression": draws},
...     dims={"expression": ("world", "gene")},
...     coords={"world": ["factual", "counterfactual"], "gene": ["GATA1", "SPI1"]},
... )
>>> result
CausalResult(2 samples)
  expression  (world: 2, gene: 2)
>>> result.mean("expression")
array([[2., 3.],
       [3., 7.]])
>>> result.sel(world="counterfactual").mean("expression")
array([3., 7.])
>>> result.summary(prob=0.5)[["quantity", "world", "gene", "mean"]]
     quantity           world   gene  mean
0  expression         factual  GATA1   2.0
1  expression         factual   SPI1   3.0
2  expression  counterfactual  GATA1   3.0
3  expression  counterfactual   SPI1   7.0
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from causalcell._core import arviz_adapter as _arviz

__all__ = ["SUMMARY_STATISTICS", "CausalResult"]

#: Columns of :meth:`CausalResult.summary` after ``quantity`` and the dimension columns.
SUMMARY_STATISTICS = ("mean", "sd", "hdi_lower", "hdi_upper")

# Names a dimension may not take: the sample axis, ArviZ's (chain, draw) axes, and the other
# columns of the summary and long-format tables, which would otherwise be overwritten.
_RESERVED_DIMS = frozenset({"sample", "chain", "draw", "quantity", "value", *SUMMARY_STATISTICS})


class CausalResult:
    """Posterior draws of named quantities, each with a leading ``sample`` axis.

    Parameters
    ----------
    draws
        ``{name: array}`` with arrays (numpy, JAX or nested sequences) of shape ``[sample, ...]``;
        every quantity has the same number of samples. The arrays are copied into read-only
        numpy arrays, so neither side can change the other's values later.
    dims
        ``{name: (dimension, ...)}`` naming the axes after ``sample``; a quantity left out gets
        ``f"{name}_dim_{k}"`` (ArviZ's default). A dimension shared by several quantities must
        have the same size in each.
    coords
        ``{dimension: labels}``; a dimension left out is labelled ``0, 1, ...``.
    attrs
        Free-form metadata (the query, the interventions, ...), kept by :meth:`sel`.

    Raises
    ------
    ValueError
        No quantities; an array without samples or with a different number of samples than
        the others; dims of the wrong length, naming an unknown quantity or a reserved
        name (``sample``, ``chain``, ``draw``, ``quantity``, ``value``, or a summary column);
        a dimension with two sizes; coords of the wrong length or for an unknown dimension.

    Notes
    -----
    ``len(result)``, ``iter(result)`` and ``name in result`` follow the quantities, like a
    mapping from names to draws; :attr:`num_samples` counts draws.

    Examples
    --------
    >>> result = CausalResult({"effect": [[0.5, -1.0], [1.5, -3.0]]}, attrs={"query": "effect"})
    >>> result.names, result.num_samples, result.dims
    (('effect',), 2, {'effect': ('effect_dim_0',)})
    >>> result.std("effect")
    array([0.70710678, 1.41421356])
    """

    def __init__(
        self,
        draws: Mapping[str, Any],
        *,
        dims: Mapping[str, Sequence[str]] | None = None,
        coords: Mapping[str, Sequence] | None = None,
        attrs: Mapping | None = None,
    ):
        if not draws:
            raise ValueError("A CausalResult needs at least one quantity.")
        dims, coords = dict(dims or {}), dict(coords or {})
        self._draws: dict[str, np.ndarray] = {}
        for name, values in draws.items():
            array = np.array(values, copy=True)
            array.flags.writeable = False
            if array.ndim == 0 or array.shape[0] == 0:
                raise ValueError(f"Quantity {name!r} has no samples (shape {array.shape}).")
            self._draws[name] = array
        first, *_ = self._draws
        for name, array in self._draws.items():
            if array.shape[0] != self._draws[first].shape[0]:
                raise ValueError(
                    f"Quantity {name!r} has {array.shape[0]} samples but {first!r} has "
                    f"{self._draws[first].shape[0]}; every quantity needs the same number."
                )
        unknown = sorted(set(dims) - set(self._draws))
        if unknown:
            raise ValueError(
                f"dims name unknown quantities {unknown}; the quantities are {self.names}."
            )
        self._dims: dict[str, tuple[str, ...]] = {}
        sizes: dict[str, tuple[int, str]] = {}
        for name, array in self._draws.items():
            names = dims.get(name, [f"{name}_dim_{k}" for k in range(array.ndim - 1)])
            names = (names,) if isinstance(names, str) else tuple(names)
            if len(names) != array.ndim - 1:
                raise ValueError(
                    f"Quantity {name!r} has {array.ndim - 1} axes after sample "
                    f"(shape {array.shape}) but dims {names}."
                )
            for dim, size in zip(names, array.shape[1:]):
                if dim in _RESERVED_DIMS:
                    raise ValueError(f"Dimension name {dim!r} of {name!r} is reserved.")
                if sizes.setdefault(dim, (size, name))[0] != size:
                    other_size, other = sizes[dim]
                    raise ValueError(
                        f"Dimension {dim!r} has size {size} in {name!r} but {other_size} in "
                        f"{other!r}."
                    )
            self._dims[name] = names
        unknown = sorted(set(coords) - set(sizes))
        if unknown:
            raise ValueError(f"coords name unknown dimensions {unknown}; known: {sorted(sizes)}.")
        self._coords: dict[str, tuple] = {}
        for dim, (size, name) in sizes.items():
            labels = tuple(coords.get(dim, range(size)))
            if len(labels) != size:
                raise ValueError(
                    f"coords[{dim!r}] has {len(labels)} labels but dimension {dim!r} of {name!r} "
                    f"has size {size}."
                )
            self._coords[dim] = labels
        self.attrs: dict = dict(attrs or {})

    # -- access ------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the quantities, in the order given."""
        return tuple(self._draws)

    @property
    def num_samples(self) -> int:
        """Number of posterior draws (the size of the leading ``sample`` axis)."""
        return next(iter(self._draws.values())).shape[0]

    @property
    def dims(self) -> dict[str, tuple[str, ...]]:
        """``{name: (dimension, ...)}`` for the axes after ``sample``."""
        return dict(self._dims)

    @property
    def coords(self) -> dict[str, tuple]:
        """``{dimension: labels}`` for every dimension (``0, 1, ...`` where none were given)."""
        return dict(self._coords)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._draws:
            raise KeyError(f"No quantity {name!r}; the result holds {self.names}.")
        return self._draws[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._draws)

    def __len__(self) -> int:
        return len(self._draws)

    def __repr__(self) -> str:
        width = max(len(name) for name in self._draws)
        lines = [f"CausalResult({self.num_samples} samples)"]
        for name, array in self._draws.items():
            axes = ", ".join(f"{dim}: {n}" for dim, n in zip(self._dims[name], array.shape[1:]))
            lines.append(f"  {name:<{width}}  ({axes})")
        return "\n".join(lines)

    # -- summaries over the sample axis ------------------------------------------------------
    def _apply(self, function, name: str | None):
        if name is not None:
            return function(self[name])
        return {key: function(values) for key, values in self._draws.items()}

    def mean(self, name: str | None = None):
        """Posterior mean over ``sample``: one array, or ``{name: array}`` when ``name`` is None."""
        # float64 accumulation: a float32 mean of identical draws can leave its own HDI.
        return self._apply(lambda values: np.mean(values, axis=0, dtype=np.float64), name)

    def std(self, name: str | None = None):
        """Posterior standard deviation over ``sample``, with ``ddof=1`` as ArviZ's ``sd``.

        One array, or ``{name: array}`` when ``name`` is None; NaN with a single sample.
        """
        return self._apply(lambda values: np.std(values, axis=0, ddof=1, dtype=np.float64), name)

    def quantile(self, q, name: str | None = None):
        """Quantiles ``q`` (in [0, 1]) over ``sample``, as :func:`numpy.quantile` (linear).

        The result has the shape of ``q`` followed by the quantity's axes after ``sample``.
        """
        return self._apply(lambda values: np.quantile(values, q, axis=0), name)

    def hdi(self, prob: float = 0.9, name: str | None = None):
        """Highest-density interval over ``sample``: ``(lower, upper)`` arrays.

        The narrowest window holding a fraction ``prob`` of the sorted draws, as ArviZ's
        default; one ``(lower, upper)`` tuple, or ``{name: (lower, upper)}`` when ``name`` is
        None.

        Raises
        ------
        ValueError
            If ``prob`` is outside (0, 1) or too few draws exist for it.
        """
        return self._apply(lambda values: _arviz.hdi(values, prob, axis=0), name)

    def _labels(self, name: str) -> dict[str, np.ndarray]:
        """Coordinate labels of each element of ``name``, flattened in C order."""
        shape = self._draws[name].shape[1:]
        if not shape:
            return {}
        indices = np.unravel_index(np.arange(int(np.prod(shape))), shape)
        labels = {}
        for dim, index in zip(self._dims[name], indices):
            coordinate = np.empty(len(self._coords[dim]), dtype=object)
            coordinate[:] = self._coords[dim]
            labels[dim] = coordinate[index]
        return labels

    def _dim_columns(self) -> list[str]:
        return list(dict.fromkeys(dim for names in self._dims.values() for dim in names))

    def summary(self, prob: float = 0.9) -> pd.DataFrame:
        """Tidy table with one row per scalar element of every quantity.

        Columns: ``quantity``, one column per dimension holding the coordinate label (NaN for a
        quantity without that dimension), then :data:`SUMMARY_STATISTICS`: ``mean``, ``sd``
        (``ddof=1``), ``hdi_lower``, ``hdi_upper``. The names do not change with ``prob``;
        it is kept in ``frame.attrs["hdi_prob"]``.
        """
        intervals = self.hdi(prob)
        frames = []
        for name, values in self._draws.items():
            lower, upper = intervals[name]
            columns = {"quantity": name, **self._labels(name)}
            statistics = (self.mean(name), self.std(name), lower, upper)
            for column, statistic in zip(SUMMARY_STATISTICS, statistics):
                columns[column] = np.ravel(statistic)
            frames.append(pd.DataFrame(columns, index=range(values[0].size)))
        frame = pd.concat(frames, ignore_index=True)
        frame = frame.reindex(columns=["quantity", *self._dim_columns(), *SUMMARY_STATISTICS])
        frame.attrs["hdi_prob"] = prob
        return frame

    def to_dataframe(self) -> pd.DataFrame:
        """Each draw in long format: ``quantity``, ``sample``, a column per dimension, ``value``."""
        frames = []
        for name, values in self._draws.items():
            labels = {
                dim: np.tile(column, self.num_samples) for dim, column in self._labels(name).items()
            }
            sample = np.repeat(np.arange(self.num_samples), values[0].size)
            columns = {"quantity": name, "sample": sample, **labels, "value": values.reshape(-1)}
            frames.append(pd.DataFrame(columns))
        frame = pd.concat(frames, ignore_index=True)
        return frame.reindex(columns=["quantity", "sample", *self._dim_columns(), "value"])

    # -- conversion and selection ------------------------------------------------------------
    def to_arviz(self):
        """The draws as a one-chain ArviZ posterior: ``InferenceData`` (0.x) or ``DataTree`` (1.x).

        ``sample`` becomes ArviZ's ``draw`` axis; dims and coords carry over, attrs do not.
        """
        posterior = {name: values[None] for name, values in self._draws.items()}
        coords = {dim: list(labels) for dim, labels in self._coords.items()}
        dims = {name: list(names) for name, names in self._dims.items()}
        return _arviz.from_groups({"posterior": posterior}, coords=coords, dims=dims)

    def sel(self, **labels) -> CausalResult:
        """A new result with each named dimension fixed at one coordinate label (and dropped).

        Quantities without that dimension are kept whole, e.g. ``result.sel(world="factual")``.

        Raises
        ------
        KeyError
            If no quantity has the dimension, or the label is absent from its coordinates or
            appears more than once.
        """
        positions = {}
        for dim, label in labels.items():
            if dim not in self._coords:
                raise KeyError(f"No dimension {dim!r}; the dimensions are {list(self._coords)}.")
            matches = [k for k, value in enumerate(self._coords[dim]) if value == label]
            if len(matches) != 1:
                found = "absent from" if not matches else "repeated in"
                raise KeyError(f"Label {label!r} is {found} coords[{dim!r}].")
            positions[dim] = matches[0]
        draws, dims = {}, {}
        for name, values in self._draws.items():
            index = tuple(positions.get(dim, slice(None)) for dim in self._dims[name])
            draws[name] = values[(slice(None), *index)]
            dims[name] = tuple(dim for dim in self._dims[name] if dim not in positions)
        coords = {dim: labels for dim, labels in self._coords.items() if dim not in positions}
        return CausalResult(draws, dims=dims, coords=coords, attrs=self.attrs)
