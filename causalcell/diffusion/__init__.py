"""Stationary diffusions ``dx = f(x; intervention) dt + diag(sigma) dW`` (DESIGN 2.3).

Linear drift has a Gaussian stationary law (mean ``-A^{-1} b``, covariance from the continuous
Lyapunov equation); nonlinear drift is sampled by simulating many chains with diffrax and
fitted with the kernel deviation from stationarity (:func:`kds`), which needs no simulation. A
linear drift can also be fitted by the exact likelihood of its Gaussian stationary law
(:func:`stationary_log_likelihood`).
"""

from causalcell.diffusion._drift import LinearDrift, NeuralDrift, intervene, intervene_linear
from causalcell.diffusion._kds import kds
from causalcell.diffusion._likelihood import SampleMoments, stationary_log_likelihood
from causalcell.diffusion._lyapunov import (
    UnstableDriftError,
    cayley_shift,
    check_stable,
    solve_continuous_lyapunov,
    spectral_abscissa,
)
from causalcell.diffusion._simulate import simulate_chains
from causalcell.diffusion._stationary import (
    sample_stationary,
    stationary_factor,
    stationary_mean,
    stationary_moments,
    stationary_moments_of_knockouts,
    stationary_moments_of_shifts,
)

__all__ = [
    "LinearDrift",
    "NeuralDrift",
    "SampleMoments",
    "UnstableDriftError",
    "cayley_shift",
    "check_stable",
    "intervene",
    "intervene_linear",
    "kds",
    "sample_stationary",
    "simulate_chains",
    "solve_continuous_lyapunov",
    "spectral_abscissa",
    "stationary_factor",
    "stationary_log_likelihood",
    "stationary_mean",
    "stationary_moments",
    "stationary_moments_of_knockouts",
    "stationary_moments_of_shifts",
]
