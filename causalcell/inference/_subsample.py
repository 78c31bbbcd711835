"""Minibatching from outside a model: a handler that subsamples a named plate, uniformly or by
strata (e.g. the conditions of a screen)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.primitives import _PYRO_STACK, Messenger, apply_stack

from causalcell.inference._devices import DataParallel

__all__ = ["STRATA_MESSAGE", "BatchStrata", "Strata", "batch_strata", "subsample"]

#: Message type of :func:`batch_strata`'s question to the :class:`subsample` handler.
STRATA_MESSAGE = "causalcell_strata"


class Strata:
    """Stratified draws of a plate's indices: ``groups`` strata per draw, ``per_group`` elements
    of each.

    Strata are drawn with replacement with probability proportional to their size, then
    elements uniformly with replacement within each drawn stratum. Every element of the plate
    is then in the batch ``groups * per_group / size`` times in expectation, as under uniform
    subsampling, so the plate's usual scale ``size / batch`` keeps the minibatch
    log-likelihood an unbiased estimate of the whole one. A batch touches at most ``groups``
    strata, which is the point: a model whose per-stratum work is expensive (a stationary law
    per condition) does it only for those (see :func:`batch_strata`).

    Parameters
    ----------
    labels
        ``[size]`` integer stratum of each element (e.g. each cell's condition).
    groups
        Strata per draw.
    batch_size
        Elements per draw, rounded up to a multiple of ``groups``.

    References
    ----------
    Cochran, W. G. (1977). Sampling Techniques (3rd ed.). Wiley (sampling with probability
    proportional to size; two-stage sampling).
    """

    def __init__(self, labels, groups: int, batch_size: int):
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
            raise ValueError(
                f"Strata labels must be a non-empty 1-D integer array, got shape {labels.shape} "
                f"and dtype {labels.dtype}."
            )
        if int(groups) < 1 or int(batch_size) < 1:
            raise ValueError(
                f"groups and batch_size must be positive, got {groups} and {batch_size}."
            )
        _, counts = np.unique(labels, return_counts=True)  # the strata present, in label order
        self.groups = int(groups)
        self.per_group = -(-int(batch_size) // self.groups)
        self.batch_size = self.groups * self.per_group
        self.size = int(labels.size)
        self._order = jnp.asarray(np.argsort(labels, kind="stable"), jnp.int32)
        self._starts = jnp.asarray(np.concatenate([[0], np.cumsum(counts)[:-1]]), jnp.int32)
        self._counts = jnp.asarray(counts, jnp.int32)
        self._probabilities = jnp.asarray(counts / counts.sum(), jnp.float32)

    def draw(self, size: int, subsample_size: int, rng_key=None):
        """Indices ``[batch_size]``, stratum by stratum (numpyro's plate ``fn`` signature)."""
        if size != self.size or subsample_size != self.batch_size:
            raise ValueError(
                f"These strata label {self.size} elements in batches of {self.batch_size}; the "
                f"plate asked for {subsample_size} of {size}."
            )
        pick, within = jax.random.split(rng_key)
        strata = jax.random.choice(
            pick, self._counts.shape[0], (self.groups,), p=self._probabilities
        )
        position = jax.random.randint(
            within, (self.groups, self.per_group), 0, self._counts[strata][:, None]
        )
        return self._order[self._starts[strata][:, None] + position].reshape(-1)


class subsample(Messenger):
    """Subsample the plate ``name`` to ``size`` elements per run, uniformly or by ``strata``.

    Models declare their cell plate without a subsample size
    (``with numpyro.plate("cells", num_cells) as index:``) and index every per-cell array with
    ``index``; ``fit`` then minibatches by wrapping model and guide in this handler. The plate
    rescales the log-likelihood by ``num_cells / size`` as usual, and the guide's indices are
    replayed in the model by the ELBO.

    Parameters
    ----------
    fn
        The model or guide.
    name
        Plate name (``"cells"`` by convention).
    size
        Subsample size; ``None`` leaves the plate whole. Ignored with ``strata``, which fix it.
    strata
        Optional :class:`Strata`: draw each batch stratum by stratum (unbiased, see there).
    parallel
        Optional shardings of a fit on several devices (see ``fit(devices=...)``): each
        batch's indices are split evenly over the devices, so every device does its share of
        the per-cell work.

    Examples
    --------
    >>> import numpyro
    >>> from numpyro.handlers import seed
    >>> def model():
    ...     with numpyro.plate("cells", 10) as index:
    ...         return index
    >>> seed(subsample(model, "cells", 4), 0)().shape
    (4,)
    """

    def __init__(
        self,
        fn=None,
        name: str = "cells",
        size: int | None = None,
        strata: Strata | None = None,
        parallel: DataParallel | None = None,
    ):
        self.name = name
        self.size = strata.batch_size if strata is not None else size
        self.strata = strata
        self.parallel = parallel
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == STRATA_MESSAGE and msg["plate"] == self.name and self.strata is not None:
            msg["value"] = (self.strata.groups, self.strata.per_group)
            return
        if msg["type"] != "plate" or msg["name"] != self.name or self.size is None:
            return
        total = msg["args"][0]
        if self.strata is not None:
            msg["args"] = (total, self.size)
            msg["fn"] = self.strata.draw
            msg["value"] = None
        elif self.size < total:
            msg["args"] = (total, self.size)
            msg["value"] = None  # let the plate draw the indices (seeded by the stack)

    def postprocess_message(self, msg):
        if msg["type"] == "plate" and msg["name"] == self.name and self.parallel is not None:
            msg["value"] = self.parallel.constrain(msg["value"], self.name)


class BatchStrata(NamedTuple):
    """What :func:`batch_strata` answers: the strata a batch touches ``[K]``, each element's
    slot among them ``[batch]``, a ``[batch]`` mask that is false for an element whose stratum
    is not its slot's (labels that are not the handler's; ``None`` when ``K`` is every
    stratum), and ``block``: when not ``None``, the batch is ``K`` contiguous blocks of
    ``block`` elements, element ``i`` in slot ``i // block`` (per-stratum work can then take a
    block's elements as the columns of one product instead of a per-element copy)."""

    strata: jax.Array
    slot: jax.Array
    covered: jax.Array | None
    block: int | None


def batch_strata(labels, num_strata: int, plate: str = "cells") -> BatchStrata:
    """The strata the current batch of ``plate`` touches, and each element's slot among them.

    Call it inside the plate with ``labels`` ``[batch]``, the stratum of each element of the
    batch. Under :class:`subsample` with :class:`Strata` for that plate (as :func:`fit` does
    with ``strata``) the batch is ``Strata.groups`` blocks of ``Strata.per_group`` elements,
    one drawn stratum each, and one stratum per block is returned (a stratum drawn twice
    appears twice), with ``block`` set; anywhere else (no minibatching, a uniform one,
    ``Predictive``, encoding cells in chunks) every stratum is, the slot being the label. It is
    an effect (a message the handler answers), so a model that asks gets the cheap answer only
    where the handler guarantees it. Works under ``jit``; see :class:`BatchStrata`.
    """
    answer = None
    if _PYRO_STACK:
        message = {
            "type": STRATA_MESSAGE,
            "name": f"{plate}__strata",
            "plate": plate,
            "fn": lambda: None,
            "args": (),
            "kwargs": {},
            "value": None,
            "infer": {},
            "cond_indep_stack": [],
        }
        answer = apply_stack(message)["value"]
    if answer is None or answer[0] >= num_strata:
        return BatchStrata(jnp.arange(num_strata), labels, None, None)
    block = answer[1]
    strata = labels[::block]
    slot = jnp.arange(labels.shape[0]) // block
    return BatchStrata(strata, slot, labels == strata[slot], block)
