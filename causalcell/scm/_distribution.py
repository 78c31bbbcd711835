"""The joint law of a structural causal model's nodes as one NumPyro distribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import lax
from numpyro.distributions import constraints

from causalcell.interventions import Intervention, compose

__all__ = ["StructuralDistribution"]


class StructuralDistribution(dist.Distribution):
    """Joint law of ``x_j = where(knockout_j, level_j, m_j(x) + shift_j + knockdown_j + s_j e_j)``.

    ``m = mechanism`` maps ``x [..., d]`` to the node means ``loc [..., d]``, where ``loc_j`` may
    depend only on the parents of node ``j`` in a DAG; ``s_j = scale_j * noise_scale_j`` and
    the exogenous noise is ``e ~ N(0, I_d)``. The fields of ``intervention`` act per node as in
    :mod:`causalcell.interventions`: ``shift`` and ``knockdown`` (a log fraction) add to the
    mean, ``noise_scale`` multiplies the noise scale, and ``knockout`` fixes the node at
    ``knockout_level`` whatever its parents and noise (a hard ``do``).

    The inverse map ``x -> e`` is triangular in a topological order with diagonal ``1 / s_j``,
    so the density is exact without any matrix inverse:
    ``log p(x) = sum_{j not knocked out} log N(x_j; loc_j + shift_j + knockdown_j, s_j)``.
    Knocked-out nodes contribute 0: their value is fixed by the intervention, not random
    (``log_prob`` does not check that ``x`` carries the level there).

    Counterfactual protocol: :meth:`to_noise` (abduction, ``x -> e``) and :meth:`from_noise`
    (prediction, ``e -> x``, the map ``sample`` uses) let several worlds share the exogenous
    noise: ``from_noise(to_noise(x)) == x`` whenever ``x`` agrees with the knockouts.

    Parameters
    ----------
    mechanism
        Pure function ``x [..., d] -> loc [..., d]`` (no NumPyro sample sites), with ``loc_j``
        a function of ``x``'s parents of ``j`` only. It must accept any leading batch shape.
    scale
        Noise scales ``[..., d]``, positive.
    intervention
        Per-node :class:`~causalcell.interventions.Intervention` with fields ``[..., d]``; the
        identity (nothing intervened) by default.
    depth
        Number of edges on the longest directed path of the DAG; ``sample`` iterates the
        structural equations ``depth + 1`` times, which is exact for a DAG. Defaults to
        ``d - 1``, the largest depth possible on ``d`` nodes.
    batch_shape
        Further batch shape to broadcast to (e.g. a plate over units).
    validate_args
        NumPyro's argument validation flag.

    Raises
    ------
    ValueError
        If a knockout has a ``NaN`` level and the level is concrete (under ``jit`` the samples
        are ``NaN`` there instead). An SCM has no learned or natural off level: through
        :class:`causalcell.handlers.do`, ``knockout()`` without a level and ``learned()`` are
        rejected before the law is built.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> weights = jnp.array([[0.0, 2.0], [0.0, 0.0]])  # x0 -> x1 with weight 2
    >>> law = StructuralDistribution(lambda x: x @ weights, jnp.ones(2), depth=1)
    >>> x = law.sample(jax.random.PRNGKey(0), (3,))
    >>> x.shape
    (3, 2)
    >>> bool(jnp.allclose(law.from_noise(law.to_noise(x)), x))
    True

    References
    ----------
    Pearl, J. (2009). *Causality*, 2nd ed., chapters 1.4 and 7. Cambridge University Press.

    Peters, J., Janzing, D. and Schölkopf, B. (2017). *Elements of Causal Inference*,
    chapters 6.2-6.4 (structural causal models, interventions, counterfactuals). MIT Press.
    """

    arg_constraints: ClassVar[dict] = {"scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True
    pytree_data_fields = ("scale", "intervention")
    pytree_aux_fields = ("mechanism", "depth")

    def __init__(
        self,
        mechanism: Callable,
        scale,
        intervention: Intervention | None = None,
        *,
        depth: int | None = None,
        batch_shape: tuple[int, ...] = (),
        validate_args: bool | None = None,
    ):
        scale = jnp.asarray(scale)
        if scale.ndim == 0:
            raise ValueError("scale must have one entry per node (shape [..., d]), got a scalar.")
        size = scale.shape[-1]
        if intervention is None:
            intervention = Intervention.identity(size)
        intervention = Intervention(*(jnp.asarray(field) for field in intervention))
        if intervention.num_genes != size:
            raise ValueError(
                f"The intervention has {intervention.num_genes} entries but the SCM has {size} "
                "nodes."
            )
        _check_knockout_levels(intervention)
        shapes = [scale.shape[:-1], tuple(batch_shape)]
        shapes += [field.shape[:-1] for field in intervention]
        self.mechanism = mechanism
        self.scale = scale
        self.intervention = intervention
        self.depth = size - 1 if depth is None else int(depth)
        super().__init__(
            batch_shape=lax.broadcast_shapes(*shapes),
            event_shape=(size,),
            validate_args=validate_args,
        )

    def expand(self, batch_shape) -> StructuralDistribution:
        """The same law with parameters broadcast to ``batch_shape`` (e.g. a plate)."""
        batch_shape = tuple(batch_shape)
        if lax.broadcast_shapes(batch_shape, self.batch_shape) != batch_shape:
            raise ValueError(f"Cannot expand batch shape {self.batch_shape} to {batch_shape}.")
        return self.intervene(None, batch_shape=batch_shape)

    def intervene(
        self, intervention: Intervention | None, *, batch_shape: tuple[int, ...] | None = None
    ) -> StructuralDistribution:
        """The same SCM under this law's intervention composed with ``intervention``.

        Same mechanism and scales: the "action" step of a counterfactual, whose prediction is
        ``intervened.from_noise(self.to_noise(x))``.
        """
        combined = (
            self.intervention if intervention is None else compose(self.intervention, intervention)
        )
        return StructuralDistribution(
            self.mechanism,
            self.scale,
            combined,
            depth=self.depth,
            batch_shape=self.batch_shape if batch_shape is None else batch_shape,
            validate_args=self._validate_args,
        )

    def _offset_and_scale(self):
        offset = self.intervention.shift + self.intervention.knockdown
        return offset, self.scale * self.intervention.noise_scale

    def _loc(self, x):
        return jnp.broadcast_to(self.mechanism(x), x.shape)

    def from_noise(self, noise):
        """Push exogenous noise ``e [..., d]`` through the structural equations: ``x``."""
        noise = jnp.asarray(noise)
        offset, scale = self._offset_and_scale()
        knocked_out = self.intervention.knockout
        level = self.intervention.knockout_level
        shape = lax.broadcast_shapes(noise.shape, self.batch_shape + self.event_shape)
        dtype = jnp.result_type(noise, self.scale, jnp.float32)

        def step(_, x):
            natural = self._loc(x) + offset + scale * noise
            return jnp.where(knocked_out, level, natural).astype(dtype)

        # Node j is exact after (its depth + 1) sweeps, whatever x started from.
        return lax.fori_loop(0, self.depth + 1, step, jnp.zeros(shape, dtype))

    def to_noise(self, x):
        """Recover the exogenous noise ``e = (x - loc(x) - shift - knockdown) / s`` (0 if KO)."""
        x = jnp.asarray(x)
        offset, scale = self._offset_and_scale()
        noise = (x - self._loc(x) - offset) / scale
        return jnp.where(self.intervention.knockout, 0.0, noise)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        return self.from_noise(jax.random.normal(key, shape, jnp.result_type(self.scale)))

    def rsample(self, key, sample_shape=()):
        return self.sample(key, sample_shape)

    def log_prob(self, value):
        offset, scale = self._offset_and_scale()
        loc = self._loc(value) + offset
        log_density = dist.Normal(loc, scale).log_prob(value)
        return jnp.where(self.intervention.knockout, 0.0, log_density).sum(-1)


def _check_knockout_levels(intervention: Intervention) -> None:
    knocked_out, level = intervention.knockout, intervention.knockout_level
    if isinstance(knocked_out, jax.core.Tracer) or isinstance(level, jax.core.Tracer):
        return
    if np.any(np.asarray(knocked_out) & np.isnan(np.asarray(level))):
        raise ValueError(
            "A knockout has a NaN level, and this SCM has no natural off level to stand in for "
            "it; pass a finite level, e.g. knockout(0.0) or from_targets(d, targets, "
            "'knockout', 0.0)."
        )
