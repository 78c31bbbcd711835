"""A global guide with Kronecker-correlated matrices: ``W = M + S * (L_r Z L_c^T)``.

Mean-field guides treat every entry of a matrix-valued global (e.g. a drift's weights, ``m^2``
entries) as independent. The entries of one row of a drift are the coefficients of one gene's
regression on the others, so its posterior correlates them strongly, and a mean-field guide
answers with intervals several times too narrow. A full-covariance guide keeps every
correlation but has ``m^4 / 2`` parameters. This guide keeps a correlation between rows and one
between columns (a matrix-normal, the structure of a multivariate regression's coefficients)
and a free scale per entry, with ``O(m^2)`` parameters and an ``O(m^3)`` draw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.handlers import block, seed, substitute, trace
from numpyro.infer import init_to_median
from numpyro.infer.autoguide import AutoNormal

__all__ = ["AutoKroneckerNormal"]

#: Posterior standard deviation of every entry at the start (as AutoNormal's ``init_scale``).
_INITIAL_SCALE = 0.1


def _is_real_matrix(site) -> bool:
    """A latent sample site whose event is a real matrix (its guide can draw it directly)."""
    if site["type"] != "sample" or site["is_observed"]:
        return False
    law = site["fn"]
    support = law.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return len(law.event_shape) == 2 and support is constraints.real


class AutoKroneckerNormal:
    """Guide for global sites: Kronecker-correlated Gaussians for real matrices, mean-field
    Gaussians (``AutoNormal``) for everything else.

    A real matrix site ``W`` of shape ``[r, c]`` is drawn as ``W = M + S * (L_r Z L_c^T)``:
    ``Z`` is ``r x c`` standard normal, ``L_r`` and ``L_c`` are unit lower-triangular (the
    Cholesky factors of a row and a column correlation-like matrix) and ``S`` is a free scale per
    entry. Then ``Cov(W_ij, W_kl) = S_ij S_kl (L_r L_r^T)_ik (L_c L_c^T)_jl``: a matrix-normal
    whose marginal variances are free. The map from ``Z`` is affine with Jacobian ``prod(S)``
    (unit-triangular factors have determinant 1), so the guide's density is exact. It starts as
    the mean-field guide (``L = I``, ``S = 0.1``).

    Parameters
    ----------
    model
        The NumPyro model of the global sites.
    prefix
        Prefix of the parameter names (as NumPyro's auto-guides).
    init_loc_fn
        Initial values of the sites, a NumPyro init strategy (e.g. ``init_to_median``).
    exclude
        Matrix sites to leave to the mean-field guide (e.g. sites held as point estimates).

    References
    ----------
    Louizos, C. & Welling, M. (2016). Structured and efficient variational deep learning with
    matrix Gaussian posteriors. ICML.
    Dawid, A. P. (1981). Some matrix-variate distribution theory. Biometrika 68.
    """

    def __init__(
        self,
        model: Callable,
        *,
        prefix: str = "auto",
        init_loc_fn: Callable = init_to_median,
        exclude=(),
    ):
        self.model = model
        self.prefix = prefix
        self.init_loc_fn = init_loc_fn
        self.exclude = frozenset(exclude)
        self.matrix_shapes: dict[str, tuple[int, int]] | None = None
        self._normal: AutoNormal | None = None  # the other latent sites' guide, if any

    def _setup(self, args, kwargs) -> dict:
        """Trace the model at its initial values (hidden from any outer handler); returns
        ``{matrix site: initial value}``."""
        with block():
            # The init strategy draws with the site's key, so seed sits inside substitute.
            seeded = seed(self.model, numpyro.prng_key())
            prototype = trace(substitute(seeded, substitute_fn=self.init_loc_fn)).get_trace(
                *args, **kwargs
            )
        initial = {
            name: site["value"]
            for name, site in prototype.items()
            if _is_real_matrix(site) and name not in self.exclude
        }
        self.matrix_shapes = {name: tuple(value.shape) for name, value in initial.items()}
        others = [
            name
            for name, site in prototype.items()
            if site["type"] == "sample" and not site["is_observed"] and name not in initial
        ]
        self._normal = (
            None
            if not others
            else AutoNormal(
                block(self.model, hide=list(initial)),
                prefix=self.prefix,
                init_loc_fn=self.init_loc_fn,
                init_scale=_INITIAL_SCALE,
            )
        )
        return initial

    def __call__(self, *args, **kwargs) -> dict:
        initial = self._setup(args, kwargs) if self.matrix_shapes is None else {}
        values = {} if self._normal is None else dict(self._normal(*args, **kwargs))
        for name, (rows, columns) in self.matrix_shapes.items():
            loc, scale, row_factor, column_factor = self._parameters(name, initial.get(name))
            base = numpyro.sample(
                f"_{name}_{self.prefix}_base",
                dist.Normal(0.0, 1.0).expand([rows, columns]).to_event(2),
                infer={"is_auxiliary": True},
            )
            value = loc + scale * (row_factor @ base @ column_factor.T)
            values[name] = numpyro.sample(
                name, dist.Delta(value, log_density=-jnp.sum(jnp.log(scale)), event_dim=2)
            )
        return values

    def _parameters(self, name: str, initial):
        """``(M, S, L_r, L_c)`` of one matrix site from the parameter store."""
        rows, columns = self.matrix_shapes[name]
        start = jnp.zeros((rows, columns)) if initial is None else initial
        loc = numpyro.param(f"{name}_{self.prefix}_loc", start)
        scale = numpyro.param(
            f"{name}_{self.prefix}_scale",
            jnp.full((rows, columns), _INITIAL_SCALE),
            constraint=constraints.softplus_positive,
        )
        factors = []
        for axis, size in (("rows", rows), ("columns", columns)):
            raw = numpyro.param(f"{name}_{self.prefix}_{axis}", jnp.zeros((size, size)))
            factors.append(jnp.eye(size) + jnp.tril(raw, -1))
        return loc, scale, *factors

    def median(self, params: Mapping) -> dict:
        """The posterior median (the mean ``M`` of each matrix site) from fitted ``params``."""
        medians = {} if self._normal is None else dict(self._normal.median(params))
        for name in self.matrix_shapes:
            medians[name] = params[f"{name}_{self.prefix}_loc"]
        return medians
