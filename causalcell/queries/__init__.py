"""Causal queries with posterior uncertainty: interventional, counterfactual, effect,
mediation, probabilities of causation, actual causation.

Each returns a :class:`causalcell.results.CausalResult` whose draws carry a leading ``sample``
axis. With ``posterior_samples`` (parameter draws from a fit) the answers integrate over the
posterior of the parameters; without, over their prior. Parameters are the model's global
sample sites (outside every plate); everything inside a plate is unit-level.

References
----------
Pearl, J. (2009). Causality, 2nd ed. Cambridge University Press.
"""

from causalcell.queries._causation import actual_causation, probabilities_of_causation
from causalcell.queries._counterfactual import counterfactual
from causalcell.queries._effect import ESTIMANDS, effect
from causalcell.queries._interventional import interventional
from causalcell.queries._mediation import MEDIATION_WORLDS, mediation

__all__ = [
    "ESTIMANDS",
    "MEDIATION_WORLDS",
    "actual_causation",
    "counterfactual",
    "effect",
    "interventional",
    "mediation",
    "probabilities_of_causation",
]
