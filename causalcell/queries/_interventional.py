"""The interventional query: the law of a model's sites under ``do``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from numpyro.infer import Predictive

from causalcell._core.keys import as_key
from causalcell.handlers import check_site_names, do, model_trace, unit_sites
from causalcell.queries._common import site_dims
from causalcell.results import CausalResult

__all__ = ["interventional"]


def interventional(
    model,
    actions: Mapping,
    *,
    key,
    posterior_samples: Mapping | None = None,
    num_samples: int | None = None,
    sites: Sequence[str] | None = None,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> CausalResult:
    """Draws of the model's unit-level sites under ``do(actions)``.

    Parameters
    ----------
    model
        A NumPyro program.
    actions
        Interventions as for :class:`causalcell.handlers.do` (named or vectorised sites).
    key
        PRNG key.
    posterior_samples
        Parameter draws ``{site: [S, ...]}``; one outcome draw per parameter draw.
    num_samples
        Number of prior draws when ``posterior_samples`` is not given.
    sites
        Names to return (all unit-level sites by default).

    Returns
    -------
    CausalResult
        One quantity per site, axes ``(sample, <plates>, ...)``.

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist
    >>> def model():
    ...     x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("y", dist.Normal(2.0 * x, 1.0))
    >>> result = interventional(model, {"x": 1.5}, key=jax.random.key(0), num_samples=4000)
    >>> round(float(result.mean("y")), 1)
    3.0
    """
    model_kwargs = dict(model_kwargs or {})
    intervened = do(model, dict(actions))
    traced = model_trace(intervened, model_args, model_kwargs)
    names = list(sites) if sites is not None else unit_sites(traced)
    if not names:  # a model without plates: report every sample and deterministic site
        names = [n for n, s in traced.items() if s["type"] in ("sample", "deterministic")]
    check_site_names("sites", names, traced)
    predictive = Predictive(
        intervened,
        posterior_samples=None if posterior_samples is None else dict(posterior_samples),
        num_samples=None if posterior_samples is not None else num_samples,
        return_sites=names,
    )
    draws = predictive(as_key(key), *model_args, **model_kwargs)
    return CausalResult(
        draws, dims=site_dims(traced, names), attrs={"actions": repr(dict(actions))}
    )
