"""How one site's randomness is carried from the factual to a counterfactual world.

- Gaussian (location-scale) sites and distributions with the ``to_noise``/``from_noise``
  protocol share their standard-normal exogenous noise exactly: ``eps = (x - loc) / scale``.
- Other sites follow the chosen coupling: ``"resample"`` draws them afresh in the
  counterfactual world; ``"quantile"`` keeps their quantile ``u = F_factual(x)`` and returns
  ``F_counterfactual^{-1}(u)``. For counts, ``u`` is drawn uniformly in
  ``[F(x - 1), F(x)]`` (the randomised probability integral transform), which keeps the
  factual count exactly when the law does not change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

__all__ = [
    "COUPLINGS",
    "from_noise",
    "is_shareable",
    "quantile_of",
    "to_noise",
    "value_at_quantile",
]

#: Couplings for sites whose noise cannot be shared exactly.
COUPLINGS = ("resample", "quantile")
#: Bisection steps for discrete quantiles: counts up to 2**40 are resolved exactly.
_BISECTION_STEPS = 41


def _base(fn: dist.Distribution) -> dist.Distribution:
    """Peel the wrappers plates and ``to_event`` put around a distribution."""
    while isinstance(fn, dist.ExpandedDistribution | dist.Independent):
        fn = fn.base_dist
    return fn


def is_shareable(fn: dist.Distribution) -> bool:
    """Whether ``fn`` exposes its exogenous noise (Gaussian or the noise protocol)."""
    base = _base(fn)
    return type(base) is dist.Normal or hasattr(base, "to_noise")


def to_noise(fn: dist.Distribution, value):
    """Standard-normal exogenous noise of ``value`` under a shareable ``fn``."""
    base = _base(fn)
    if type(base) is dist.Normal:
        return (value - base.loc) / base.scale
    return base.to_noise(value)


def from_noise(fn: dist.Distribution, noise):
    """Inverse of :func:`to_noise`: the value a shareable ``fn`` gives to exogenous ``noise``."""
    base = _base(fn)
    if type(base) is dist.Normal:
        return base.loc + base.scale * noise
    return base.from_noise(noise)


def _cdf(fn: dist.Distribution, value):
    base = _base(fn)
    if isinstance(base, dist.ZeroInflatedProbs):
        inner = base.base_dist.cdf(value)
        return jnp.where(value < 0, 0.0, base.gate + (1.0 - base.gate) * inner)
    try:
        return base.cdf(value)
    except NotImplementedError:
        raise NotImplementedError(
            f"{type(base).__name__} has no cdf, so the quantile coupling cannot carry it to the "
            "counterfactual world; use coupling='resample'."
        ) from None


def quantile_of(key, fn: dist.Distribution, value):
    """The quantile ``u`` of ``value`` under ``fn`` (randomised within the step for counts)."""
    if _base(fn).support.is_discrete:
        upper = _cdf(fn, value)
        lower = _cdf(fn, value - 1.0)
        return lower + jax.random.uniform(key, jnp.shape(upper)) * (upper - lower)
    return _cdf(fn, value)


def value_at_quantile(fn: dist.Distribution, quantile):
    """``F^{-1}(quantile)`` under ``fn``: ``icdf`` if continuous, bisection on counts otherwise."""
    base = _base(fn)
    if not base.support.is_discrete:
        try:
            return base.icdf(quantile)
        except NotImplementedError:
            raise NotImplementedError(
                f"{type(base).__name__} has no icdf; use coupling='resample'."
            ) from None

    # Smallest integer k with F(k) >= u, by bisection on [-1, 2**40].
    def step(_, bounds):
        low, high = bounds
        middle = jnp.floor((low + high) / 2.0)
        above = _cdf(fn, middle) >= quantile
        return jnp.where(above, low, middle), jnp.where(above, middle, high)

    shape = jnp.shape(quantile)
    bounds = (jnp.full(shape, -1.0), jnp.full(shape, 2.0**40))
    _, high = jax.lax.fori_loop(0, _BISECTION_STEPS, step, bounds)
    return high
