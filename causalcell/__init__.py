"""causalcell: causal generative models of single cells, written as NumPyro programs."""

from causalcell import (
    counterfactual,
    data,
    datasets,
    diffusion,
    evaluation,
    graph,
    handlers,
    interventions,
    metrics,
    noise,
    perturbations,
    preprocessing,
    queries,
    results,
    scm,
)
from causalcell._warnings import CausalcellWarning
from causalcell.handlers import do, knockdown, knockout, noise_scale, shift
from causalcell.results import CausalResult

__version__ = "0.1.0.dev0"

__all__ = [
    "CausalResult",
    "CausalcellWarning",
    "__version__",
    "counterfactual",
    "data",
    "datasets",
    "diffusion",
    "do",
    "evaluation",
    "graph",
    "handlers",
    "interventions",
    "knockdown",
    "knockout",
    "metrics",
    "noise",
    "noise_scale",
    "perturbations",
    "preprocessing",
    "queries",
    "results",
    "scm",
    "shift",
]
