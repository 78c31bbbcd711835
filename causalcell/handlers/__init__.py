"""Causal effect handlers (DESIGN 2.5): the ``do`` handler, the ``intervention`` primitive, and
the counterfactual-worlds machinery built on them (abduction, action, prediction).

Causal meaning lives in handlers applied from outside a model, never inside it.
"""

from causalcell.handlers._abduction import (
    MAX_CONFIGURATIONS,
    NOISE_SUFFIX,
    abduce,
    abduction_model,
    check_site_names,
    exogenize,
    model_trace,
    observe_deterministic,
    unit_sites,
)
from causalcell.handlers._do import NATURAL_SUFFIX, UnknownSiteError, do
from causalcell.handlers._ops import (
    InterventionSpec,
    intervention,
    knockdown,
    knockout,
    learned,
    noise_scale,
    shift,
)
from causalcell.handlers._worlds import COUPLINGS, WORLDS, predict_worlds, world_labels

__all__ = [
    "COUPLINGS",
    "MAX_CONFIGURATIONS",
    "NATURAL_SUFFIX",
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
    "observe_deterministic",
    "predict_worlds",
    "shift",
    "unit_sites",
    "world_labels",
]
