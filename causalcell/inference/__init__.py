"""Inference (DESIGN 5): minibatch SVI with amortized guides, NUTS, and the Posterior object."""

from causalcell.inference._guides import (
    FULL_RANK_LIMIT,
    POINT_SCALE,
    AmortizedGuide,
    default_encoder_inputs,
)
from causalcell.inference._importance import LocalImportanceELBO
from causalcell.inference._kronecker import AutoKroneckerNormal
from causalcell.inference._nuts import fit_nuts
from causalcell.inference._posterior import Posterior
from causalcell.inference._serialization import load_tree, save_tree
from causalcell.inference._subsample import BatchStrata, Strata, batch_strata, subsample
from causalcell.inference._svi import EarlyStopping, FitDivergedError, fit

__all__ = [
    "FULL_RANK_LIMIT",
    "POINT_SCALE",
    "AmortizedGuide",
    "AutoKroneckerNormal",
    "BatchStrata",
    "EarlyStopping",
    "FitDivergedError",
    "LocalImportanceELBO",
    "Posterior",
    "Strata",
    "batch_strata",
    "default_encoder_inputs",
    "fit",
    "fit_nuts",
    "load_tree",
    "save_tree",
    "subsample",
]
