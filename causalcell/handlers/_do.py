"""The ``do`` handler: interventions on named sample sites and on vectorised sites."""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.primitives import Messenger, apply_stack

from causalcell._core.errors import DataKeyError
from causalcell._core.names import did_you_mean
from causalcell._core.tracing import is_concrete
from causalcell.handlers._ops import INTERVENTION_MESSAGE, LEARNED, InterventionSpec
from causalcell.interventions import INTERVENTION_KINDS, Intervention, compose, from_targets

__all__ = ["NATURAL_SUFFIX", "UnknownSiteError", "do", "natural_of"]

#: Suffix of the sample site that holds the natural (pre-intervention) value of a site under a
#: functional intervention (:class:`do`).
NATURAL_SUFFIX = "__natural"
#: Key, in a natural draw's ``infer``, of the name of the site it is the natural value of.
_NATURAL = "causalcell_natural_of"


def natural_of(msg) -> str:
    """The name a site's randomness is keyed by: the intervened site's own name for the
    natural draw of a functional intervention (:data:`NATURAL_SUFFIX`), else the site's name."""
    return (msg.get("infer") or {}).get(_NATURAL, msg["name"])


class UnknownSiteError(DataKeyError):
    """An intervention or evidence names something the model does not have (a ``KeyError``)."""


class do(Messenger):
    """Intervene on a NumPyro program: ``do(model, {"x": 1.0, "genes": {"GATA1": knockout(0.0)}})``.

    - A **named sample site** ``"x"`` takes the given value (an array broadcastable to the
      site's shape; it may be traced, e.g. a dose under ``vmap``). The site is recorded as a
      deterministic site carrying the intervened value, so ``trace`` and ``Predictive`` report
      the intervened value, it adds nothing to the log density, and outer ``substitute`` or
      ``condition`` handlers (e.g. posterior samples in ``Predictive``) cannot override it.
    - A **function** of the site's own value, ``{"x": lambda x: x + 1}`` (a functional
      intervention): the site's natural value is still drawn from its law, as the sample site
      ``f"{x}__natural"`` (:data:`NATURAL_SUFFIX`; it carries the site's density, and
      counterfactual worlds give it the noise abducted for ``"x"``), and ``"x"`` is recorded
      as a deterministic site with the function's value, which the rest of the model sees.
    - A **distribution** (a stochastic intervention): the site keeps its name and is drawn
      from the given law instead of its own; outer handlers still act on it (in
      counterfactual worlds its noise or quantile is coupled to the factual value).
    - A **deterministic site** (``numpyro.deterministic``, e.g. ``X = f(W, e_X)`` written with
      explicit noise) takes a value or a function of its computed value; the model continues
      with it and its recorded value is the intervened one.
    - A **vectorised site** ``"genes"`` (a model calling
      :func:`causalcell.handlers.intervention`) takes a mapping from entry names to
      :class:`InterventionSpec` (``shift``, ``knockdown``, ``knockout``, ``noise_scale``, or
      a list of them); nested ``do`` handlers compose. :func:`~causalcell.handlers.learned`
      (or a spec without a value, ``knockout()``) asks for the model's own learned
      intervention on the entry: ``do`` passes the request on as a mask, and only a model
      whose site accepts learned requests honours it. On a named site the innermost ``do``
      wins.

    Unlike ``numpyro.handlers.do``, a name the model never visits raises
    :class:`UnknownSiteError` when the model returns, and so does an unknown entry name.

    Parameters
    ----------
    fn
        The model (a callable containing NumPyro primitives).
    data
        Site name -> value (named sites) or -> ``{entry: InterventionSpec}`` (vectorised sites).

    Raises
    ------
    TypeError
        For a tuple on a named site: alternatives are several worlds (see
        :func:`causalcell.handlers.predict_worlds`), not one intervention.
    UnknownSiteError
        For a site or entry name the model does not have (with close matches).
    ValueError
        For a value whose shape does not broadcast to the site's shape; on a vectorised site,
        for a NaN value (ask for the learned intervention with ``learned()``), and for a
        learned request the site does not accept (a model without learned interventions, or
        a learned ``knockout()`` of a model that learned shifts). Concrete values are checked
        when the model runs; traced values are not inspected.

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> from numpyro.handlers import seed, trace
    >>> def model():
    ...     x = numpyro.sample("x", dist.Normal(0.0, 1.0))
    ...     return numpyro.sample("y", dist.Normal(2.0 * x, 0.1))
    >>> sites = trace(seed(do(model, {"x": 1.0}), 0)).get_trace()
    >>> float(sites["x"]["value"]), sites["x"]["type"]
    (1.0, 'deterministic')
    """

    def __init__(self, fn=None, data: Mapping | None = None):
        if data is None or not isinstance(data, Mapping):
            raise TypeError("do(model, data) needs a mapping from site names to interventions.")
        alternatives = [name for name, value in data.items() if isinstance(value, tuple)]
        if alternatives:
            raise TypeError(
                f"do() got a tuple for {alternatives}: a tuple of alternatives makes one "
                "counterfactual world each (pass the actions to queries.counterfactual or "
                "handlers.predict_worlds, which expand it), while one world takes one value; "
                "for values per unit pass an array."
            )
        self.data = dict(data)
        self._visited: set[str] = set()
        super().__init__(fn)

    def __enter__(self):
        self._visited = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None:
            missing = [name for name in self.data if name not in self._visited]
            if missing:
                raise UnknownSiteError(
                    f"do() names {missing}, which the model never sampled."
                    f"{did_you_mean(missing[0], self._visited)}"
                    f" The model's sites: {sorted(self._visited)} (vectorised sites are named "
                    "by their intervention() name)."
                )

    def process_message(self, msg):
        if msg["type"] == INTERVENTION_MESSAGE:
            site = msg["site"]
            self._visited.add(site)
            if site in self.data:
                current = msg["fn"]() if msg["value"] is None else msg["value"]
                explicit, asked = _resolve(site, msg["names"], self.data[site], msg["learned"])
                msg["value"] = compose(current, explicit)
                msg["learned_mask"] = msg["learned_mask"] | asked
            return
        name = msg.get("name")
        infer = msg.get("infer") or {}
        if msg["type"] == "deterministic" and infer.get("intervened"):
            self._visited.add(name)  # an inner do already fixed this site: its value stands
            return
        if msg["type"] not in ("sample", "deterministic") or infer.get(_NATURAL):
            return  # the natural draw of a functional intervention is not intervened again
        self._visited.add(name)
        # a mapping addresses the vectorised site's intervention(), not its sample site
        if name not in self.data or isinstance(self.data[name], Mapping):
            return
        action = self.data[name]
        if msg["type"] == "deterministic":
            _intervene_deterministic(msg, action)
            return
        if isinstance(action, dist.Distribution):
            msg["fn"] = _check_law(name, msg["fn"], action)
            return
        if callable(action):
            natural = _natural_value(msg)
            value = _check_shape(name, msg["fn"], action(natural), "function's value")
        else:
            value = _check_shape(name, msg["fn"], action)
        # The model continues with the intervened value; the message stops here so that no
        # outer handler (substitute, condition, trace) can replace or score it ...
        msg["value"] = value
        msg["stop"] = True
        # ... and a deterministic record carries the value to outer handlers instead
        # (substitute and condition skip messages marked "_control_flow_done").
        apply_stack(
            {
                "type": "deterministic",
                "name": name,
                "value": value,
                "cond_indep_stack": [],  # the plates add their frames as it passes them
                "infer": {"intervened": True},
                "_control_flow_done": True,
            }
        )


def _natural_value(msg):
    """Draw the site of ``msg`` as its law has it, as the sample site ``f"{name}__natural"``
    sent through the whole handler stack (so outer ``condition``, ``substitute`` or a world's
    replay act on it, keyed by the original name in its ``infer``), and return its value."""
    name = msg["name"]
    natural = {
        **msg,
        "name": name + NATURAL_SUFFIX,
        "infer": {**(msg.get("infer") or {}), _NATURAL: name},
        # A list of its own: the plates add their frames again as the draw passes them (the
        # shared list of the original message came back with every frame twice).
        "cond_indep_stack": [],
        "stop": False,
    }
    return apply_stack(natural)["value"]


def _intervene_deterministic(msg, action) -> None:
    """A value, or a function of the computed value, in place of a deterministic site's."""
    name, computed = msg["name"], jnp.asarray(msg["value"])
    if isinstance(action, dist.Distribution):
        raise TypeError(
            f"do() gives a distribution for {name!r}, a deterministic site: a distribution "
            "replaces a sample site's law. Intervene on the deterministic site with a value or "
            "a function of its value (lambda x: x + 1), or give the distribution to the sample "
            "site of its exogenous noise."
        )
    value = jnp.asarray(action(computed) if callable(action) else action)
    _broadcast(name, value, computed.shape, "value")
    msg["value"] = jnp.broadcast_to(value, computed.shape)  # its own dtype: counts stay counts
    msg["infer"] = {**(msg.get("infer") or {}), "intervened": True}


def _check_law(name, fn: dist.Distribution, law: dist.Distribution) -> dist.Distribution:
    """``law`` expanded to the site's batch shape, after checking that its event shape is the
    site's (a stochastic intervention draws values of the same shape)."""
    if tuple(law.event_shape) != tuple(fn.event_shape):
        raise ValueError(
            f"do() gives {name!r} a distribution with event shape {tuple(law.event_shape)}, "
            f"but the site's event shape is {tuple(fn.event_shape)}; use .to_event() or a "
            "law of the site's shape."
        )
    try:
        return law.expand(tuple(fn.batch_shape))
    except ValueError as error:
        raise ValueError(
            f"do() gives {name!r} a distribution of batch shape {tuple(law.batch_shape)}, which "
            f"does not broadcast to the site's batch shape {tuple(fn.batch_shape)}."
        ) from error


def _check_shape(name, fn: dist.Distribution, value, what: str = "value"):
    """``value`` broadcast to the site's shape; floating, except that integers given to a
    discrete site stay integers (a hidden state indexes arrays)."""
    value = jnp.asarray(value)
    shape = tuple(fn.batch_shape) + tuple(fn.event_shape)
    _broadcast(name, value, shape, what)
    integer = fn.support.is_discrete and jnp.issubdtype(value.dtype, jnp.integer)
    dtype = value.dtype if integer else jnp.result_type(value, jnp.float32)
    return jnp.broadcast_to(value, shape).astype(dtype)


def _broadcast(name, value, shape: tuple, what: str) -> None:
    """Raise unless ``value`` broadcasts to the site's ``shape``."""
    try:
        broadcast = jnp.broadcast_shapes(value.shape, shape)
    except ValueError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(
            f"do() {what} for {name!r} has shape {value.shape}, which does not broadcast to "
            f"the site's shape {shape}; pass a scalar or an array of shape {shape}."
        )


def _resolve(
    site: str, names: tuple[str, ...], specs, accepts: bool | str
) -> tuple[Intervention, np.ndarray]:
    """The explicit intervention of ``specs`` and the mask of the entries asking for their
    learned one (checked against what the site ``accepts``, see ``intervention(learned=)``)."""
    if not isinstance(specs, Mapping):
        raise TypeError(
            f"do() on the vectorised site {site!r} needs a mapping of entry names to "
            f"interventions, e.g. {{{names[0]!r}: knockout(0.0)}}; got {type(specs).__name__}."
        )
    index = {entry: position for position, entry in enumerate(names)}
    unknown = [str(entry) for entry in specs if str(entry) not in index]
    if unknown:
        raise UnknownSiteError(
            f"do() on {site!r} names {unknown}, which are not among its {len(names)} entries."
            f"{did_you_mean(unknown[0], names)}"
        )
    result = Intervention.identity(len(names))
    asked = np.zeros(len(names), bool)
    for entry, spec in specs.items():
        specs_list = (
            spec
            if isinstance(spec, list | tuple) and not isinstance(spec, InterventionSpec)
            else [spec]
        )
        for one in specs_list:
            if not isinstance(one, InterventionSpec):
                raise TypeError(
                    f"Intervention on {entry!r} must be built with shift(), knockdown(), "
                    f"knockout(), noise_scale() or learned(); got {one!r}."
                )
            if one.kind not in (*INTERVENTION_KINDS, LEARNED):
                raise ValueError(
                    f"Intervention on {entry!r} has the unknown kind {one.kind!r}; build it "
                    "with shift(), knockdown(), knockout(), noise_scale() or learned()."
                )
            if one.is_learned:
                _check_learned(site, str(entry), one.kind, accepts)
                asked[index[str(entry)]] = True
                continue
            _reject_nan(site, str(entry), one)
            result = compose(
                result, from_targets(len(names), [index[str(entry)]], one.kind, one.value)
            )
    return result, asked


#: An explicit value of each kind, for error messages.
_EXAMPLES = {
    "shift": "shift(0.5)",
    "knockdown": "knockdown(0.5)",
    "knockout": "knockout(0.0)",
    "noise_scale": "noise_scale(2.0)",
}


def _check_learned(site: str, entry: str, kind: str, accepts: bool | str) -> None:
    """Raise unless the site accepts a learned request of ``kind`` (``"learned"``: any)."""
    if kind == LEARNED:
        request = "learned()"
    else:
        request = f"{kind}() without a {'level' if kind == 'knockout' else 'value'}"
    if not accepts:
        raise ValueError(
            f"do() asks for the model's learned intervention on {entry!r} ({request}), but the "
            f"vectorised site {site!r} of this model has no learned interventions (no natural "
            "off level, no learned shift); give values: knockout(0.0), shift(0.5)."
        )
    if accepts is not True and kind not in (LEARNED, accepts):
        raise ValueError(
            f"do() asks for the learned {kind} of {entry!r} ({request}), but the vectorised "
            f"site {site!r} of this model learned {accepts!r} interventions only. Give the "
            f"{kind} a value (e.g. {_EXAMPLES[kind]}), or ask for the model's learned "
            f"{accepts} with learned()."
        )


def _reject_nan(site: str, entry: str, spec: InterventionSpec) -> None:
    """NaN is not an intervention value (it used to ask for the learned one): raise where the
    value is concrete; a traced value (a dose under ``jit``/``vmap``) is not inspected."""
    if not is_concrete(spec.value):
        return
    try:
        values = np.asarray(spec.value, dtype=float)
    except (TypeError, ValueError):
        return  # from_targets names the problem
    if np.isnan(values).any():
        raise ValueError(
            f"do() got NaN as the {spec.kind} value of {entry!r} on {site!r}. NaN is not an "
            "intervention value: for the model's own learned intervention use learned(), "
            f"e.g. {{{entry!r}: learned()}}; otherwise give a finite value "
            f"(e.g. {_EXAMPLES[spec.kind]})."
        )
