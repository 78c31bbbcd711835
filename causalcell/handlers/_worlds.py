"""Counterfactual worlds: abduction, action, prediction (Pearl 2009, ch. 7).

1. **Abduction**: the posterior of the exogenous noise (and of the parameters) given the
   evidence (:mod:`._abduction`: :func:`abduce`, :class:`exogenize`).
2. **Action**: :class:`causalcell.handlers.do` on the model.
3. **Prediction**: :func:`predict_worlds` pushes the same noise through the factual and the
   intervened model (or models: one world per action) and stacks the worlds on a leading axis
   (``world = 0`` factual, then the counterfactuals).

Gaussian noise (also through bijections, and of Laplace, Cauchy and logistic laws; see
:mod:`causalcell._core.coupling`) is shared exactly. A unit-level site of any other law keeps
its factual value wherever its law is the same in both worlds (no intervention reaches it:
Pearl's definition, whatever the law). Where the intervention changes its law it follows
``coupling``:
``"resample"`` (independent draw in the counterfactual world) or ``"quantile"`` (same quantile
of the new law; see :mod:`causalcell._core.coupling`). Sites outside every plate (the
parameters) keep their abducted values wherever no intervention reaches them; a model without
plates is one unit, whose Gaussian sites outside plates share the noise of their factual
values (``(x - loc) / scale`` from the factual world's trace) where the action reaches them.

References
----------
Pearl, J. (2009). Causality, 2nd ed., section 7.1. Balke, A. & Pearl, J. (1994). Probabilistic
evaluation of counterfactual queries. AAAI. Oberst, M. & Sontag, D. (2019). Counterfactual
off-policy evaluation with Gumbel-max structural causal models. ICML (on coupling choices).

A fitted :class:`causalcell.models.lcd.LCD` has its own exact abduction (the guide's Gaussian
local posterior per draw, the path-wise conditional of linear drift): use
:meth:`LCD.counterfactual` (an AnnData), or :func:`causalcell.queries.counterfactual` with the
model itself, for which LCD registers its own implementation (every draw, as a ``CausalResult``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from numpyro.handlers import condition, seed, trace
from numpyro.primitives import Messenger

from causalcell._core.coupling import (
    COUPLINGS,
    couple,
    from_noise,
    is_shareable,
    same_law,
    to_noise,
)
from causalcell._core.tracing import is_concrete
from causalcell.handlers._abduction import NOISE_SUFFIX, unit_sites
from causalcell.handlers._do import do, natural_of

__all__ = ["COUPLINGS", "WORLDS", "predict_worlds", "world_labels"]

#: Labels of the leading world axis (one counterfactual world).
WORLDS = ("factual", "counterfactual")


class _replay(Messenger):
    """Run a world from abducted draws: globals substituted, noise pushed, the rest coupled."""

    def __init__(self, fn, *, draw, coupling, factual=None, key=None):
        self.draw = draw
        self.coupling = coupling
        self.factual = factual or {}
        self.key = key
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        name = natural_of(msg)  # a functional intervention's natural draw: the site's own
        unit = bool(msg["cond_indep_stack"])
        if unit and is_shareable(msg["fn"]) and name + NOISE_SUFFIX in self.draw:
            msg["value"] = from_noise(msg["fn"], self.draw[name + NOISE_SUFFIX])
        elif name in self.factual:
            msg["value"] = self._carry(msg, name)
        elif name in self.draw:
            msg["value"] = self.draw[name]  # a parameter or an abducted latent (factual world)

    def _carry(self, msg, name: str):
        """The counterfactual value of a site from its factual law and value: the factual
        value wherever its law is unchanged (no intervention reaches it); where it changed,
        the factual noise pushed through the new law if both laws share their noise
        (:func:`causalcell._core.coupling.is_shareable`; a site outside every plate, e.g. of a
        model without plates, or a stochastic intervention), else coupled or drawn afresh."""
        factual_fn, factual_value = self.factual[name]
        same = same_law(factual_fn, msg["fn"])
        if is_concrete(same) and bool(jnp.all(same)):
            return factual_value  # e.g. a parameter's prior: nothing to couple
        self.key, subkey = jax.random.split(self.key)
        if is_shareable(factual_fn) and is_shareable(msg["fn"]):
            changed = from_noise(msg["fn"], to_noise(factual_fn, factual_value))
        elif self.coupling == "quantile":
            changed = couple(subkey, factual_fn, factual_value, msg["fn"])
        else:
            sample_shape = msg["kwargs"].get("sample_shape", ())
            changed = msg["fn"](rng_key=subkey, sample_shape=sample_shape)
        same = jnp.reshape(same, same.shape + (1,) * len(msg["fn"].event_shape))
        dtype = jnp.result_type(factual_value)
        return jnp.where(same, factual_value, jnp.asarray(changed).astype(dtype))


def predict_worlds(
    model,
    draws: Mapping,
    *,
    evidence: Mapping,
    actions,
    key,
    coupling: str = "resample",
    sites=None,
    model_args: tuple = (),
    model_kwargs: Mapping | None = None,
) -> dict:
    """Factual and counterfactual values of every unit-level site, worlds on a leading axis.

    Parameters
    ----------
    model
        The NumPyro program.
    draws
        Abducted draws from :func:`abduce` (leading sample axis).
    evidence
        The evidence used for abduction (fixes the factual world's observed sites).
    actions
        The intervention, as for :class:`causalcell.handlers.do`: one counterfactual world.
        A list of them makes one world each, all sharing the abducted noise (multi-world
        counterfactuals); an entry may be a function that takes the worlds before it (a list
        of ``{site: value}``, the factual world first, for one draw) and returns the action,
        e.g. ``lambda worlds: {"t": 1.0, "m": worlds[1]["m"]}`` for a nested counterfactual
        ``Y(t = 1, M(t = 0))`` (natural direct effects, :func:`causalcell.queries.mediation`).
        A tuple of alternatives on a site (``{"x": (0.0, 1.0)}``, as in ChiRho) makes one world
        per alternative (per combination, for several sites).
    key
        PRNG key (for resampled sites and randomised quantiles).
    coupling
        ``"resample"`` or ``"quantile"`` for non-Gaussian unit-level sites (see module doc).
    sites
        Names to return; all unit-level sample and deterministic sites by default.

    Returns
    -------
    dict
        ``{site: [sample, world, ...]}`` with ``world`` ordered as :func:`world_labels`: the
        factual world, then one per action.
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}.")
    worlds = _action_list(actions)
    model_kwargs = dict(model_kwargs or {})
    evidence = dict(evidence)

    def one(draw, draw_key):
        factual_key, *world_keys = jax.random.split(draw_key, 1 + 2 * len(worlds))
        factual_model = _replay(condition(model, data=evidence), draw=draw, coupling=coupling)
        factual = trace(seed(factual_model, factual_key)).get_trace(*model_args, **model_kwargs)
        carried = {  # every sample site's factual law and value, in plates or not
            name: (site["fn"], site["value"])
            for name, site in factual.items()
            if site["type"] == "sample"
        }
        values = [{name: site["value"] for name, site in factual.items() if "value" in site}]
        for index, action in enumerate(worlds):
            action = action(values) if callable(action) else action
            action_model = _replay(
                do(model, dict(action)),
                draw=draw,
                coupling=coupling,
                factual=carried,
                key=world_keys[2 * index],
            )
            world = trace(seed(action_model, world_keys[2 * index + 1])).get_trace(
                *model_args, **model_kwargs
            )
            values.append({name: site["value"] for name, site in world.items() if "value" in site})
        return {
            name: jnp.stack(
                [jnp.broadcast_to(world[name], jnp.shape(values[0][name])) for world in values]
            )
            for name in sites or unit_sites(factual)
        }

    count = next(iter(draws.values())).shape[0] if draws else 1  # no unknowns: one draw
    return jax.vmap(one)(dict(draws), jax.random.split(key, count))


def world_labels(actions) -> tuple[str, ...]:
    """Labels of the world axis of :func:`predict_worlds` for ``actions``: :data:`WORLDS` for
    one action, else ``"factual"`` then ``"counterfactual_1"``, ``"counterfactual_2"``, ..."""
    count = len(_action_list(actions))
    if count == 1 and not _is_action_list(actions):
        return WORLDS
    return ("factual", *(f"counterfactual_{k}" for k in range(1, count + 1)))


def _is_action_list(actions) -> bool:
    return isinstance(actions, list | tuple)


def _action_list(actions) -> list:
    """``actions`` as a list of worlds' actions (mappings, or functions of earlier worlds); a
    mapping with tuples of alternatives (``{"x": (0.0, 1.0)}``) becomes one world per
    combination of them, in order."""
    worlds = list(actions) if _is_action_list(actions) else [actions]
    if not worlds:
        raise ValueError("actions is an empty list: give at least one world's action.")
    expanded = []
    for action in worlds:
        if not (isinstance(action, Mapping) or callable(action)):
            raise TypeError(
                "Each world's action must be a mapping of sites to interventions (or a "
                "function of the earlier worlds returning one); got "
                f"{type(action).__name__}."
            )
        expanded.extend(_alternatives(action) if isinstance(action, Mapping) else [action])
    return expanded


def _alternatives(action: Mapping) -> list[dict]:
    """One action per combination of the tuples of alternatives in ``action``."""
    names = [name for name, value in action.items() if isinstance(value, tuple)]
    if not names:
        return [dict(action)]
    if any(len(action[name]) == 0 for name in names):
        raise ValueError(f"An empty tuple of alternatives for {names}: give at least one value.")
    return [
        {**action, **dict(zip(names, choice, strict=True))}
        for choice in itertools.product(*(action[name] for name in names))
    ]
