"""The amortized guide: a neural encoder for per-cell latents, an auto-guide for the globals."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module
from numpyro.handlers import block
from numpyro.infer import Predictive, init_to_median
from numpyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from numpyro.primitives import Messenger

from causalcell.inference._kronecker import AutoKroneckerNormal
from causalcell.inference._subsample import subsample
from causalcell.inference._trace import abstract_trace, split_data

__all__ = [
    "FULL_RANK_LIMIT",
    "AmortizedGuide",
    "default_encoder_inputs",
    "draw_sites",
    "encode_batch",
]

#: Most global dimensions for which ``global_guide="auto"`` picks the full-covariance guide: its
#: scale matrix has ``D (D + 1) / 2`` parameters (180k at 600), cheap next to the encoder, and
#: its ``O(D^2)`` draw is negligible beside the model's per-step cost.
FULL_RANK_LIMIT = 600
#: The auto-guides for the global sites, by ``global_guide`` name.
_GLOBAL_GUIDES = {
    "normal": AutoNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "full": AutoMultivariateNormal,
    "kronecker": AutoKroneckerNormal,
}
#: Scale of every per-cell posterior when the encoder's raw output is zero.
_INITIAL_SCALE = 0.1


def default_encoder_inputs(data: Mapping, index) -> jnp.ndarray:
    """Encoder features of the cells ``index``: log1p of library-normalised ``counts`` (x 1e4)."""
    if "counts" not in data:
        raise KeyError(
            "The amortized guide reads data['counts'] by default; this data has "
            f"{sorted(data)}. Pass encoder_inputs=lambda data, index: features[index]."
        )
    counts = data["counts"][index]
    total = jnp.maximum(counts.sum(axis=-1, keepdims=True), 1.0)
    return jnp.log1p(counts / total * 1e4)


def _value_or_median(site, values: Mapping):
    """Init strategy: ``values`` where given (broadcast to the site), else the prior median of 15
    draws. Passed as a ``functools.partial`` binding ``values``, the form numpyro calls as is."""
    if site["type"] == "sample" and not site["is_observed"] and site["name"] in values:
        return jnp.broadcast_to(jnp.asarray(values[site["name"]]), site["fn"].shape())
    return init_to_median(site, num_samples=15)


class _initial_scales(Messenger):
    """Start the AutoNormal scale parameter of each site in ``scales`` at the given value.

    A parameter's initial value is only read when it is not yet in the parameter store (at
    ``SVI.init``), so this changes where the fit starts and nothing else.
    """

    def __init__(self, scales: Mapping[str, float], prefix: str = "global"):
        self.names = {f"{site}_{prefix}_scale": scale for site, scale in scales.items()}
        super().__init__()

    def process_message(self, msg):
        if msg["type"] == "param" and msg["name"] in self.names:
            start = jnp.full_like(msg["args"][0], self.names[msg["name"]])
            msg["args"] = (start, *msg["args"][1:])


#: Posterior standard deviation held by the ``point_estimates`` sites of :class:`AmortizedGuide`
#: (negligible against any posterior spread, and a finite density).
POINT_SCALE = 1e-5


class _held_scales(Messenger):
    """Hold the AutoNormal scale of each site in ``sites`` at :data:`POINT_SCALE` (its stored
    parameter is ignored, so it gets no gradient): those sites become point estimates."""

    def __init__(self, sites, prefix: str = "global"):
        self.names = {f"{site}_{prefix}_scale" for site in sites}
        super().__init__()

    def postprocess_message(self, msg):
        if msg["type"] == "param" and msg["name"] in self.names:
            msg["value"] = jnp.full_like(msg["value"], POINT_SCALE)


class AmortizedGuide:
    """Guide with a neural encoder ``q(z_c | x_c)`` for per-cell sites and a global auto-guide.

    Per-cell sites are the latent sample sites inside the plate ``plate``; each gets a
    diagonal Gaussian whose mean and scale an equinox MLP computes from the cell's encoder
    features. All other latent sites (the globals) get ``AutoNormal`` (``global_guide="normal"``),
    a low-rank multivariate normal (``"lowrank"``), Kronecker-correlated matrices
    (``"kronecker"``, :class:`AutoKroneckerNormal`) or a full-covariance one (``"full"``, for a
    few hundred globals at most: its scale matrix has one entry per pair). It is one NumPyro guide:
    it works with SVI, ``Predictive`` and posterior sampling, and it minibatches with the model
    because it opens the same plate.

    Parameters
    ----------
    model
        The NumPyro model (called with keyword data).
    encoder_inputs
        ``(data, index) -> [batch, features]``; :func:`default_encoder_inputs` by default.
    hidden
        Widths of the encoder's hidden layers.
    global_guide
        ``"normal"``, ``"lowrank"``, ``"kronecker"``, ``"full"`` or ``"auto"`` (``"full"`` up to
        :data:`FULL_RANK_LIMIT` global dimensions, else ``"normal"``). Mean-field ``"normal"``
        is cheapest but under-disperses correlated globals (e.g. a drift's weights: credible
        intervals 2-3x too narrow in the CLIPR benchmark); ``"full"`` keeps every correlation.
    rank
        Rank of the low-rank global guide.
    plate
        Name of the per-cell plate.
    key
        Seed of the encoder's initial weights.
    encoder_offsets
        Optional ``{site: (data, index) -> [batch, *shape]}``: a data-driven first guess of a
        per-cell site's posterior mean that the encoder's mean output is added to (so the
        network learns a correction, starting from a sane state; e.g. the naive per-cell
        log-expression ``log((counts + 0.5) / size_factors)`` for a latent log-expression).
    local_posterior
        Optional ``(global_values, data, index, heads) -> {site: distribution}``: builds each
        per-cell site's guide distribution from the globals drawn in the same guide call (e.g.
        an exact Gaussian update of the model's per-cell prior by a likelihood message), with
        the encoder's ``heads`` (``{site: (loc, scale)}``) as learned corrections. The
        distributions need ``.mean`` and ``.variance``. Without it, each site is a diagonal
        Normal with the encoder's ``loc`` and ``scale``.
    init_values
        Optional ``{global site: value}`` where the global guide starts (constrained space);
        other globals start at their prior medians.
    init_scales
        Optional ``{global site: scale}``: the initial posterior standard deviation of those
        sites (``"normal"`` or ``"kronecker"`` only; every other global starts at 0.1). For sites
        whose uncertainty multiplies large latent values (e.g. a decoder's loadings), a start
        near a point estimate keeps the expected log-likelihood's variance term from pulling
        other globals while the scales adapt.
    point_estimates
        Global sites estimated by MAP instead (``"normal"`` or ``"kronecker"``): their scale is
        held at :data:`POINT_SCALE`. For many sites whose posterior is narrow but whose
        variational variance term, summed over thousands of genes, would otherwise shrink the
        values they multiply (e.g. a decoder's responses and a knockout's depth), as a VAE's
        decoder weights are point estimates.

    References
    ----------
    Kingma, D. P. & Welling, M. (2014). Auto-encoding variational Bayes. ICLR.
    Lopez, R. et al. (2018). Deep generative modeling for single-cell transcriptomics. Nature
    Methods 15 (amortized inference for single cells).
    """

    def __init__(
        self,
        model,
        *,
        encoder_inputs: Callable | None = None,
        hidden: Sequence[int] = (128,),
        global_guide: str = "normal",
        rank: int | None = None,
        plate: str = "cells",
        key: int = 0,
        encoder_offsets: Mapping[str, Callable] | None = None,
        init_values: Mapping | None = None,
        local_posterior: Callable | None = None,
        init_scales: Mapping[str, float] | None = None,
        point_estimates: Sequence[str] = (),
    ):
        if global_guide not in (*_GLOBAL_GUIDES, "auto"):
            raise ValueError(
                f"global_guide must be one of {(*_GLOBAL_GUIDES, 'auto')}, got {global_guide!r}."
            )
        self.model = model
        self.encoder_inputs = encoder_inputs or default_encoder_inputs
        self.hidden = tuple(hidden)
        self.global_guide_kind = global_guide
        self.rank = rank
        self.plate = plate
        self.key = key
        self.encoder_offsets = dict(encoder_offsets or {})
        self.init_values = dict(init_values or {})
        self.point_estimates = tuple(point_estimates)
        self.init_scales = {
            **dict(init_scales or {}),
            **dict.fromkeys(self.point_estimates, POINT_SCALE),
        }
        self.local_posterior = local_posterior
        self.local_shapes: dict[str, tuple[int, ...]] | None = None
        self.global_guide = None
        self._encoder = None
        self._traces: dict = {}

    # -- set-up from an abstract trace of the model -----------------------------------------
    def _sites(self, kwargs: Mapping) -> dict:
        """:func:`abstract_trace` of the model on ``kwargs``, cached by the data's shapes."""
        signature = tuple(
            (name, tuple(value.shape) if hasattr(value, "shape") else repr(value))
            for name, value in sorted(kwargs.items())
        )
        if signature not in self._traces:
            self._traces[signature] = abstract_trace(self.model, kwargs)
        return self._traces[signature]

    def _setup(self, kwargs: Mapping) -> None:
        local, global_sites, global_size = {}, set(), 0
        for name, site in self._sites(kwargs).items():
            if site["type"] != "sample" or site["observed"]:
                continue
            if self.plate not in site["plates"]:
                global_sites.add(name)
                global_size += math.prod(site["shape"])
            elif len(site["batch_shape"]) != 1:
                raise ValueError(
                    f"Per-cell site {name!r} has batch shape {site['batch_shape']}; the amortized "
                    f"guide needs exactly the {self.plate!r} plate as batch axis (use .to_event())."
                )
            else:
                local[name] = site["event_shape"]
        unknown = sorted(set(self.encoder_offsets) - set(local))
        if unknown:
            raise ValueError(
                f"encoder_offsets names {unknown}, which are not per-cell latent sites of the "
                f"model (those are {sorted(local)})."
            )
        unknown = sorted(set(self.init_values) - global_sites)
        if unknown:
            raise ValueError(
                f"init_values names {unknown}, which are not global latent sites of the model "
                f"(those are {sorted(global_sites)})."
            )
        if not local:
            raise ValueError(
                f"The model has no latent sites inside the plate {self.plate!r}: use "
                "guide='normal' (or check the plate name)."
            )
        self.local_shapes = local
        # The auto-guide only needs the global sites; it initialises by running its model, so
        # give it one cell of the plate (not the whole data set: ~14 GB at 10k x 5k genes).
        blocked = subsample(block(self.model, hide=list(local)), self.plate, 1)
        # Globals start at their prior medians: with scientific priors that is a sane state,
        # unlike numpyro's default uniform(-2, 2) draw in unconstrained space, which can put
        # thousands of genes' log-rates far out and overflow the first steps.
        start = functools.partial(_value_or_median, values=self.init_values)
        kind = self.global_guide_kind
        if kind == "auto":
            kind = "full" if global_size <= FULL_RANK_LIMIT else "normal"
        unknown = sorted(set(self.init_scales) - global_sites)
        if unknown:
            raise ValueError(
                f"init_scales or point_estimates name {unknown}, which are not global latent "
                "sites of the model."
            )
        if self.init_scales and kind not in ("normal", "kronecker"):
            raise ValueError(
                "init_scales and point_estimates need global_guide='normal' or 'kronecker', "
                f"not {kind!r}."
            )
        options = {
            "lowrank": {"rank": self.rank},
            "kronecker": {"exclude": self.point_estimates},
        }.get(kind, {})
        self.global_guide = _GLOBAL_GUIDES[kind](
            blocked, prefix="global", init_loc_fn=start, **options
        )
        features = self.encoder_inputs(split_data(kwargs)[0], jnp.arange(1)).shape[-1]
        outputs = 2 * sum(math.prod(shape) for shape in local.values())
        self._encoder = eqx.nn.MLP(
            features,
            outputs,
            width_size=self.hidden[0] if self.hidden else 1,
            depth=len(self.hidden),
            activation=jax.nn.gelu,
            key=jax.random.key(self.key),
        )

    def _heads(self, encoder, data, index):
        """``{site: (loc, scale)}`` of the cells ``index``: encoder output plus any offsets."""
        heads = self._split(jax.vmap(encoder)(self.encoder_inputs(data, index)))
        for name, offset in self.encoder_offsets.items():
            loc, scale = heads[name]
            heads[name] = (loc + offset(data, index), scale)
        return heads

    def _split(self, output):
        """Encoder output ``[batch, 2 * sum(k)]`` -> ``{site: (loc, scale)}``."""
        heads = {}
        offset = 0
        shift = math.log(math.expm1(_INITIAL_SCALE))
        for name, shape in self.local_shapes.items():
            size = math.prod(shape)
            loc = output[..., offset : offset + size]
            raw = output[..., offset + size : offset + 2 * size]
            offset += 2 * size
            scale = jax.nn.softplus(raw + shift) + 1e-4
            heads[name] = (
                loc.reshape(*loc.shape[:-1], *shape),
                scale.reshape(*scale.shape[:-1], *shape),
            )
        return heads

    def __call__(self, **kwargs):
        data, _ = split_data(kwargs)
        if self.local_shapes is None:
            self._setup(kwargs)
        with _initial_scales(self.init_scales), _held_scales(self.point_estimates):
            global_values = self.global_guide(**kwargs)
        network = eqx_module("encoder", self._encoder)
        size = self._plate_size(kwargs)
        with numpyro.plate(self.plate, size) as index:
            laws = self._laws(global_values, data, index, self._heads(network, data, index))
            for name, law in laws.items():
                numpyro.sample(name, law)

    def _laws(self, global_values, data, index, heads) -> dict:
        """Guide distribution of each per-cell site."""
        if self.local_posterior is not None:
            return self.local_posterior(global_values, data, index, heads)
        return {
            name: dist.Normal(loc, scale).to_event(len(self.local_shapes[name]))
            for name, (loc, scale) in heads.items()
        }

    def _plate_size(self, kwargs) -> int:
        """Full size of the cell plate for these data."""
        site = self._sites(kwargs).get(self.plate, {})
        if site.get("type") != "plate":
            raise ValueError(f"The model has no plate named {self.plate!r}.")
        return int(site["size"])

    def encoder_heads(self, params: Mapping, data: Mapping, index) -> dict:
        """The encoder's ``{site: (loc, scale)}`` of the cells ``index`` under fitted ``params``
        (pure): the ``heads`` a ``local_posterior`` takes, e.g. to rebuild the cells' posterior
        under any draw of the globals with ``local_posterior(draw, data, index, heads)``."""
        encoder = eqx.combine(
            params["encoder$params"], eqx.partition(self._encoder, eqx.is_inexact_array)[1]
        )
        return self._heads(encoder, data, index)

    def encode(self, params: Mapping, data: Mapping, index) -> dict:
        """``{site: (loc, scale)}`` of the cells ``index`` under fitted ``params`` (pure)."""
        heads = self.encoder_heads(params, data, index)
        if self.local_posterior is None:
            return heads
        laws = self._laws(self.global_guide.median(params), data, index, heads)
        return {name: (law.mean, jnp.sqrt(law.variance)) for name, law in laws.items()}


def encode_batch(guide, others, num_samples, num_cells, size, params, arrays, start, key):
    """Encode the ``size`` cells from ``start`` (the last one repeated past the end) with an
    :class:`AmortizedGuide`: per local site its mean and scale, and ``num_samples`` draws."""
    index = jnp.minimum(start + jnp.arange(size), num_cells - 1)
    heads = guide.encode(params, {**dict(others), **arrays}, index)
    result = {}
    for position, (name, (loc, scale)) in enumerate(heads.items()):
        result[name] = {"mean": loc, "scale": scale}
        if num_samples:
            noise = jax.random.normal(jax.random.fold_in(key, position), (num_samples, *loc.shape))
            result[name]["draws"] = jnp.moveaxis(loc + scale * noise, 0, 1)  # cells first
    return result


def draw_sites(guide, names, num_samples, others, params, arrays, key) -> dict:
    """``num_samples`` draws of the sites ``names`` from ``guide`` (its parameters ``params``)
    called on the data ``arrays`` and the other keyword arguments ``others`` (pairs)."""
    predictive = Predictive(guide, params=params, num_samples=num_samples, return_sites=list(names))
    draws = predictive(key, **arrays, **dict(others))
    return {name: draws[name] for name in names}
