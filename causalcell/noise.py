"""Observation noise: how latent log-expression becomes the measured data (DESIGN 2.4).

A noise model turns the latent log-expression ``x[..., cell, gene]`` (the log of a cell's
expected count per unit of size factor) and the per-cell size factors ``l[..., cell]`` (observed
library sizes by default) into a NumPyro distribution over the observation of that cell and gene.
The expected count is ``l_c * exp(x_cg)`` with ``link="exp"`` or ``l_c * softmax(x_c)_g`` with
``link="softmax"``; it is always formed in log space, ``log l_c + x_cg``, so that very large or very
small rates and size factors stay finite.

Every noise model offers the same four pieces:

- ``sample_parameters(num_genes)``, called inside a NumPyro model (once, outside any plate over
  cells), declares the per-gene noise parameters as sample sites named ``f"{prefix}_{name}"`` and
  returns them as a dict keyed by ``name``;
- ``distribution(log_rate, size_factors, **parameters)`` returns the distribution of the
  observation, with batch shape ``log_rate.shape`` (broadcast with ``size_factors[..., None]``);
- ``observation(counts, size_factors)`` returns the array that distribution models;
- ``is_count_model`` says whether that array is the raw counts.

The softmax link normalises over the last axis, so it needs every gene in that axis: subsample
cells, not genes, with it. With ``link="exp"`` genes can be subsampled; index the parameters
returned by ``sample_parameters`` with the subsample indices before calling ``distribution``.

Examples
--------
>>> import jax, numpyro
>>> noise = NegativeBinomial()
>>> def model(counts, size_factors):
...     num_cells, num_genes = counts.shape
...     parameters = noise.sample_parameters(num_genes)
...     with numpyro.plate("cells", num_cells, dim=-2), numpyro.plate("genes", num_genes):
...         log_rate = numpyro.sample("x", numpyro.distributions.Normal(-5.0, 1.0))
...         likelihood = noise.distribution(log_rate, size_factors, **parameters)
...         numpyro.sample("counts", likelihood, obs=noise.observation(counts, size_factors))
>>> counts = jax.numpy.array([[3, 0], [1, 4]])
>>> trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(counts, counts.sum(1))
>>> sorted(trace)
['cells', 'counts', 'genes', 'noise_concentration', 'x']

References
----------
Hilbe, J. M. (2011). *Negative Binomial Regression* (2nd ed.). Cambridge University Press.

Lopez, R., Regier, J., Cole, M. B., Jordan, M. I., & Yosef, N. (2018). Deep generative modeling
for single-cell transcriptomics. *Nature Methods*, 15, 1053-1058.

Svensson, V. (2020). Droplet scRNA-seq is not zero-inflated. *Nature Biotechnology*, 38, 147-150.

Hafemeister, C., & Satija, R. (2019). Normalization and variance stabilization of single-cell
RNA-seq data using regularized negative binomial regression. *Genome Biology*, 20, 296.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import scipy.sparse

from causalcell._core.counts import PROBLEM_FIXES, find_invalid_entries
from causalcell._core.tracing import is_concrete
from causalcell.preprocessing import DEFAULT_TARGET_SUM

__all__ = [
    "LINKS",
    "LogNormalizedGaussian",
    "NegativeBinomial",
    "NoiseModel",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "validate_counts",
]

#: The mean functions a noise model accepts: ``l * exp(x)`` or ``l * softmax(x)`` over genes.
LINKS = ("exp", "softmax")

# Default priors: (loc, scale) on the log or logit scale, documented on the class using each.
_CONCENTRATION_PRIOR = (math.log(10.0), 2.0)
_GATE_LOGITS_PRIOR = (-3.0, 2.0)
_SCALE_PRIOR = (math.log(0.5), 1.0)


def _check_size_factors(size_factors: np.ndarray, rate_shape: tuple) -> None:
    """Size factors positive and finite, one per cell of log rates of shape ``rate_shape``."""
    cells = rate_shape[:-1]
    try:
        np.broadcast_shapes((*size_factors.shape, 1), rate_shape)
    except ValueError:
        raise ValueError(
            f"size_factors has shape {size_factors.shape} but the log rates have shape "
            f"{rate_shape} ([..., cells, genes]): pass one size factor per cell, shape {cells}, "
            "or a scalar."
        ) from None
    bad = ~(np.isfinite(size_factors) & (size_factors > 0))
    if bad.any():
        raise ValueError(
            f"size_factors must be positive and finite; {int(bad.sum())} of {size_factors.size} "
            "are not (a cell with no counts has total 0: drop it, or pass size factors of your "
            "own)."
        )


@dataclass(frozen=True, kw_only=True)
class NoiseModel(ABC):
    """Interface shared by the observation noise models.

    Parameters
    ----------
    link
        ``"exp"``: expected count ``l_c * exp(x_cg)``; ``"softmax"``: ``l_c * softmax(x_c)_g``
        over the last (gene) axis, so that ``x`` only sets each cell's composition.
    prefix
        Prefix of the sample sites declared by :meth:`sample_parameters`, e.g.
        ``"noise_concentration"``; change it when a program has two noise models.
    """

    link: Literal["exp", "softmax"] = "exp"
    prefix: str = "noise"

    #: True when the distribution models raw counts, False when it models a transform of them.
    is_count_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"link={self.link!r} is not one of {LINKS}.")

    def site_name(self, parameter: str) -> str:
        """Name of the sample site of ``parameter``: ``f"{prefix}_{parameter}"``."""
        return f"{self.prefix}_{parameter}"

    def log_fraction(self, log_rate: jax.Array) -> jax.Array:
        """Log of the expected count per unit size factor, ``x`` or ``log_softmax(x)``."""
        log_rate = jnp.asarray(log_rate)
        if self.link == "softmax":
            return jax.nn.log_softmax(log_rate, axis=-1)
        return log_rate

    def log_mean(self, log_rate: jax.Array, size_factors: jax.Array) -> jax.Array:
        """Log expected count ``log l_c + log_fraction(x)_cg``, ``[..., cells, genes]``.

        ``size_factors`` ``[..., cells]`` must be positive; a scalar broadcasts to every cell.

        Raises
        ------
        ValueError
            On concrete inputs, if a size factor is not positive and finite or their shape is
            not one per cell of ``log_rate`` (under ``jit`` nothing is checked).
        """
        if is_concrete(size_factors, log_rate):
            _check_size_factors(np.asarray(size_factors), np.shape(log_rate))
        log_size = jnp.log(jnp.asarray(size_factors, dtype=jnp.result_type(float)))
        return log_size[..., None] + self.log_fraction(log_rate)

    @abstractmethod
    def sample_parameters(self, num_genes: int) -> dict[str, jax.Array]:
        """Declare the per-gene noise parameters as sample sites and return them by name.

        Call inside a NumPyro model, once, outside any plate over cells: each site is a vector
        of length ``num_genes`` (event shape ``(num_genes,)``).
        """

    @abstractmethod
    def distribution(
        self, log_rate: jax.Array, size_factors: jax.Array, **parameters: jax.Array
    ) -> dist.Distribution:
        """Distribution of the observation, batch shape ``[..., cells, genes]``."""

    def observation(self, counts, size_factors) -> jax.Array:
        """The array :meth:`distribution` models: the counts themselves for count models.

        ``size_factors`` is unused here (it enters through the mean) and kept for a common
        signature. A scipy.sparse minibatch is made dense; pass minibatches, not a whole atlas.
        """
        del size_factors
        return _dense(counts)


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


def validate_counts(counts) -> None:
    """Check that ``counts`` holds finite, non-negative whole numbers; raise otherwise.

    Parameters
    ----------
    counts
        A numpy (or JAX) array, usually ``[cells, genes]``, or a scipy.sparse matrix or
        array, whose stored values alone are checked (it is never made dense).

    Raises
    ------
    TypeError
        If the values are not numbers.
    ValueError
        For non-finite, negative or non-integer values, with how many there are, where the
        first one is (cell and gene for a matrix) and how to fix it.

    Examples
    --------
    >>> validate_counts(np.array([[0, 3], [1, 0]]))
    >>> validate_counts(np.array([[0.0, 1.5]]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: counts contain 1 non-integer value(s); the first bad one is 1.5 at cell 0, ...
    """
    invalid = find_invalid_entries(counts)
    if invalid is None:
        return
    summary = ", ".join(f"{number} {problem}" for problem, number in invalid.problems.items())
    # The row is the leading index: the position itself for a vector.
    where = (
        f"cell {invalid.row}, gene {invalid.column}"
        if np.ndim(counts) == 2
        else f"index {invalid.row}"
    )
    fixes = " ".join(PROBLEM_FIXES[problem] for problem in invalid.problems)
    raise ValueError(
        f"counts contain {summary} value(s); the first bad one is {invalid.value!r} at {where}. "
        f"{fixes}"
    )


def _per_gene_site(name: str, prior: dist.Distribution, num_genes: int) -> jax.Array:
    """One sample site holding a vector of ``num_genes`` independent draws from ``prior``."""
    return numpyro.sample(name, prior.expand([num_genes]).to_event(1))


def _negative_binomial(log_mean: jax.Array, concentration: jax.Array) -> dist.Distribution:
    """NB with mean ``exp(log_mean)`` and ``Var = mean + mean**2 / concentration``."""
    concentration = jnp.asarray(concentration)
    logits = log_mean - jnp.log(concentration)
    return dist.NegativeBinomialLogits(jnp.broadcast_to(concentration, logits.shape), logits)


def _dense(counts) -> jax.Array:
    """A JAX array of ``counts`` (scipy.sparse made dense)."""
    return jnp.asarray(counts.toarray() if scipy.sparse.issparse(counts) else counts)
