"""NumPyro's ``MultivariateNormal`` with its factorisations taken from :mod:`.linalg`.

``numpyro.distributions.MultivariateNormal.log_prob`` solves ``L z = x - mu`` with a batched
LAPACK triangular solve; with one ``scale_tril`` per cell (LCD's latent law of a minibatch of
512 cells, 30 genes) that call is large enough for jaxlib 0.10's parallel batch path and can
deadlock the CPU runtime (see :mod:`causalcell._core.linalg`). This subclass is the same
distribution (same parameters, samples, pytree fields and ``isinstance``) whose log density,
Cholesky factor and precision use :mod:`causalcell._core.linalg`, which avoids that path.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions.util import lazy_property, validate_sample

from causalcell._core.linalg import cho_solve, cholesky, solve_triangular, uses_pure

__all__ = ["MultivariateNormal"]


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
        if not uses_pure():
            return super().log_prob(value)
        centered = value - self.loc
        whitened = solve_triangular(self.scale_tril, centered[..., None], lower=True)[..., 0]
        diagonal = jnp.diagonal(self.scale_tril, axis1=-2, axis2=-1)
        half_log_det = jnp.sum(jnp.log(jnp.abs(diagonal)), axis=-1)
        return -0.5 * jnp.sum(whitened**2, axis=-1) - half_log_det - 0.5 * order * np.log(2 * np.pi)

    @lazy_property
    def precision_matrix(self):
        identity = jnp.broadcast_to(
            jnp.eye(self.scale_tril.shape[-1], dtype=self.scale_tril.dtype), self.scale_tril.shape
        )
        return cho_solve((self.scale_tril, True), identity)
