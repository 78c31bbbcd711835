"""What a model holds, traced abstractly: its sites' kinds, plates and shapes, never their values.

One mechanism for the guide's set-up (:class:`AmortizedGuide`) and the posterior's site table
(:func:`describe_model`), so that both read the model the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from numpyro.handlers import block, seed, trace

__all__ = ["abstract_trace", "is_hashable", "split_data"]


def is_hashable(value) -> bool:
    """Whether ``value`` can be a static argument of a jitted function."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def split_data(data: Mapping) -> tuple[dict, dict]:
    """``(arrays, others)``: the entries with a shape, and the rest (``None``, numbers)."""
    arrays = {name: value for name, value in data.items() if hasattr(value, "shape")}
    return arrays, {name: value for name, value in data.items() if name not in arrays}


def abstract_trace(model, kwargs: Mapping) -> dict:
    """``{site: description}`` of the sample and plate sites of ``model(**kwargs)``.

    A sample site is described by ``observed``, ``plates`` (``{plate name: dim}`` of the plates
    around it), ``batch_shape``, ``event_shape`` and ``shape`` (that of its value); a plate by
    ``size`` (its full size, before any subsampling). Each has its ``type``.

    The model runs under ``jax.eval_shape`` (nothing is computed over the data), or eagerly if it
    reads concrete values, and inside ``block``, hidden from every handler outside (SVI's,
    Predictive's, a subsampling one).
    """
    arrays, others = split_data(kwargs)
    static: dict = {}

    def run(arrays):
        with block():
            sites = trace(seed(model, 0)).get_trace(**others, **arrays)
        static.clear()  # an abstract run that failed half-way may have filled it
        values = {}
        for name, site in sites.items():
            if site["type"] == "plate":
                static[name] = {"type": "plate", "size": site["args"][0]}
            elif site["type"] == "sample":
                static[name] = {
                    "type": "sample",
                    "observed": bool(site["is_observed"]),
                    "plates": {frame.name: frame.dim for frame in site["cond_indep_stack"]},
                    "batch_shape": tuple(site["fn"].batch_shape),
                    "event_shape": tuple(site["fn"].event_shape),
                }
                values[name] = site["value"]
        return values

    try:
        values = jax.eval_shape(run, arrays)
    except jax.errors.JAXTypeError:  # the model reads concrete values: trace it for real
        values = run(arrays)
    for name, value in values.items():
        static[name]["shape"] = tuple(np.shape(value))
    return static
