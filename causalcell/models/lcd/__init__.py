"""LCD: latent causal diffusion of a perturbation screen, fitted to an AnnData (DESIGN 3.1).

Linear drift: exact Gaussian stationary law (see :mod:`._program`). Gene space: a screen
of at most 64 genes models every gene as a latent coordinate, and every SVI step solves one
Lyapunov equation per condition (``O(conditions d^3)``). Larger screens work by default in a
reduced space (:mod:`._gene_space`): the perturbed genes (plus any chosen or highly variable
ones) and ``k = 8`` latent programs are the state, and every other gene is decoded linearly
from it, at ``O(conditions m^3 + batch genes m)`` per step for ``m = modelled + k``.

Neural drift (``LCD.fit(..., drift="neural")``): the KDS program of :mod:`._neural_program` on
every gene (no reduced space); predictions, stationary laws and effects simulate or linearise
the fitted SDE (:mod:`._neural_fit`, :mod:`._neural`, which state the choices).

What differs between the drift families (fit, drift, responses, stationary laws, predictions,
exact worlds) is one :class:`._backends.DriftBackend` per family: linear drift's queries live
in :mod:`._linear`, neural drift's in :mod:`._neural`. Targets of a perturbation label:
:mod:`._targets`; generated cells: :mod:`._cells`; the fit's plumbing: :mod:`._fit`;
interventional and counterfactual worlds (:attr:`LCD.program` for ``causalcell.do``,
:meth:`LCD.counterfactual`) in :mod:`._worlds` and :mod:`._counterfactual`; the collapsed NUTS
refinement of the globals (:meth:`LCD.refine`) in :mod:`._refine`.

The NumPyro programs are public: :func:`lcd_model` (linear drift) and :func:`lcd_neural_model`
(neural drift, KDS factor), to read, ``do`` and extend.

References
----------
Lorch, L., Krause, A. & Schölkopf, B. (2024). Causal modeling with stationary diffusions.
AISTATS.
"""

from causalcell.models.lcd._fit import NOISE_MODELS
from causalcell.models.lcd._model import LCD
from causalcell.models.lcd._neural_program import lcd_neural_model
from causalcell.models.lcd._program import lcd_model
from causalcell.models.lcd._targets import UnseenTargetError

__all__ = ["LCD", "NOISE_MODELS", "UnseenTargetError", "lcd_model", "lcd_neural_model"]
