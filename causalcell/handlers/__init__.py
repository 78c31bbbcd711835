"""Causal effect handlers (DESIGN 2.5): the ``do`` handler, the ``intervention`` primitive, and
the counterfactual-worlds machinery built on them (abduction, action, prediction).

Causal meaning lives in handlers applied from outside a model, never inside it.
"""

from causalcell.handlers._do import UnknownSiteError, do
from causalcell.handlers._ops import (
    InterventionSpec,
    intervention,
    knockdown,
    knockout,
    learned,
    noise_scale,
    shift,
)
from causalcell.handlers._worlds import (
    COUPLINGS,
    NOISE_SUFFIX,
    WORLDS,
    abduce,
    abduction_model,
    check_site_names,
    exogenize,
    model_trace,
    predict_worlds,
    unit_sites,
)

__all__ = [
    "COUPLINGS",
    "NOISE_SUFFIX",
    "WORLDS",
    "InterventionSpec",
    "UnknownSiteError",
    "abduce",
    "abduction_model",
    "check_site_names",
    "do",
    "exogenize",
    "intervention",
    "knockdown",
    "knockout",
    "learned",
    "model_trace",
    "noise_scale",
    "predict_worlds",
    "shift",
    "unit_sites",
]
