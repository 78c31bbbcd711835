"""CLIPR: direct gene-to-gene effects from the responses of a shift perturbation screen (DESIGN 4).

Under a linear drift ``dx = (A x + b) dt + sigma dW`` (``A[i, j]`` = effect of gene ``j`` on
gene ``i``, DESIGN 2.3), shifting gene ``j`` by ``delta_j`` moves the stationary mean by
``-A^{-1} e_j delta_j``. The responses of a full screen, ``R = -A^{-1} D`` with unknown shift
sizes ``D``, give ``R^{-1} = -D^{-1} A`` and so the direct effects

    W_ij = -(R^{-1})_ij / (R^{-1})_ii = A_ij / (-A_ii),

the regulation of ``i`` by ``j`` relative to ``i``'s self-decay, whatever the shift sizes.
Partial screens identify less; :func:`direct_effects` derives and reports exactly which
entries (see its Notes), and unidentified entries are NaN everywhere, never filled.

- Estimates: :func:`direct_effects` (one response matrix), :func:`posterior_direct_effects`
  (one per posterior draw), both returning :class:`DirectEffects` (table, networkx graph,
  scores for :mod:`causalcell.metrics`, heatmap).
- Responses from a drift: :func:`linear_responses` (exact, linear drift) and
  :func:`linearized_responses` (small in-silico shifts of a nonlinear drift).

Why the drift must not be a gradient field: a drift fitted as the score of the stationary law
is symmetric, ``A = -(sigma^2 / 2) Sigma^{-1}``, so CLIPR sees ``R`` proportional to the
covariance and returns the same sign for ``i -> j`` and ``j -> i``: edge orientation is lost
(:func:`causalcell.metrics.orientation_accuracy` is then at chance).

References
----------
causalcell DESIGN section 4 (CLIPR for latent causal diffusions).
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS.

Examples
--------
>>> import numpy as np
>>> drift = np.array([[-1.0, 0.0, 0.0], [0.8, -1.0, 0.0], [0.0, -0.5, -2.0]])  # g0 -> g1 -| g2
>>> responses = linear_responses(drift, [0, 1, 2]) @ np.diag([1.0, -0.3, 2.0])  # any sizes
>>> effects = direct_effects(responses, genes=["g0", "g1", "g2"])
>>> effects.table().head(2)
  source target  mean  lower  upper  probability_positive  identified
0     g0     g1  0.80    NaN    NaN                   NaN        True
1     g1     g2 -0.25    NaN    NaN                   NaN        True
>>> list(effects.to_networkx(threshold=1e-9).edges)
[('g0', 'g1'), ('g1', 'g2')]

A partial screen that leaves ``g2`` unperturbed identifies only ``g2``'s incoming effects:

>>> partial = direct_effects(responses[:, :2], genes=["g0", "g1", "g2"], targets=["g0", "g1"])
>>> partial.identified
array([[False, False, False],
       [False, False, False],
       [ True,  True, False]])
>>> np.round(partial.mean[2], 6)
array([ 0.  , -0.25,  0.  ])
"""

from causalcell.clipr._identify import (
    IllConditionedResponsesWarning,
    NotIdentifiedWarning,
    direct_effects,
    posterior_direct_effects,
)
from causalcell.clipr._plot import plot_direct_effects
from causalcell.clipr._responses import linear_responses, linearized_responses
from causalcell.clipr._result import DirectEffects

__all__ = [
    "DirectEffects",
    "IllConditionedResponsesWarning",
    "NotIdentifiedWarning",
    "direct_effects",
    "linear_responses",
    "linearized_responses",
    "plot_direct_effects",
    "posterior_direct_effects",
]
