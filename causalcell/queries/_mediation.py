"""Natural direct and indirect effects (mediation), from worlds that share every unit's noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from causalcell._core.keys import as_key
from causalcell.handlers import check_site_names, model_trace
from causalcell.queries._common import global_draws, population_worlds
from causalcell.queries._counterfactual import counterfactual
from causalcell.results import CausalResult

__all__ = ["MEDIATION_WORLDS", "mediation"]

#: The three worlds of :func:`mediation`, in the order of its ``response`` axis.
MEDIATION_WORLDS = ("control", "treated", "treated, mediator as under control")


def mediation(
    model,
    *,
    treatment: str,
    mediator: str,
    outcome: str,
    values: Sequence,
    key,
    evidence: Mapping | None = None,
    posterior_samples: Mapping | None = None,
    num_samples: int | None = None,
    num_noise_samples: int = 200,
    num_warmup: int = 300,
    coupling: str = "resample",
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> CausalResult:
    """How much of the effect of ``treatment`` on ``outcome`` passes through ``mediator``.

    With ``values = (t0, t1)`` and three worlds that share every unit's exogenous noise,
    ``Y(t0)``, ``Y(t1)`` and the nested counterfactual ``Y(t1, M(t0))`` (treated, with the
    mediator held at the value it takes under control):

    - ``direct_effect``: ``E[Y(t1, M(t0)) - Y(t0)]``, the natural direct effect;
    - ``indirect_effect``: ``E[Y(t1) - Y(t1, M(t0))]``, the natural indirect effect;
    - ``total_effect``: ``E[Y(t1) - Y(t0)]``, their sum.

    Without ``evidence`` these are population effects: the noise is drawn from its prior,
    ``num_noise_samples`` times per parameter draw. With ``evidence`` they are the effects for
    those units: their noise is abducted (:func:`causalcell.handlers.abduce`), so an observed
    unit's answer is exact wherever its Gaussian noise is determined by the evidence. Every
    effect is averaged over noise draws and units, one value per parameter draw, so its spread
    is the posterior (or prior) uncertainty.

    Parameters
    ----------
    model
        A NumPyro program with named sites ``treatment``, ``mediator`` and ``outcome``.
    values
        ``(control_value, treated_value)`` of the treatment.
    evidence
        Observed values of the units asked about (optional).
    posterior_samples, num_samples
        Parameter draws, or the number of prior draws (not needed for a model without
        parameters).
    num_noise_samples, num_warmup
        Noise draws per parameter draw (prior, or NUTS abduction) and NUTS warm-up.
    coupling
        For non-Gaussian sites that the treatment reaches, as for
        :func:`causalcell.queries.counterfactual`.

    Returns
    -------
    CausalResult
        ``direct_effect``, ``indirect_effect``, ``total_effect`` ``[sample]``; ``response``
        ``[sample, world]`` (the mean outcome in each of :data:`MEDIATION_WORLDS`).

    Raises
    ------
    ValueError
        For not two values, or a mediator or outcome that is the treatment.

    References
    ----------
    Pearl, J. (2001). Direct and indirect effects. UAI, 411-420.
    Imai, K., Keele, L. and Tingley, D. (2010). A general approach to causal mediation
    analysis. Psychological Methods 15: 309-334 (total = direct + indirect).
    """
    if len(values) != 2:
        raise ValueError(
            f"values must be (control_value, treated_value), got {len(values)} values."
        )
    if treatment in (mediator, outcome) or mediator == outcome:
        raise ValueError(
            f"treatment, mediator and outcome must be three different sites; got "
            f"{treatment!r}, {mediator!r}, {outcome!r}."
        )
    model_kwargs = dict(model_kwargs or {})
    traced = model_trace(model, model_args, model_kwargs)
    check_site_names("mediation", [treatment, mediator, outcome], traced)
    parameter_key, world_key = jax.random.split(as_key(key))
    parameters = global_draws(
        model, traced, parameter_key, posterior_samples, num_samples, model_args, model_kwargs
    )
    count = next(iter(parameters.values())).shape[0] if parameters else 1
    control, treated = values
    actions = [
        {treatment: control},
        {treatment: treated},
        lambda earlier: {treatment: treated, mediator: earlier[1][mediator]},
    ]
    if evidence:  # the units' own noise, abducted once for the three worlds
        worlds = counterfactual(
            model,
            evidence=evidence,
            actions=actions,
            key=world_key,
            posterior_samples=parameters or None,
            coupling=coupling,
            num_samples=num_noise_samples,
            num_warmup=num_warmup,
            sites=[outcome],
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
    else:  # the population's: prior noise, repeated per parameter draw
        worlds = population_worlds(
            model,
            parameters,
            num_noise_samples,
            actions,
            world_key,
            coupling=coupling,
            sites=[outcome],
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
    outcomes = np.asarray(worlds[outcome])[:, 1:]  # [draws, world, units...]
    draws_per_parameter = outcomes.shape[0] // count
    if evidence and parameters and draws_per_parameter > 1:  # NUTS abduction: noise-major
        outcomes = outcomes.reshape(draws_per_parameter, count, *outcomes.shape[1:])
        outcomes = outcomes.swapaxes(0, 1)
    else:  # parameter-major (prior noise repeated per draw) or one draw per parameter draw
        outcomes = outcomes.reshape(count, draws_per_parameter, *outcomes.shape[1:])
    unit_axes = (1, *range(3, outcomes.ndim))
    response = outcomes.mean(axis=unit_axes)  # [sample, world]
    return CausalResult(
        {
            "direct_effect": response[:, 2] - response[:, 0],
            "indirect_effect": response[:, 1] - response[:, 2],
            "total_effect": response[:, 1] - response[:, 0],
            "response": response,
        },
        dims={"response": ("world",)},
        coords={"world": MEDIATION_WORLDS},
        attrs={
            "treatment": treatment,
            "mediator": mediator,
            "outcome": outcome,
            "values": repr(tuple(values)),
        },
    )
