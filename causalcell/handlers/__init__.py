"""Causal effect handlers (DESIGN 2.5): the ``do`` handler and the ``intervention`` primitive.

Causal meaning lives in handlers applied from outside a model, never inside it.
"""

from causalcell.handlers._do import UnknownSiteError, do
from causalcell.handlers._ops import (
    InterventionSpec,
    intervention,
    knockdown,
    knockout,
    noise_scale,
    shift,
)

__all__ = [
    "InterventionSpec",
    "UnknownSiteError",
    "do",
    "intervention",
    "knockdown",
    "knockout",
    "noise_scale",
    "shift",
]
