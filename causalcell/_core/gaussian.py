"""NumPyro's ``MultivariateNormal`` with its factorisations taken from :mod:`.linalg`.

``numpyro.distributions.MultivariateNormal.log_prob`` solves ``L z = x - mu`` with a batched
LAPACK triangular solve; with one ``scale_tril`` per cell (LCD's latent law of a minibatch of
512 cells, 30 genes) that call is large enough for jaxlib 0.10's parallel batch path and can
deadlock the CPU runtime (see :mod:`causalcell._core.linalg`). This subclass is the same
distribution (same parameters, samples, pytree fields and ``isinstance``) whose log density,
Cholesky factor and precision use :mod:`causalcell._core.linalg`, which avoids that path.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.util import lazy_property, validate_sample

from causalcell._core.linalg import (
    avoids_batched_lapack,
    cho_solve,
    cholesky,
    solve_triangular,
)

__all__ = ["BlockMultivariateNormal", "CellFactors", "MultivariateNormal"]


def _half_log_det(scale_tril):
    """``log |det L|`` of lower-triangular factors ``[..., m, m]``: ``[...]``."""
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale_tril, axis1=-2, axis2=-1))), axis=-1)


def _log_density(squares, half_log_det, order: int):
    """Gaussian log density from the whitened squared norm ``|L^{-1}(x - mu)|^2``."""
    return -0.5 * squares - half_log_det - 0.5 * order * np.log(2 * np.pi)


class MultivariateNormal(dist.MultivariateNormal):
    """Multivariate normal ``N(loc, L L^T)``; parameters as
    ``numpyro.distributions.MultivariateNormal`` (exactly one of ``covariance_matrix``,
    ``precision_matrix``, ``scale_tril``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> law = MultivariateNormal(jnp.zeros(2), scale_tril=jnp.eye(2))
    >>> round(float(law.log_prob(jnp.zeros(2))), 4)
    -1.8379
    """

    def __init__(
        self,
        loc=0.0,
        covariance_matrix=None,
        precision_matrix=None,
        scale_tril=None,
        *,
        validate_args=None,
    ):
        given = [m is not None for m in (covariance_matrix, precision_matrix, scale_tril)]
        if sum(given) != 1:
            raise ValueError(
                "Give exactly one of covariance_matrix, precision_matrix and scale_tril."
            )
        if covariance_matrix is not None:
            scale_tril = cholesky(covariance_matrix)
        elif precision_matrix is not None:
            precision = jnp.asarray(precision_matrix)
            identity = jnp.broadcast_to(
                jnp.eye(precision.shape[-1], dtype=precision.dtype), precision.shape
            )
            scale_tril = cholesky(cho_solve((cholesky(precision), True), identity))
        super().__init__(loc, scale_tril=scale_tril, validate_args=validate_args)

    @validate_sample
    def log_prob(self, value):
        order = self.event_shape[-1]
        if not avoids_batched_lapack():
            return super().log_prob(value)
        centered = value - self.loc
        whitened = solve_triangular(self.scale_tril, centered[..., None], lower=True)[..., 0]
        return _log_density(jnp.sum(whitened**2, axis=-1), _half_log_det(self.scale_tril), order)

    @lazy_property
    def precision_matrix(self):
        identity = jnp.broadcast_to(
            jnp.eye(self.scale_tril.shape[-1], dtype=self.scale_tril.dtype), self.scale_tril.shape
        )
        return cho_solve((self.scale_tril, True), identity)


def _columns(values, blocks: int):
    """``[..., cells, m]`` -> ``[..., blocks, m, cells / blocks]``: each block's cells as
    columns."""
    *lead, cells, order = values.shape
    return jnp.swapaxes(values.reshape(*lead, blocks, cells // blocks, order), -1, -2)


def _rows(columns):
    """The inverse of :func:`_columns`."""
    *lead, blocks, order, size = columns.shape
    return jnp.swapaxes(columns, -1, -2).reshape(*lead, blocks * size, order)


class BlockMultivariateNormal(dist.Distribution):
    """``N(loc_c, L_k L_k^T)`` per cell ``c`` for cells in ``K`` contiguous blocks of equal
    size, cell ``c`` in block ``k = c // (cells / K)``.

    The law of ``MultivariateNormal(loc, scale_tril=scale_tril[c // block])`` without that
    per-cell copy of the factors (``cells x m^2`` entries, and a scatter of as many in the
    gradient): draws and densities are per block, the block's cells as the columns of one
    product or one triangular solve.

    Parameters
    ----------
    loc
        ``[..., cells, m]``.
    scale_tril
        ``[K, m, m]`` lower-triangular factors; ``K`` divides ``cells``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> law = BlockMultivariateNormal(jnp.zeros((4, 2)), jnp.stack([jnp.eye(2), 2 * jnp.eye(2)]))
    >>> [round(float(value), 4) for value in law.log_prob(jnp.zeros((4, 2)))]
    [-1.8379, -1.8379, -3.2242, -3.2242]
    """

    arg_constraints: ClassVar[dict] = {
        "loc": constraints.real_vector,
        "scale_tril": constraints.lower_cholesky,
    }
    support = constraints.real_vector
    reparametrized_params: ClassVar[list] = ["loc", "scale_tril"]
    pytree_data_fields = ("loc", "scale_tril")

    def __init__(self, loc, scale_tril, *, validate_args=None):
        loc, scale_tril = jnp.asarray(loc), jnp.asarray(scale_tril)
        if scale_tril.ndim != 3 or loc.ndim < 2 or loc.shape[-2] % scale_tril.shape[0]:
            raise ValueError(
                f"BlockMultivariateNormal needs loc [..., cells, m] and scale_tril [K, m, m] "
                f"with K dividing cells; got {loc.shape} and {scale_tril.shape}."
            )
        self.loc, self.scale_tril = loc, scale_tril
        super().__init__(
            batch_shape=loc.shape[:-1], event_shape=loc.shape[-1:], validate_args=validate_args
        )

    def _per_cell(self, values):
        """``[K]`` -> ``[cells]``: each cell's block's value."""
        return jnp.repeat(values, self.loc.shape[-2] // self.scale_tril.shape[0], axis=-1)

    def sample(self, key, sample_shape=()):
        noise = jax.random.normal(key, sample_shape + self.batch_shape + self.event_shape)
        blocks = self.scale_tril.shape[0]
        return self.loc + _rows(self.scale_tril @ _columns(noise, blocks))

    @validate_sample
    def log_prob(self, value):
        blocks, order = self.scale_tril.shape[0], self.event_shape[-1]
        whitened = solve_triangular(self.scale_tril, _columns(value - self.loc, blocks))
        squares = jnp.sum(whitened**2, axis=-2)  # [..., K, cells / K]
        squares = squares.reshape(*squares.shape[:-2], -1)
        return _log_density(squares, self._per_cell(_half_log_det(self.scale_tril)), order)

    @property
    def mean(self):
        return jnp.broadcast_to(self.loc, self.shape())

    @property
    def variance(self):
        per_block = jnp.sum(self.scale_tril**2, axis=-1)  # [K, m]
        return jnp.broadcast_to(jnp.moveaxis(self._per_cell(per_block.T), -1, -2), self.shape())


class CellFactors(NamedTuple):
    """Each cell's lower-triangular ``[m, m]`` factor, stored once per group of cells.

    ``factors`` is ``[K, m, m]`` (one per group, cell ``c`` taking ``factors[slot[c]]``) or
    ``[m, m]`` (one for every cell). With ``block`` set, the cells are ``K`` contiguous blocks
    of ``block`` cells in group order (a batch drawn stratum by stratum,
    :func:`causalcell.inference.batch_strata`), and products and laws run per block instead
    of on a per-cell copy of the factors.
    """

    factors: jax.Array
    slot: jax.Array
    block: int | None = None

    def matmul(self, values, *, transpose: bool = False):
        """``L_c x_c`` (``L_c^T x_c`` with ``transpose``) for ``values`` ``[cells, m]``."""
        factors = jnp.swapaxes(self.factors, -1, -2) if transpose else self.factors
        if factors.ndim == 2:
            return values @ factors.T
        if self.block is not None:
            return _rows(factors @ _columns(values, factors.shape[0]))
        return jnp.einsum("cij,cj->ci", factors[self.slot], values)

    def gaussian(self, loc):
        """``N(loc_c, L_c L_c^T)`` per cell (``loc`` ``[cells, m]``)."""
        if self.factors.ndim == 2:
            return MultivariateNormal(loc, scale_tril=self.factors)
        if self.block is not None:
            return BlockMultivariateNormal(loc, self.factors)
        return MultivariateNormal(loc, scale_tril=self.factors[self.slot])
