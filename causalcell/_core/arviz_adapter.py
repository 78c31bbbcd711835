"""The one place that knows which ArviZ is installed: 0.x (``InferenceData``) or 1.x (``DataTree``).

Checked against the ArviZ 1.x sources (arviz-base ``io_dict.from_dict``, arviz-stats
``base/intervals.hdi``): ``from_dict(data, *, name, sample_dims, save_warmup, index_origin,
coords, dims, pred_dims, pred_coords, check_conventions, attrs)`` takes one nested dict of groups
and returns a ``DataTree``; groups whose name contains "data" get no (chain, draw) dimensions and
"predictions" groups take ``pred_dims``/``pred_coords`` (which default to none, where 0.x reuses
``dims``/``coords``). Both versions compute the HDI as the narrowest window spanning
``floor(prob * n)`` sorted draws ("nearest"), which :func:`hdi` computes in numpy.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import version
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xarray

__all__ = ["ARVIZ_MAJOR", "GROUP_NAMES", "from_groups", "get_group", "group_names", "hdi"]

#: Major version of the installed ArviZ, read from its metadata: importing ArviZ (and with it
#: matplotlib) takes about as long as the rest of ``import causalcell``, so it waits for
#: :func:`from_groups`.
ARVIZ_MAJOR: int = int(version("arviz").split(".")[0])

#: Groups :func:`from_groups` accepts; those ending in "data" have no (chain, draw) axes.
GROUP_NAMES = tuple(
    "posterior posterior_predictive predictions log_likelihood sample_stats prior prior_predictive "
    "sample_stats_prior observed_data constant_data predictions_constant_data".split()
)


@functools.cache
def _arviz():
    """The ``arviz`` module, imported on first use."""
    # 0.x announces the 1.x refactor on import; this file handles it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ArviZ is undergoing a major refactor", FutureWarning)
        import arviz
    return arviz


def from_groups(groups: dict[str, dict[str, np.ndarray]], *, coords=None, dims=None):
    """Build ArviZ data (``InferenceData`` on 0.x, ``DataTree`` on 1.x) from arrays.

    Parameters
    ----------
    groups
        ``{group: {variable: array}}``; arrays of sample groups lead with (chain, draw) axes,
        those of ``*_data`` groups do not. A name outside :data:`GROUP_NAMES` raises ValueError
        (ArviZ 0.x would drop it silently).
    coords, dims
        ``{dimension: labels}`` and ``{variable: [dimension, ...]}`` (the axes after chain and
        draw), used for every group, predictions included.
    """
    unknown = sorted(set(groups) - set(GROUP_NAMES))
    if unknown:
        raise ValueError(f"Unknown ArviZ group(s) {unknown}; expected some of {GROUP_NAMES}.")
    if ARVIZ_MAJOR == 0:
        return _arviz().from_dict(**groups, coords=coords, dims=dims)
    return _arviz().from_dict(groups, coords=coords, dims=dims, pred_coords=coords, pred_dims=dims)


def group_names(data) -> tuple[str, ...]:
    """Names of the groups held by ``data``, in storage order."""
    if ARVIZ_MAJOR == 0:
        return tuple(data.groups())
    return tuple(data.children)


def get_group(data, name: str) -> xarray.Dataset:
    """Group ``name`` of ``data`` as an ``xarray.Dataset``; KeyError naming the groups if absent."""
    if name not in group_names(data):
        raise KeyError(f"No group {name!r}; the data hold {group_names(data)}.")
    if ARVIZ_MAJOR == 0:
        return data[name]
    return data[name].to_dataset()


def hdi(values, prob: float, *, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Highest density interval of the draws along ``axis``, as ``(lower, upper)`` arrays.

    The narrowest window spanning ``floor(prob * n)`` steps of the ``n`` sorted draws, as
    ArviZ's default ("nearest") method; one interval, so meant for unimodal draws. ``prob``
    lies in (0, 1); the bounds are NaN where a draw is NaN.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must lie in (0, 1), got {prob}.")
    draws = np.sort(np.moveaxis(np.asarray(values, dtype=float), axis, 0), axis=0)
    number = draws.shape[0]
    span = int(np.floor(prob * number))
    if span < 1 or span >= number:
        raise ValueError(f"{number} draws are too few for a {prob} interval.")
    start = np.argmin(draws[span:] - draws[: number - span], axis=0)[None]
    lower = np.take_along_axis(draws, start, axis=0)[0]
    upper = np.take_along_axis(draws, start + span, axis=0)[0]
    missing = np.isnan(draws).any(axis=0)
    return np.where(missing, np.nan, lower), np.where(missing, np.nan, upper)
