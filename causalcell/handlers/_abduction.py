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

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import condition, seed, trace
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import constrain_fn, initialize_model, potential_energy
from numpyro.primitives import Messenger

from causalcell._core.coupling import from_noise, is_shareable, to_noise
from causalcell._core.names import did_you_mean
from causalcell.handlers._do import UnknownSiteError
from causalcell.handlers._enumeration import MAX_CONFIGURATIONS, Enumeration

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
        Discrete unknowns (hidden states) are summed out by enumerating their
        configurations (unit by unit where they factorise over a plate, else jointly, at most
        :data:`MAX_CONFIGURATIONS`): NUTS runs over the continuous unknowns alone, and the
        discrete ones are drawn from their exact conditional, so the factual world follows
        their posterior.
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
    if discrete and len(discrete) < len(latent):
        return _nuts_with_discrete_summed_out(
            abduction,
            draws,
            latent,
            discrete,
            key,
            (num_samples, num_warmup),
            model_args,
            model_kwargs,
        )
    if discrete:
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
    """Exact posterior of discrete unknowns (e.g. hidden states) by enumeration
    (:class:`._enumeration.Enumeration`), per parameter draw, then ``num_samples``
    configurations drawn from it per parameter draw (noise-major, as :func:`_noise_by_nuts`)."""
    first = jax.tree_util.tree_map(lambda value: value[0], draws)
    enumeration = Enumeration(abduction, sites, first, model_args, model_kwargs)
    values = enumeration.sample(key, draws, num_samples)
    repeated = _noise_major(draws, num_samples)
    return _with_deterministic(abduction, {**values, **repeated}, model_args, model_kwargs)


def _nuts_with_discrete_summed_out(
    abduction, draws, latent, discrete, key, settings, model_args, model_kwargs
):
    """NUTS over the continuous unknowns with the discrete ones summed out
    (:meth:`._enumeration.Enumeration.marginal`), then every discrete unknown drawn from its
    exact conditional given each continuous draw; draws noise-major as :func:`_noise_by_nuts`.
    """
    num_samples, num_warmup = settings
    continuous = {name: site for name, site in latent.items() if name not in discrete}
    transforms = {name: dist.biject_to(site["fn"].support) for name, site in continuous.items()}
    first = jax.tree_util.tree_map(lambda value: value[0], draws)
    given = {**first, **{name: site["value"] for name, site in continuous.items()}}
    enumeration = Enumeration(abduction, discrete, given, model_args, model_kwargs)
    count = next(iter(draws.values())).shape[0] if draws else 1
    start = {
        name: jnp.broadcast_to(transforms[name].inv(site["value"]), (count, *site["value"].shape))
        for name, site in continuous.items()
    }

    def constrained(unconstrained):
        return {name: transforms[name](value) for name, value in unconstrained.items()}

    def one(unconstrained, parameters):
        values = constrained(unconstrained)
        jacobian = sum(
            jnp.sum(transforms[name].log_abs_det_jacobian(value, values[name]))
            for name, value in unconstrained.items()
        )
        return -(enumeration.marginal({**parameters, **values}) + jacobian)

    run_key, discrete_key = jax.random.split(key)
    samples = _nuts_over_draws(one, draws, start, run_key, num_samples, num_warmup)
    values = jax.tree_util.tree_map(  # [num_samples, count, ...] -> noise-major
        lambda value: value.reshape(-1, *value.shape[2:]), constrained(samples)
    )
    both = {**values, **_noise_major(draws, num_samples)}
    states = enumeration.sample(discrete_key, both, 1)
    return _with_deterministic(abduction, {**both, **states}, model_args, model_kwargs)


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

    samples = _nuts_over_draws(one, draws, initial, run_key, num_samples, num_warmup)

    def constrain(unconstrained, parameters):
        return constrain_fn(
            condition(abduction, data=parameters),
            model_args,
            model_kwargs,
            unconstrained,
            return_deterministic=True,
        )

    values = jax.vmap(jax.vmap(constrain), in_axes=(0, None))(samples, draws)
    values = jax.tree_util.tree_map(lambda value: value.reshape(-1, *value.shape[2:]), values)
    return {**values, **_noise_major(draws, num_samples)}


def _nuts_over_draws(potential_of_draw, draws, start, key, num_samples, num_warmup):
    """NUTS over the unknowns of every parameter draw at once: ``potential_of_draw(u, draw)``
    summed over ``draws`` (independent given them; ``{}``: one set of unknowns, no
    parameters), from ``start`` ``{site: [count, ...]}``. Returns ``[num_samples, count,
    ...]``."""

    def potential(unconstrained):
        if draws:
            return jnp.sum(jax.vmap(potential_of_draw)(unconstrained, draws))
        return potential_of_draw(jax.tree_util.tree_map(lambda u: u[0], unconstrained), {})

    sampler = MCMC(
        NUTS(potential_fn=potential),
        num_warmup=num_warmup,
        num_samples=num_samples,
        progress_bar=False,
    )
    sampler.run(key, init_params=start)
    return sampler.get_samples()


def _noise_major(draws, num_samples: int) -> dict:
    """Parameter draws ``[S, ...]`` repeated for ``num_samples`` draws of the unknowns each,
    noise-major (draw ``i * S + s`` pairs unknowns ``i`` with parameters ``s``)."""
    return {
        name: jnp.broadcast_to(draw, (num_samples, *draw.shape)).reshape(-1, *draw.shape[1:])
        for name, draw in draws.items()
    }
