"""Whether values can be read now: concrete arrays (an eager call) or tracers (``jit``, ``vmap``,
``grad``). Checks on values run only on concrete inputs and add nothing to traced programs."""

from __future__ import annotations

import jax

__all__ = ["is_concrete"]


def is_concrete(*trees) -> bool:
    """Whether no leaf of ``trees`` is a tracer, so that its values can be inspected."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))
