"""causalcell: causal generative models of single cells, written as NumPyro programs.

Every capability is one hop from here: ``cc.LCD``, ``cc.fit``, ``cc.do``, ``cc.counterfactual``,
``cc.clipr.direct_effects``, and every namespace (``cc.models``, ``cc.inference``, ...). The
layers and their rule are in ``docs/design.md``.
"""

from causalcell import (
    clipr,
    data,
    datasets,
    diffusion,
    evaluation,
    graph,
    handlers,
    inference,
    interventions,
    metrics,
    models,
    noise,
    perturbations,
    preprocessing,
    queries,
    results,
    scm,
)
from causalcell._core.errors import CausalcellWarning
from causalcell._version import __version__
from causalcell.clipr import DirectEffects
from causalcell.data import Registry, register, to_arrays
from causalcell.handlers import do, knockdown, knockout, learned, noise_scale, shift
from causalcell.inference import Posterior, fit, fit_nuts
from causalcell.models import LCD, ConceptModel
from causalcell.queries import (
    actual_causation,
    counterfactual,
    effect,
    interventional,
    mediation,
    probabilities_of_causation,
)
from causalcell.results import CausalResult

__all__ = [
    "LCD",
    "CausalResult",
    "CausalcellWarning",
    "ConceptModel",
    "DirectEffects",
    "Posterior",
    "Registry",
    "__version__",
    "actual_causation",
    "clipr",
    "counterfactual",
    "data",
    "datasets",
    "diffusion",
    "do",
    "effect",
    "evaluation",
    "fit",
    "fit_nuts",
    "graph",
    "handlers",
    "inference",
    "interventional",
    "interventions",
    "knockdown",
    "knockout",
    "learned",
    "mediation",
    "metrics",
    "models",
    "noise",
    "noise_scale",
    "perturbations",
    "preprocessing",
    "probabilities_of_causation",
    "queries",
    "register",
    "results",
    "scm",
    "shift",
    "to_arrays",
]
