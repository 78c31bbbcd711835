"""Effectful operations: the ``intervention`` primitive and the user-facing intervention specs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpyro.primitives import _PYRO_STACK, apply_stack

from causalcell.interventions import INTERVENTION_KINDS, Intervention

__all__ = [
    "INTERVENTION_MESSAGE",
    "LEARNED",
    "InterventionSpec",
    "intervention",
    "knockdown",
    "knockout",
    "learned",
    "noise_scale",
    "shift",
]

#: Message type sent by :func:`intervention` through NumPyro's effect stack.
INTERVENTION_MESSAGE = "intervention"
#: The kind of :func:`learned`'s spec.
LEARNED = "learned"


class InterventionSpec(NamedTuple):
    """One kind of intervention on one named entry of a vectorised site.

    Build with :func:`shift`, :func:`knockdown`, :func:`knockout`, :func:`noise_scale` or
    :func:`learned`. A spec whose ``value`` is None (``knockout()`` without a level) or whose
    kind is ``"learned"`` asks for the model's own learned intervention on the entry (see
    :meth:`is_learned`).
    """

    kind: str
    value: Any

    @property
    def is_learned(self) -> bool:
        """Whether the spec asks for the model's learned intervention instead of giving one."""
        return self.kind == LEARNED or self.value is None


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

    ``level=None`` (the spec's value is None) asks for the model's own learned knockout, e.g.
    the pinned level a knockout screen's LCD learned: :func:`learned` restricted to knockouts.
    A model without one (an SCM has no natural off level) or that learned another kind of
    intervention raises; pass a level, e.g. ``knockout(0.0)``.
    """
    return InterventionSpec("knockout", level)


def noise_scale(factor) -> InterventionSpec:
    """Multiply the entry's noise scale by ``factor`` > 0."""
    return InterventionSpec("noise_scale", factor)


def learned() -> InterventionSpec:
    """The model's own learned intervention on this entry, whatever its kind.

    For an LCD fitted to a screen, the per-target parameter it learned (a shift, knockdown
    fraction or knockout level, the screen's kind): ``do(model.program, {"genes": {"GATA1":
    learned()}})`` generates cells as :meth:`LCD.predict` ``("GATA1")`` does, in law.
    :meth:`LCD.actions` builds this request. Only a model whose vectorised site asks for learned
    requests (:func:`intervention` with ``learned``) accepts it; on others ``do`` raises.

    Examples
    --------
    >>> from causalcell.handlers import do, intervention
    >>> def model():
    ...     return intervention("genes", names=["A", "B"], learned=True)
    >>> applied, mask = do(model, {"genes": {"B": learned()}})()
    >>> mask.tolist(), applied.targets.tolist()  # asked for, not applied by do
    ([False, True], [False, False])
    """
    return InterventionSpec(LEARNED, None)


def intervention(name: str, *, names: Sequence[str], learned: bool | str = False):
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
    learned
        Whether the model can apply its own learned intervention to entries that ask for it
        (:func:`learned`, or a spec without a value such as ``knockout()``). False (the
        default): such requests make ``do`` raise. True: any kind is accepted. A kind
        (``"shift"``, ``"knockdown"``, ``"knockout"``, ``"noise_scale"``): the model learned
        interventions of that kind only, so ``learned()`` and that kind without a value are
        accepted, and another kind without a value makes ``do`` raise.

    Returns
    -------
    Intervention or (Intervention, numpy.ndarray)
        The explicit intervention, arrays of shape ``[len(names)]``. With ``learned``, also the
        bool mask ``[len(names)]`` of the entries asking for their learned intervention (OR-ed
        over nested ``do`` handlers); those entries carry no explicit intervention for that
        request, so the model applies its own.

    Examples
    --------
    >>> from causalcell.handlers import do, knockout
    >>> def model():
    ...     return intervention("genes", names=["A", "B"])
    >>> do(model, {"genes": {"B": knockout(0.0)}})().knockout.tolist()
    [False, True]
    """
    if not isinstance(learned, bool) and learned not in INTERVENTION_KINDS:
        raise ValueError(
            f"learned must be True, False or one of {INTERVENTION_KINDS}, got {learned!r}."
        )
    names = tuple(str(entry) for entry in names)
    identity = Intervention.identity(len(names))
    mask = np.zeros(len(names), bool)
    if not _PYRO_STACK:
        return (identity, mask) if learned else identity
    message = {
        "type": INTERVENTION_MESSAGE,
        "name": f"{name}__intervention",
        "site": name,
        "names": names,
        "learned": learned,
        "learned_mask": mask,
        "fn": lambda: identity,
        "args": (),
        "kwargs": {},
        "value": None,
        "infer": {},
        "cond_indep_stack": [],
    }
    message = apply_stack(message)
    if not learned:
        return message["value"]
    return message["value"], np.asarray(message["learned_mask"], bool)
