"""How one site's randomness is carried from the factual to a counterfactual world.

- Gaussian sites, Laplace, Cauchy and logistic ones (symmetric location-scale families: the
  standardised value is mapped to the normal noise of the same quantile), such laws through
  bijective transforms (``LogNormal`` and any ``TransformedDistribution`` of them:
  ``eps = (T^{-1}(x) - loc) / scale``) and
  distributions with the ``to_noise``/``from_noise`` protocol share their standard-normal
  exogenous noise exactly.
- Other sites follow the chosen coupling: ``"resample"`` draws them afresh in the
  counterfactual world; ``"quantile"`` keeps their quantile ``u = F_factual(x)`` and returns
  ``F_counterfactual^{-1}(u)``. For counts, ``u`` is drawn uniformly in
  ``[F(x - 1), F(x)]`` (the randomised probability integral transform), which keeps the
  factual count exactly when the law does not change. Bernoulli and categorical sites have
  their cdf from their probabilities.
- Whatever the coupling, a site whose law is the same in both worlds keeps its value
  (:func:`same_law`).

Counts of Poisson, negative binomial (``GammaPoisson`` and its parametrisations) and their
zero-inflated versions are coupled in float64 on the host (:func:`couple`, scipy through
``jax.pure_callback``): in float32 the steps ``F(x) - F(x - 1)`` of counts in the thousands
are below the cdf's rounding (numpyro's ``betainc``), so the same law gave back counts off by
one to hundreds. A quantile drawn at the bottom of its step is also kept strictly above
``F(x - 1)``, so that it cannot round down to the count below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import scipy.stats
from jax.scipy.special import ndtr, ndtri

__all__ = [
    "COUPLINGS",
    "couple",
    "from_noise",
    "is_shareable",
    "quantile_of",
    "same_law",
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


#: Symmetric location-scale families whose noise is shared exactly, by the survival function
#: ``S(a) = P(Z > a)`` of their standard law ``Z`` and its inverse (both precise in the tails).
_SURVIVAL = {
    dist.Laplace: (lambda a: 0.5 * jnp.exp(-a), lambda p: -jnp.log(2.0 * p)),
    dist.Cauchy: (
        lambda a: jnp.arctan2(1.0, a) / jnp.pi,
        lambda p: jnp.cos(jnp.pi * p) / jnp.sin(jnp.pi * p),
    ),
    dist.Logistic: (lambda a: jax.nn.sigmoid(-a), lambda p: jnp.log1p(-p) - jnp.log(p)),
}


def _location_scale(fn: dist.Distribution):
    """``(law, transforms)`` when ``fn`` is a normal law, or a Laplace, Cauchy or logistic one
    (symmetric location-scale families), pushed through bijections (a
    ``TransformedDistribution`` such as ``LogNormal``; none for a plain law), else None."""
    base, transforms = _base(fn), []
    while isinstance(base, dist.TransformedDistribution):
        transforms = list(base.transforms) + transforms
        base = _base(base.base_dist)
    return (base, transforms) if type(base) is dist.Normal or type(base) in _SURVIVAL else None


def is_shareable(fn: dist.Distribution) -> bool:
    """Whether ``fn`` exposes its exogenous noise: a normal, Laplace, Cauchy or logistic law,
    such a law through bijective transforms (log-normal and other transformed laws), or the
    noise protocol."""
    return _location_scale(fn) is not None or hasattr(_base(fn), "to_noise")


def to_noise(fn: dist.Distribution, value):
    """Standard-normal exogenous noise of ``value`` under a shareable ``fn``: transforms are
    inverted first; a non-normal family's standardised value ``z`` has the normal noise of the
    same quantile, ``sign(z) Phi^{-1}(1 - S(|z|))``."""
    law = _location_scale(fn)
    if law is None:
        return _base(fn).to_noise(value)
    base, transforms = law
    for transform in reversed(transforms):
        value = transform.inv(value)
    standard = (value - base.loc) / base.scale
    if type(base) is dist.Normal:
        return standard
    survival, _ = _SURVIVAL[type(base)]
    return -jnp.sign(standard) * ndtri(survival(jnp.abs(standard)))


def from_noise(fn: dist.Distribution, noise):
    """Inverse of :func:`to_noise`: the value a shareable ``fn`` gives to exogenous ``noise``."""
    law = _location_scale(fn)
    if law is None:
        return _base(fn).from_noise(noise)
    base, transforms = law
    standard = noise
    if type(base) is not dist.Normal:
        _, inverse = _SURVIVAL[type(base)]
        standard = jnp.sign(noise) * inverse(ndtr(-jnp.abs(noise)))
    value = base.loc + base.scale * standard
    for transform in transforms:
        value = transform(value)
    return value


def same_law(first: dist.Distribution, second: dist.Distribution):
    """Per batch entry, whether two laws of one site are identical (boolean, ``batch_shape``).

    Two worlds that give a site the same law gave it the same parents, so by Pearl's
    definition the site keeps its value in both, whatever its law (its exogenous noise is the
    same). Laws are compared parameter by parameter, recursing through wrappers (``to_event``,
    ``expand``, masks, zero inflation); a parameter's event dimensions are reduced with
    ``all``. Laws of different types or shapes are different everywhere. Exact equality: both
    worlds run the same operations on the same inputs wherever the intervention does not reach.
    """
    batch_shape = tuple(first.batch_shape)
    if (
        type(first) is not type(second)
        or batch_shape != tuple(second.batch_shape)
        or tuple(first.event_shape) != tuple(second.event_shape)
    ):
        return jnp.zeros(batch_shape, bool)
    names = type(first).gather_pytree_data_fields()
    (left, left_aux), (right, right_aux) = first.tree_flatten(), second.tree_flatten()
    if not _equal_aux(left_aux, right_aux):
        return jnp.zeros(batch_shape, bool)
    constraints = getattr(type(first), "arg_constraints", {})
    same = jnp.ones(batch_shape, bool)
    for name, one, other in zip(names, left, right, strict=True):
        if isinstance(one, dist.Distribution) and isinstance(other, dist.Distribution):
            same = same & _entries(same_law(one, other), batch_shape)
            continue
        leaves, structure = jax.tree_util.tree_flatten(one)
        other_leaves, other_structure = jax.tree_util.tree_flatten(other)
        if structure != other_structure:  # e.g. a parameter given in one world only
            return jnp.zeros(batch_shape, bool)
        constraint = constraints.get(name)
        event_dim = getattr(constraint, "event_dim", None)
        for leaf, other_leaf in zip(leaves, other_leaves, strict=True):
            equal = jnp.asarray(leaf) == jnp.asarray(other_leaf)
            same = same & _entries(equal, batch_shape, event_dim)
    return same


def _entries(equal, batch_shape: tuple, event_dim: int | None = None):
    """Reduce an elementwise comparison to the batch: event dimensions (or the extra inner
    batch dimensions of a wrapped law) sit on the right, and an entry of the batch is the same
    only if all of them are."""
    extra = equal.ndim - len(batch_shape) if event_dim is None else event_dim
    extra = max(0, min(extra, equal.ndim))
    if extra:
        equal = jnp.all(equal, axis=tuple(range(-extra, 0)))
    return jnp.broadcast_to(equal, batch_shape)


def _equal_aux(left, right) -> bool:
    """Static (non-array) parts of two flattened laws: shapes, flags, event dimensions."""
    try:
        return bool(left == right)
    except (TypeError, ValueError):  # an array among them: not provably the same law
        return False


def _cdf(fn: dist.Distribution, value):
    base = _base(fn)
    if isinstance(base, dist.BernoulliProbs | dist.BernoulliLogits):
        return jnp.where(value < 0, 0.0, jnp.where(value < 1, 1.0 - base.probs, 1.0))
    if isinstance(base, dist.CategoricalProbs | dist.CategoricalLogits):
        levels = jnp.arange(base.probs.shape[-1])
        below = levels <= jnp.expand_dims(value, -1)
        total = jnp.clip(jnp.sum(jnp.where(below, base.probs, 0.0), axis=-1), 0.0, 1.0)
        return jnp.where(value >= levels[-1], 1.0, total)  # exactly 1 despite rounding
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
        quantile = lower + jax.random.uniform(key, jnp.shape(upper)) * (upper - lower)
        # Strictly above F(x - 1) (when the step is representable), or F^{-1} gives x - 1.
        return jnp.clip(quantile, jnp.nextafter(lower, jnp.inf), upper)
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


def couple(key, factual: dist.Distribution, value, counterfactual: dist.Distribution):
    """The counterfactual value of ``value`` (drawn from ``factual``) under the quantile
    coupling: ``F_counterfactual^{-1}(u)`` with ``u`` the (randomised) quantile of ``value``.

    Poisson and negative-binomial counts (zero-inflated or not) are coupled in float64 on the
    host, exact to the count (the factual count comes back where the law is unchanged, up to
    counts whose upper tail ``1 - F`` is below 1e-16); other laws use :func:`quantile_of` and
    :func:`value_at_quantile` in the arrays' precision.
    """
    laws = (_count_parameters(factual), _count_parameters(counterfactual))
    if laws[0] is None or laws[1] is None:
        return value_at_quantile(counterfactual, quantile_of(key, factual, value))
    value = jnp.asarray(value)
    arrays = (value, *laws[0], *laws[1])
    shape = jnp.broadcast_shapes(*(jnp.shape(array) for array in arrays))
    uniform = jax.random.uniform(key, shape)
    arrays = [jnp.broadcast_to(jnp.asarray(array, jnp.float32), shape) for array in arrays]
    result = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.pure_callback(
        _couple_counts, result, uniform, *arrays, vmap_method="broadcast_all"
    ).astype(jnp.result_type(value, jnp.float32))


def _count_parameters(fn: dist.Distribution):
    """``(gate, concentration, mean)`` of a (zero-inflated) Poisson or negative binomial
    (``concentration = inf`` for Poisson), or None for another law."""
    base = _base(fn)
    gate = 0.0
    if isinstance(base, dist.ZeroInflatedProbs):
        gate, base = base.gate, _base(base.base_dist)
    if isinstance(base, dist.GammaPoisson):
        return gate, base.concentration, base.concentration / base.rate
    if type(base) is dist.Poisson:
        return gate, jnp.inf, base.rate
    return None


def _count_law(concentration, mean):
    """The float64 scipy law of each entry: negative binomial, Poisson where concentration is
    infinite (``np.where`` picks per entry; both are evaluated on safe parameters)."""
    poisson = ~np.isfinite(concentration)
    size = np.where(poisson, 1.0, concentration)
    negative_binomial = scipy.stats.nbinom(size, size / (size + mean))
    return poisson, scipy.stats.poisson(mean), negative_binomial


def _cdf64(law, gate, value):
    poisson, poisson_law, negative_binomial = law
    base = np.where(poisson, poisson_law.cdf(value), negative_binomial.cdf(value))
    return np.where(value < 0, 0.0, gate + (1.0 - gate) * base)


def _ppf64(law, gate, quantile):
    poisson, poisson_law, negative_binomial = law
    inner = np.clip((quantile - gate) / np.maximum(1.0 - gate, 1e-300), 0.0, 1.0)
    base = np.where(poisson, poisson_law.ppf(inner), negative_binomial.ppf(inner))
    return np.where(quantile <= _cdf64(law, gate, 0.0), 0.0, base)


def _couple_counts(uniform, value, *parameters):
    """Host side of :func:`couple`: the randomised quantile of ``value`` under the factual
    ``(gate, concentration, mean)``, read off the counterfactual one, all in float64."""
    uniform, value, *parameters = (
        np.asarray(array, np.float64) for array in (uniform, value, *parameters)
    )
    gate, concentration, mean, gate_cf, concentration_cf, mean_cf = parameters
    factual = _count_law(concentration, mean)
    lower, upper = _cdf64(factual, gate, value - 1.0), _cdf64(factual, gate, value)
    quantile = np.clip(lower + uniform * (upper - lower), np.nextafter(lower, np.inf), upper)
    quantile = np.minimum(quantile, np.nextafter(1.0, 0.0))  # F^{-1}(1) is infinite
    counts = _ppf64(_count_law(concentration_cf, mean_cf), gate_cf, quantile)
    return np.asarray(counts, np.float32)
