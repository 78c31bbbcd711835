"""The noise models: negative binomial, zero-inflated negative binomial, Poisson, and
Gaussians on log1p-normalised or already log-scaled data (see :mod:`causalcell.noise`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from causalcell.noise._base import (
    _CONCENTRATION_PRIOR,
    _GATE_LOGITS_PRIOR,
    _SCALE_PRIOR,
    NoiseModel,
    _dense,
    _negative_binomial,
    _per_gene_site,
)
from causalcell.preprocessing import DEFAULT_TARGET_SUM

__all__ = [
    "Gaussian",
    "LogNormalizedGaussian",
    "NegativeBinomial",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
]


@dataclass(frozen=True, kw_only=True)
class NegativeBinomial(NoiseModel):
    """Negative binomial counts with mean ``mu`` and per-gene concentration ``theta``.

    ``Var = mu + mu**2 / theta``: the concentration is the inverse dispersion (NB2 of Hilbe
    2011); ``theta -> inf`` gives Poisson. Implemented as ``NegativeBinomialLogits`` with
    ``total_count = theta`` and ``logits = log(mu) - log(theta)``, so ``mu`` is never
    exponentiated. Hafemeister & Satija (2019) model UMI counts this way, per gene. Sample site
    ``f"{prefix}_concentration"``; parameter ``concentration``.

    Parameters
    ----------
    concentration_prior
        Prior of each gene's concentration (a positive univariate distribution, or one with
        batch shape ``(num_genes,)``). Default ``LogNormal(log 10, 2)``: median 10, 95% of the
        mass in about ``[0.2, 500]``, from strongly overdispersed genes to nearly Poisson ones.
    """

    concentration_prior: dist.Distribution | None = None

    parameter_names: ClassVar[tuple[str, ...]] = ("concentration",)

    def information(self, mean, *, concentration):
        """``mu theta / (mu + theta)`` at expected count ``mu``."""
        return _nb_information(mean, concentration)

    def working_response(self, observation, size_factors, log_rate):
        """``x + y / (l e^x) - 1``: the scoring step is the same as Poisson's."""
        return _count_working_response(observation, size_factors, log_rate)

    def expected_score(self, observation, log_mean, variance=0.0, *, concentration):
        """``y - (y + theta) mu / (theta + mu)`` at ``mu = e^(log_mean + variance / 2)``."""
        return _nb_score(observation, _lognormal_mean(log_mean, variance), concentration)

    def sample_parameters(self, num_genes: int) -> dict[str, jax.Array]:
        """Sample ``concentration`` ``[num_genes]`` (see the class docstring for the prior)."""
        prior = self.concentration_prior or dist.LogNormal(*_CONCENTRATION_PRIOR)
        return {"concentration": _per_gene_site(self.site_name("concentration"), prior, num_genes)}

    def distribution(
        self, log_rate: jax.Array, size_factors: jax.Array, *, concentration: jax.Array
    ) -> dist.Distribution:
        """``NB(mean = exp(log_mean), concentration)``; ``concentration`` has shape ``[genes]``."""
        return _negative_binomial(self.log_mean(log_rate, size_factors), concentration)


@dataclass(frozen=True, kw_only=True)
class ZeroInflatedNegativeBinomial(NoiseModel):
    """Negative binomial with an extra per-gene probability ``pi`` of a zero (as in scVI).

    ``P(0) = pi + (1 - pi) NB(0)``, ``P(k) = (1 - pi) NB(k)`` for ``k > 0``; mean
    ``(1 - pi) mu``, variance ``(1 - pi) mu (1 + mu / theta + pi mu)``. Lopez et al. (2018) use
    it for single cells; Svensson (2020) shows droplet UMI counts are mostly fitted by the plain
    negative binomial, so prefer :class:`NegativeBinomial` and keep the default prior, which
    puts the gate near zero. Sample sites ``f"{prefix}_concentration"`` and
    ``f"{prefix}_gate_logits"``; parameters ``concentration`` and ``gate_logits``.

    Parameters
    ----------
    concentration_prior
        As in :class:`NegativeBinomial`.
    gate_logits_prior
        Prior of ``logit(pi)`` per gene. Default ``Normal(-3, 2)``: median gate 0.05, 95% of
        the mass below about 0.7.
    """

    concentration_prior: dist.Distribution | None = None
    gate_logits_prior: dist.Distribution | None = None

    parameter_names: ClassVar[tuple[str, ...]] = ("concentration", "gate_logits")

    def information(self, mean, *, concentration, gate_logits):
        """``(1 - pi) mu theta / (mu + theta)``: the negative binomial's, for the fraction of
        counts that come from it (an approximation: the message only steers the guide)."""
        return jax.nn.sigmoid(-gate_logits) * _nb_information(mean, concentration)

    def working_response(self, observation, size_factors, log_rate):
        """The negative binomial's scoring step (zeros that the gate explains pull less through
        :meth:`expected_score`)."""
        return _count_working_response(observation, size_factors, log_rate)

    def expected_score(self, observation, log_mean, variance=0.0, *, concentration, gate_logits):
        """The negative binomial's score for positive counts; for a zero,
        ``-(1 - pi) p0 theta mu / (theta + mu) / (pi + (1 - pi) p0)`` with ``p0 = NB(0)``."""
        mean = _lognormal_mean(log_mean, variance)
        score = _nb_score(observation, mean, concentration)
        log_zero = concentration * (jnp.log(concentration) - jnp.log(concentration + mean))
        # Posterior weight of the negative binomial for a zero: (1 - pi) p0 / P(0).
        from_counts = jax.nn.log_sigmoid(-gate_logits) + log_zero
        weight = jnp.exp(from_counts - jnp.logaddexp(jax.nn.log_sigmoid(gate_logits), from_counts))
        return jnp.where(observation > 0, score, weight * score)

    def sample_parameters(self, num_genes: int) -> dict[str, jax.Array]:
        """Sample ``concentration`` and ``gate_logits``, each ``[num_genes]``."""
        concentration_prior = self.concentration_prior or dist.LogNormal(*_CONCENTRATION_PRIOR)
        gate_logits_prior = self.gate_logits_prior or dist.Normal(*_GATE_LOGITS_PRIOR)
        return {
            "concentration": _per_gene_site(
                self.site_name("concentration"), concentration_prior, num_genes
            ),
            "gate_logits": _per_gene_site(
                self.site_name("gate_logits"), gate_logits_prior, num_genes
            ),
        }

    def distribution(
        self,
        log_rate: jax.Array,
        size_factors: jax.Array,
        *,
        concentration: jax.Array,
        gate_logits: jax.Array,
    ) -> dist.Distribution:
        """Zero-inflated ``NB(exp(log_mean), concentration)`` with ``pi = sigmoid(gate_logits)``."""
        base = _negative_binomial(self.log_mean(log_rate, size_factors), concentration)
        return dist.ZeroInflatedDistribution(base, gate_logits=jnp.asarray(gate_logits))


@dataclass(frozen=True, kw_only=True)
class Poisson(NoiseModel):
    """Poisson counts with mean ``l_c * exp(x_cg)``: no per-gene noise parameter.

    The rate is ``exp(log_mean)``, so the expected count itself must be representable
    (``log_mean < 88`` in float32).
    """

    def information(self, mean):
        """``mu`` at expected count ``mu``."""
        return mean

    def working_response(self, observation, size_factors, log_rate):
        """``x + y / (l e^x) - 1``."""
        return _count_working_response(observation, size_factors, log_rate)

    def expected_score(self, observation, log_mean, variance=0.0):
        """``y - mu`` at ``mu = e^(log_mean + variance / 2)``."""
        return observation - _lognormal_mean(log_mean, variance)

    def sample_parameters(self, num_genes: int) -> dict[str, jax.Array]:
        """No parameters: returns ``{}`` and declares no site."""
        del num_genes
        return {}

    def distribution(self, log_rate: jax.Array, size_factors: jax.Array) -> dist.Distribution:
        """``Poisson(exp(log_mean))``."""
        return dist.Poisson(jnp.exp(self.log_mean(log_rate, size_factors)))


@dataclass(frozen=True, kw_only=True)
class LogNormalizedGaussian(NoiseModel):
    """Gaussian on log1p-normalised data, the usual scanpy representation.

    The observation is ``y_cg = log1p(counts_cg / l_c * target_sum)``: size factors enter
    here, by normalising each cell, not through the mean. Its distribution is
    ``Normal(loc = log1p(target_sum * f_cg), scale_g)`` with ``f_cg = exp(x_cg)`` (or the
    softmax), the expected normalised count ``E[counts / l]``; ``loc`` is computed as
    ``softplus(log(target_sum) + log f)``. Not a count model: counts are not reproduced. Sample
    site ``f"{prefix}_scale"``; parameter ``scale``.

    Parameters
    ----------
    target_sum
        Counts per cell after normalisation (``causalcell.preprocessing.DEFAULT_TARGET_SUM``).
    scale_prior
        Prior of each gene's standard deviation on the log1p scale. Default
        ``LogNormal(log 0.5, 1)``: median 0.5, 95% of the mass in about ``[0.07, 3.5]``, and no
        mass at zero, where the likelihood of a constant gene would be unbounded.
    """

    target_sum: float = DEFAULT_TARGET_SUM
    scale_prior: dist.Distribution | None = None

    is_count_model: ClassVar[bool] = False

    def sample_parameters(self, num_genes: int) -> dict[str, jax.Array]:
        """Sample ``scale`` ``[num_genes]``."""
        prior = self.scale_prior or dist.LogNormal(*_SCALE_PRIOR)
        return {"scale": _per_gene_site(self.site_name("scale"), prior, num_genes)}

    def distribution(
        self, log_rate: jax.Array, size_factors: jax.Array, *, scale: jax.Array
    ) -> dist.Distribution:
        """``Normal(log1p(target_sum * exp(log_fraction)), scale)``.

        Size factors only set the batch shape here: they enter through :meth:`observation`.
        """
        loc = jax.nn.softplus(math.log(self.target_sum) + self.log_fraction(log_rate))
        shape = jnp.broadcast_shapes(loc.shape, (*jnp.shape(size_factors), 1), jnp.shape(scale))
        return dist.Normal(jnp.broadcast_to(loc, shape), scale)

    def observation(self, counts, size_factors) -> jax.Array:
        """``log1p(counts / size_factors[..., None] * target_sum)`` as a float array."""
        counts = _dense(counts)
        size_factors = jnp.asarray(size_factors, dtype=jnp.result_type(float))
        return jnp.log1p(counts * (self.target_sum / size_factors)[..., None])


@dataclass(frozen=True, kw_only=True)
class Gaussian(NoiseModel):
    """Gaussian noise on data already on a log scale: ``y_cg ~ Normal(log l_c + x_cg, s_g)``.

    For continuous measurements whose log (or arcsinh) the user has taken: flow or mass
    cytometry, CITE-seq protein levels, log-normalised expression. The observation is the data
    as given; size factors shift the mean in log space (pass ones for data that need none).
    Its Gaussian messages are exact. Sample site ``f"{prefix}_scale"``; parameter ``scale``.

    Parameters
    ----------
    scale_prior
        Prior of each gene's standard deviation. Default ``LogNormal(log 0.5, 1)``, as
        :class:`LogNormalizedGaussian`'s.
    """

    scale_prior: dist.Distribution | None = None

    is_count_model: ClassVar[bool] = False
    parameter_names: ClassVar[tuple[str, ...]] = ("scale",)

    def sample_parameters(self, num_genes: int) -> dict[str, jax.Array]:
        """Sample ``scale`` ``[num_genes]``."""
        prior = self.scale_prior or dist.LogNormal(*_SCALE_PRIOR)
        return {"scale": _per_gene_site(self.site_name("scale"), prior, num_genes)}

    def distribution(self, log_rate, size_factors, *, scale) -> dist.Distribution:
        """``Normal(log l + x, scale)``."""
        return dist.Normal(self.log_mean(log_rate, size_factors), scale)

    def observation(self, counts, size_factors) -> jax.Array:
        """The data as given, dense, as floats."""
        del size_factors
        return jnp.asarray(_dense(counts), dtype=jnp.result_type(float))

    def information(self, mean, *, scale):
        """``1 / s^2``, whatever the mean."""
        return jnp.broadcast_to(
            scale**-2.0, jnp.broadcast_shapes(jnp.shape(mean), jnp.shape(scale))
        )

    def working_response(self, observation, size_factors, log_rate):
        """``y - log l``: exact, from any point."""
        del log_rate
        log_size = jnp.log(jnp.asarray(size_factors, dtype=jnp.result_type(float)))
        return observation - log_size[..., None]

    def expected_score(self, observation, log_mean, variance=0.0, *, scale):
        """``(y - log_mean) / s^2`` (linear: the spread does not move it)."""
        del variance
        return (observation - log_mean) / scale**2


def _count_working_response(observation, size_factors, log_rate):
    """``x + y / (l e^x) - 1``, the Fisher-scoring step of a Poisson or negative binomial
    count from log-rate ``x`` (``(y - mu) / mu`` for either)."""
    sizes = jnp.asarray(size_factors, dtype=jnp.result_type(float))[..., None]
    return log_rate + observation / (sizes * jnp.exp(log_rate)) - 1.0


def _lognormal_mean(log_mean, variance):
    """``e^(log_mean + variance / 2)``: the mean of a count's rate whose log is spread."""
    return jnp.exp(log_mean + 0.5 * jnp.asarray(variance))


def _nb_information(mean, concentration):
    """Fisher information of a negative binomial count about its log-mean, ``mu theta / (mu +
    theta)``."""
    return mean * concentration / (mean + concentration)


def _nb_score(observation, mean, concentration):
    """Derivative of a negative binomial count's log-likelihood in its log-mean at ``mean``."""
    return observation - (observation + concentration) * mean / (concentration + mean)
