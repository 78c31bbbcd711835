"""Abduction (Pearl 2009, ch. 7, step 1): the posterior of the exogenous noise (and of the
parameters) given the evidence.

:class:`exogenize` rewrites a model so that every Gaussian unit-level site
``x ~ Normal(loc, scale)`` reads ``x = loc + scale * eps`` with an explicit standard-normal site
``f"{x}__noise"``; for observed sites the noise is the inversion ``(x - loc) / scale``.
:func:`abduce` samples that posterior with NUTS (or, when every Gaussian site is observed and
parameter draws are given, computes it exactly; with nothing left unknown, one exact draw).
:mod:`._worlds` pushes the abducted noise through the worlds.

References
----------
Pearl, J. (2009). Causality, 2nd ed., section 7.1.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import condition, seed, substitute, trace
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import constrain_fn, initialize_model, log_density, potential_energy
from numpyro.primitives import Messenger

from causalcell._core.coupling import from_noise, is_shareable, to_noise
from causalcell._core.names import did_you_mean
from causalcell.handlers._do import UnknownSiteError

__all__ = [
    "EVIDENCE_SUFFIX",
    "MAX_CONFIGURATIONS",
    "NOISE_SUFFIX",
    "abduce",
    "abduction_model",
    "check_site_names",
    "exogenize",
    "is_unit_site",
    "model_trace",
    "observe_deterministic",
    "unit_sites",
]

#: Suffix of the explicit exogenous-noise site of a Gaussian site.
NOISE_SUFFIX = "__noise"
#: Suffix of the factor that observes a deterministic site (:class:`observe_deterministic`).
EVIDENCE_SUFFIX = "__evidence"
#: Most joint configurations of discrete unknowns that :func:`abduce` enumerates.
MAX_CONFIGURATIONS = 2**16


def is_unit_site(msg) -> bool:
    return msg["type"] == "sample" and bool(msg["cond_indep_stack"])


def unit_sites(traced) -> list[str]:
    """Names of the unit-level (in-plate) sample and deterministic sites, noise sites aside;
    in a model without plates (one unit), every sample and deterministic site."""
    sites = {
        name: site
        for name, site in traced.items()
        if site["type"] in ("sample", "deterministic") and not name.endswith(NOISE_SUFFIX)
    }
    if not any(site.get("cond_indep_stack") for site in sites.values()):
        return list(sites)
    return [name for name, site in sites.items() if site.get("cond_indep_stack")]


class exogenize(Messenger):
    """Make the exogenous noise of Gaussian unit-level sites explicit (abduction-ready).

    A latent site ``x`` becomes a deterministic site with value ``loc + scale * eps`` and a new
    latent site ``f"{x}__noise" ~ Normal(0, 1)``; an observed site keeps its likelihood and
    records its noise as the deterministic site ``f"{x}__noise"``. Sites outside every plate
    (parameters) and non-Gaussian sites are unchanged.
    """

    def process_message(self, msg):
        if not is_unit_site(msg) or msg["infer"].get("causalcell_noise"):
            return
        fn = msg["fn"]
        if not is_shareable(fn):
            return
        noise_name = msg["name"] + NOISE_SUFFIX
        if msg["is_observed"]:
            numpyro.deterministic(noise_name, to_noise(fn, msg["value"]))
            return
        shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
        standard = dist.Normal(jnp.zeros(shape), 1.0).to_event(len(fn.event_shape))
        noise = numpyro.sample(noise_name, standard, infer={"causalcell_noise": True})
        msg["value"] = from_noise(fn, noise)
        msg["type"] = "deterministic"


def model_trace(model, model_args=(), model_kwargs=None) -> dict:
    """One seeded trace of ``model`` (site names, shapes, plates)."""
    return trace(seed(model, jax.random.key(0))).get_trace(*model_args, **(model_kwargs or {}))


def check_site_names(kind: str, names, sites) -> None:
    """Raise :class:`UnknownSiteError` if ``names`` (of ``kind``: evidence, sites, ...) are not
    among the model's ``sites``, with close matches."""
    unknown = [name for name in names if name not in sites]
    if unknown:
        raise UnknownSiteError(
            f"{kind} names {unknown}, which the model does not have."
            f"{did_you_mean(unknown[0], sites)} "
            f"The model's sample sites: {sorted(sites)}."
        )


class observe_deterministic(Messenger):
    """Evidence on deterministic sites, observed through a Gaussian kernel (soft conditioning).

    A deterministic site (``X = f(W, e_X)`` written with explicit noise) is a function of
    upstream sites, so exact evidence on it is a constraint of probability zero that NUTS
    cannot sample. Each observed value ``x`` instead adds the factor ``log N(x; X, tolerance)``
    (a site ``f"{X}__evidence"``), which concentrates the upstream noise where ``f`` gives
    ``x``, within ``tolerance``. Evidence on sample sites goes to ``condition`` as usual.
    """

    def __init__(self, fn=None, evidence: Mapping | None = None, tolerance: float = 1e-2):
        if not tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {tolerance!r}.")
        self.evidence = dict(evidence or {})
        self.tolerance = tolerance
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "deterministic" or msg["name"] not in self.evidence:
            return
        observed = jnp.asarray(self.evidence[msg["name"]])
        kernel = dist.Normal(msg["value"], self.tolerance).log_prob(observed)
        # One factor per unit of the site's plates (the factor sits in them too, so a total
        # would be counted once per unit); entries beyond the plates are summed.
        extra = jnp.ndim(kernel) - len(msg.get("cond_indep_stack", []))
        if extra > 0:
            kernel = jnp.sum(kernel, axis=tuple(range(-extra, 0)))
        numpyro.factor(msg["name"] + EVIDENCE_SUFFIX, kernel)


def abduction_model(
    model,
    evidence: Mapping,
    *,
    deterministic_tolerance: float = 1e-2,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
):
    """The model whose posterior is the abduction: ``exogenize(condition(model, evidence))``,
    with evidence on deterministic sites observed by :class:`observe_deterministic`.

    Fit a guide to it (e.g. ``numpyro.infer.autoguide.AutoNormal`` with SVI) and pass the guide
    to :func:`abduce` for abduction by a fitted guide instead of NUTS (large models).
    """
    sites = model_trace(model, model_args, model_kwargs)
    kinds = {name: site["type"] for name, site in sites.items()}
    derived = {name: v for name, v in evidence.items() if kinds.get(name) == "deterministic"}
    sampled = {name: v for name, v in evidence.items() if name not in derived}
    conditioned = condition(model, data=sampled)
    if derived:
        conditioned = observe_deterministic(conditioned, derived, deterministic_tolerance)
    return exogenize(conditioned)


def abduce(
    model,
    evidence: Mapping,
    *,
    key,
    posterior_samples: Mapping | None = None,
    guide=None,
    guide_params: Mapping | None = None,
    num_samples: int = 500,
    num_warmup: int = 500,
    deterministic_tolerance: float = 1e-2,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> dict:
    """Posterior draws of parameters and exogenous noise given ``evidence``.

    Parameters
    ----------
    model
        A NumPyro program.
    evidence
        Observed values by site name (the unit(s) asked about, and any training data). A
        deterministic site (``X = f(W, e_X)`` with explicit noise) is observed through a
        Gaussian kernel of sd ``deterministic_tolerance`` (:class:`observe_deterministic`),
        so its upstream noise is abducted to give ``X`` within that tolerance.
    key
        PRNG key.
    posterior_samples
        Optional parameter draws ``{site: [S, ...]}`` (e.g. from a fit). When given, the noise
        is abducted per draw: exactly if every Gaussian unit-level site is observed, else by
        NUTS over the noise of all draws at once (``num_samples`` noise draws per parameter
        draw). When omitted, NUTS samples parameters and noise jointly from prior x evidence.
        Discrete unknowns (hidden states; every unknown discrete once the parameters are
        given) are abducted exactly instead, by enumerating their joint configurations (at
        most :data:`MAX_CONFIGURATIONS`), so the factual world follows their posterior.
    num_samples, num_warmup
        NUTS settings.

    Returns
    -------
    dict
        Draws with a leading sample axis: global sites, ``f"{x}__noise"`` for every Gaussian
        unit-level site, and other latent sites. With ``posterior_samples`` of ``S`` draws and
        NUTS abduction there are ``num_samples * S`` draws, noise-major: draw ``i * S + s``
        pairs noise draw ``i`` with parameter draw ``s``. NUTS then runs over the noise of all
        ``S`` draws at once (``S`` times the latent dimension): keep ``S`` moderate.

    Raises
    ------
    UnknownSiteError
        If ``evidence`` names a site the model lacks.
    NotImplementedError
        For discrete unknowns together with continuous ones.
    """
    model_kwargs = dict(model_kwargs or {})
    sites = model_trace(model, model_args, model_kwargs)
    observable = [n for n, s in sites.items() if s["type"] in ("sample", "deterministic")]
    check_site_names("evidence", evidence, observable)
    abduction = abduction_model(
        model,
        evidence,
        deterministic_tolerance=deterministic_tolerance,
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    if guide is not None:
        if guide_params is None:
            raise ValueError("A guide needs its fitted parameters: pass guide_params.")
        sampler = Predictive(guide, params=dict(guide_params), num_samples=num_samples)
        draws = sampler(key, *model_args, **model_kwargs)
        model_sites = model_trace(abduction, model_args, model_kwargs)
        draws = {name: value for name, value in draws.items() if name in model_sites}
        return _with_deterministic(abduction, draws, model_args, model_kwargs)
    draws = {name: jnp.asarray(value) for name, value in (posterior_samples or {}).items()}
    first = jax.tree_util.tree_map(lambda value: value[0], draws)
    latent = _latent_sites(abduction, first, model_args, model_kwargs)
    if not latent:  # nothing left unknown: exact
        return _with_deterministic(abduction, draws, model_args, model_kwargs)
    discrete = {name: site for name, site in latent.items() if site["fn"].support.is_discrete}
    if discrete:
        if len(discrete) < len(latent):
            raise NotImplementedError(
                f"Abduction of discrete unknowns {sorted(discrete)} together with continuous "
                f"ones {sorted(set(latent) - set(discrete))} is not supported: give the "
                "parameters as posterior_samples, or observe the continuous sites."
            )
        return _enumerate_discrete(
            abduction, draws, discrete, key, num_samples, model_args, model_kwargs
        )
    if not draws:
        sampler = MCMC(
            NUTS(abduction), num_warmup=num_warmup, num_samples=num_samples, progress_bar=False
        )
        sampler.run(key, *model_args, **model_kwargs)
        return _with_deterministic(abduction, sampler.get_samples(), model_args, model_kwargs)
    return _noise_by_nuts(
        abduction, draws, first, key, num_samples, num_warmup, model_args, model_kwargs
    )


def _latent_sites(abduction, given: Mapping, model_args, model_kwargs) -> dict:
    """The abduction model's sample sites that are neither observed nor ``given``."""
    conditioned = model_trace(condition(abduction, data=dict(given)), model_args, model_kwargs)
    return {
        name: site
        for name, site in conditioned.items()
        if site["type"] == "sample" and not site["is_observed"] and name not in given
    }


def _enumerate_discrete(abduction, draws, sites, key, num_samples, model_args, model_kwargs):
    """Exact posterior of discrete unknowns (e.g. hidden states) by enumeration, per parameter
    draw, then ``num_samples`` configurations drawn from it per parameter draw (noise-major, as
    :func:`_noise_by_nuts`).

    Units of one plate are independent given the parameters, so where every discrete unknown
    is one entry per unit of the same plate, each unit's configurations are enumerated and
    drawn on their own (``C`` configurations of one unit, whatever the number of units);
    otherwise the joint configurations of every entry are (at most
    :data:`MAX_CONFIGURATIONS`)."""
    first = jax.tree_util.tree_map(lambda value: value[0], draws)
    supports = {
        name: jnp.ravel(site["fn"].enumerate_support(expand=False)) for name, site in sites.items()
    }
    plate = _unit_plate(abduction, sites, first, model_args, model_kwargs)
    if plate is None:
        sizes = {name: int(np.prod(jnp.shape(site["value"]))) for name, site in sites.items()}
    else:
        sizes = dict.fromkeys(sites, 1)  # one entry per unit, enumerated unit by unit
    count = int(np.prod([len(supports[name]) ** size for name, size in sizes.items()]))
    if count > MAX_CONFIGURATIONS:
        raise ValueError(
            f"Abduction would enumerate {count:,} joint configurations of the discrete unknowns "
            f"{sorted(sites)} (at most {MAX_CONFIGURATIONS:,}): ask about fewer units at once, "
            "or observe more of their sites."
        )
    axes = [range(len(supports[name])) for name, size in sizes.items() for _ in range(size)]
    grid = np.array(list(itertools.product(*axes))).reshape(count, -1)
    configurations, offset = {}, 0  # each [C, *entries]
    for name, size in sizes.items():
        entries = () if plate is not None else jnp.shape(sites[name]["value"])
        configurations[name] = supports[name][
            grid[:, offset : offset + size].reshape(count, *entries)
        ]
        offset += size

    def log_joint(parameters, configuration):  # [units] (one plate) or [1] (joint)
        if plate is None:
            return log_density(
                abduction, model_args, model_kwargs, {**parameters, **configuration}
            )[0][None]
        values = {
            name: jnp.broadcast_to(value, jnp.shape(sites[name]["value"]))
            for name, value in configuration.items()
        }
        return _unit_log_joint(abduction, {**parameters, **values}, plate, model_args, model_kwargs)

    def per_draw(parameters):
        return jax.vmap(lambda configuration: log_joint(parameters, configuration))(configurations)

    logits = jax.vmap(per_draw)(draws) if draws else per_draw({})[None]  # [S, C, units]
    logits = jnp.moveaxis(logits, 1, -1)  # [S, units, C]
    chosen = jax.random.categorical(key, logits, shape=(num_samples, *logits.shape[:-1]))
    chosen = chosen.reshape(-1, chosen.shape[-1])  # [N S, units] (units = 1 when joint)
    if plate is None:
        values = {name: value[chosen[:, 0]] for name, value in configurations.items()}
    else:
        values = {name: value[chosen] for name, value in configurations.items()}
    repeated = {
        name: jnp.broadcast_to(draw, (num_samples, *draw.shape)).reshape(-1, *draw.shape[1:])
        for name, draw in draws.items()
    }
    return _with_deterministic(abduction, {**values, **repeated}, model_args, model_kwargs)


def _unit_plate(abduction, sites, given, model_args, model_kwargs):
    """The plate over which the discrete unknowns ``sites`` factorise unit by unit: its name
    when every one of them is a single entry per unit of that one plate and every site of
    the plate has a log-density of one value per unit; else None."""
    frames = {tuple(frame.name for frame in site["cond_indep_stack"]) for site in sites.values()}
    shapes = {tuple(jnp.shape(site["value"])) for site in sites.values()}
    if len(frames) != 1 or len(shapes) != 1 or len(next(iter(frames))) != 1:
        return None
    plate, shape = next(iter(frames))[0], next(iter(shapes))
    if len(shape) != 1:
        return None
    values = {name: site["value"] for name, site in sites.items()}
    traced = _plate_sites(abduction, {**given, **values}, plate, model_args, model_kwargs)
    if any(jnp.shape(site["fn"].log_prob(site["value"])) != shape for site in traced):
        return None
    return plate


def _plate_sites(abduction, values, plate, model_args, model_kwargs) -> list:
    """Sample sites (observed, latent and factors) of ``plate`` with ``values`` substituted."""
    substituted = seed(substitute(abduction, data=dict(values)), jax.random.key(0))
    traced = trace(substituted).get_trace(*model_args, **model_kwargs)
    return [
        site
        for site in traced.values()
        if site["type"] == "sample"
        and any(frame.name == plate for frame in site["cond_indep_stack"])
    ]


def _unit_log_joint(abduction, values, plate, model_args, model_kwargs):
    """Each unit's log joint density ``[units]``: the sum over the plate's sites."""
    return sum(
        site["fn"].log_prob(site["value"])
        for site in _plate_sites(abduction, values, plate, model_args, model_kwargs)
    )


def _with_deterministic(model, draws, model_args, model_kwargs) -> dict:
    """Add the recorded noise of observed sites (deterministic) to the draws; with no draws
    (a model without parameters whose units are fully observed), one draw."""
    if draws:
        predictive = Predictive(model, posterior_samples=draws, condition_deterministic=False)
    else:
        predictive = Predictive(model, num_samples=1)
    recorded = predictive(jax.random.key(0), *model_args, **model_kwargs)
    return {
        **{name: value for name, value in recorded.items() if name.endswith(NOISE_SUFFIX)},
        **draws,
    }


def _noise_by_nuts(abduction, draws, first, key, num_samples, num_warmup, model_args, model_kwargs):
    """NUTS over the noise of every parameter draw at once (independent given the draws)."""
    init_key, run_key = jax.random.split(key)
    start = initialize_model(
        init_key,
        condition(abduction, data=first),
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    count = next(iter(draws.values())).shape[0]
    initial = jax.tree_util.tree_map(
        lambda value: jnp.broadcast_to(value, (count, *value.shape)), start.param_info.z
    )

    def one(unconstrained, parameters):
        return potential_energy(
            condition(abduction, data=parameters), model_args, model_kwargs, unconstrained
        )

    def potential(unconstrained):
        return jnp.sum(jax.vmap(one)(unconstrained, draws))

    sampler = MCMC(
        NUTS(potential_fn=potential),
        num_warmup=num_warmup,
        num_samples=num_samples,
        progress_bar=False,
    )
    sampler.run(run_key, init_params=initial)
    samples = sampler.get_samples()  # [num_samples, count, ...]

    def constrain(unconstrained, parameters):
        return constrain_fn(
            condition(abduction, data=parameters),
            model_args,
            model_kwargs,
            unconstrained,
            return_deterministic=True,
        )

    values = jax.vmap(jax.vmap(constrain), in_axes=(0, None))(samples, draws)
    repeated = jax.tree_util.tree_map(
        lambda value: jnp.broadcast_to(value, (num_samples, *value.shape)), draws
    )
    merged = {**values, **repeated}
    return jax.tree_util.tree_map(lambda value: value.reshape(-1, *value.shape[2:]), merged)
