"""The interface of the noise models and what they share (see :mod:`causalcell.noise`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
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

__all__ = ["LINKS", "NoiseModel", "validate_counts"]

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
    #: Names of the per-gene parameters that :meth:`sample_parameters` returns.
    parameter_names: ClassVar[tuple[str, ...]] = ()

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

    def parameters_of(self, values: Mapping) -> dict[str, jax.Array]:
        """This model's parameters by name, from values keyed by site name (a guide's values,
        a posterior draw): ``{name: values[site_name(name)]}``."""
        return {name: values[self.site_name(name)] for name in self.parameter_names}

    # Gaussian messages of the log-rate. An amortized guide with a Gaussian latent (LCD's)
    # replaces each observation's likelihood of its log-rate ``x`` by a Gaussian in ``x``: its
    # precision is the Fisher information, its mean a Fisher-scoring step (Johnson et al. 2016,
    # conjugate messages in a guide). The ELBO still takes the exact likelihood.
    def information(self, mean: jax.Array, **parameters: jax.Array) -> jax.Array:
        """Fisher information of one observation about its log-rate, where its expected count
        (count models) is ``mean``: the precision of its Gaussian message."""
        raise NotImplementedError(f"{type(self).__name__} has no Gaussian messages.")

    def working_response(
        self, observation: jax.Array, size_factors: jax.Array, log_rate: jax.Array
    ) -> jax.Array:
        """The mean of the message that linearises each observation's likelihood at
        ``log_rate`` ``[..., cells, genes]``: one Fisher-scoring step from there,
        ``log_rate + score / information``."""
        raise NotImplementedError(f"{type(self).__name__} has no Gaussian messages.")

    def expected_score(
        self,
        observation: jax.Array,
        log_mean: jax.Array,
        variance: jax.Array | float = 0.0,
        **parameters: jax.Array,
    ) -> jax.Array:
        """Derivative of each observation's log-likelihood in its log-rate, at log mean
        ``log_mean`` (``log l + x``) spread with ``variance`` (count models take the
        lognormal mean ``e^(log_mean + variance / 2)``): a guide's relinearisation."""
        raise NotImplementedError(f"{type(self).__name__} has no Gaussian messages.")

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
