"""One coercion of user seeds to JAX PRNG keys, used wherever a public function takes ``key``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key"]


def as_key(key) -> jax.Array:
    """A typed JAX PRNG key from an int, a numpy integer, a typed key or a raw ``uint32[2]`` key.

    ``jax.random.key(n)`` and ``jax.random.PRNGKey(n)`` carry the same key data, so a seed gives
    the same draws whichever form it arrives in.

    Raises
    ------
    TypeError
        For a bool (``True`` is an int to Python, never a seed here) or anything that is not an
        integer seed or a PRNG key.
    """
    if isinstance(key, bool | np.bool_):
        raise TypeError("key must be an integer seed or a JAX PRNG key, not a bool.")
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, jax.Array | np.ndarray):
        array = jnp.asarray(key)
        if array.dtype == jnp.uint32 and array.shape[-1:] == (2,):
            return jax.random.wrap_key_data(array)
    raise TypeError(
        f"key must be an integer seed or a JAX PRNG key (jax.random.key(0)), got "
        f"{type(key).__name__}."
    )
