"""Effectful operations: the ``intervention`` primitive and the user-facing intervention specs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
from numpyro.primitives import _PYRO_STACK, apply_stack

from causalcell.interventions import Intervention

__all__ = [
    "INTERVENTION_MESSAGE",
    "InterventionSpec",
    "intervention",
    "knockdown",
    "knockout",
    "noise_scale",
    "shift",
]

#: Message type sent by :func:`intervention` through NumPyro's effect stack.
INTERVENTION_MESSAGE = "intervention"


class InterventionSpec(NamedTuple):
    """One kind of intervention on one named entry of a vectorised site.

    Build with :func:`shift`, :func:`knockdown`, :func:`knockout` or :func:`noise_scale`.
    """

    kind: str
    value: Any


def shift(delta) -> InterventionSpec:
    """Add ``delta`` to the entry's mechanism (its bias): a soft, additive intervention."""
    return InterventionSpec("shift", delta)


def knockdown(fraction) -> InterventionSpec:
    """Multiply the entry's production by ``fraction`` in ``(0, 1]``.

    On log-expression this moves the entry by ``log(fraction)`` with its parents held fixed.
    """
    return InterventionSpec("knockdown", fraction)


def knockout(level=None) -> InterventionSpec:
    """Hard intervention ``do(x_j = level)``: the entry loses its parents and sits at ``level``.

    ``level=None`` asks for the model's own "off" level; models without one raise.
    """
    return InterventionSpec("knockout", jnp.nan if level is None else level)


def noise_scale(factor) -> InterventionSpec:
    """Multiply the entry's noise scale by ``factor`` > 0."""
    return InterventionSpec("noise_scale", factor)


def intervention(name: str, *, names: Sequence[str]) -> Intervention:
    """Ask the handlers for the intervention on the vectorised site ``name``.

    A vectorised model calls this once per site and applies the returned
    :class:`~causalcell.interventions.Intervention` (one entry per element of ``names``) in its
    own computation. Without a handler it returns the identity ("no intervention");
    :class:`causalcell.handlers.do` fills it.

    Parameters
    ----------
    name
        The site the intervention applies to, e.g. ``"genes"``: the key users pass to ``do``.
    names
        Labels of the site's entries (gene or node names), used to resolve ``do`` by name.

    Returns
    -------
    Intervention
        Arrays of shape ``[len(names)]``. Knockouts without a level carry ``NaN`` levels.

    Examples
    --------
    >>> from causalcell.handlers import do, knockout
    >>> def model():
    ...     return intervention("genes", names=["A", "B"])
    >>> do(model, {"genes": {"B": knockout(0.0)}})().knockout.tolist()
    [False, True]
    """
    names = tuple(str(entry) for entry in names)
    identity = Intervention.identity(len(names))
    if not _PYRO_STACK:
        return identity
    message = {
        "type": INTERVENTION_MESSAGE,
        "name": f"{name}__intervention",
        "site": name,
        "names": names,
        "fn": lambda: identity,
        "args": (),
        "kwargs": {},
        "value": None,
        "infer": {},
        "cond_indep_stack": [],
    }
    return apply_stack(message)["value"]
