"""causalcell: causal generative models of single cells, written as NumPyro programs."""

from causalcell import (
    data,
    datasets,
    diffusion,
    evaluation,
    graph,
    interventions,
    metrics,
    noise,
    perturbations,
    preprocessing,
)
from causalcell._warnings import CausalcellWarning

__version__ = "0.1.0.dev0"

__all__ = [
    "CausalcellWarning",
    "__version__",
    "data",
    "datasets",
    "diffusion",
    "evaluation",
    "graph",
    "interventions",
    "metrics",
    "noise",
    "perturbations",
    "preprocessing",
]
