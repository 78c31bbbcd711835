"""Data-parallel SVI over several devices: the batch's cells split across them, globals on each.

A step of minibatch SVI is a sum over the batch's cells plus terms of the globals. With
``devices``, :func:`causalcell.inference.fit` keeps the data and the optimiser state on every
device (replicated) and asks the compiler to split each batch's cells evenly across the
devices (a sharding constraint on the plate's indices); XLA's partitioner then runs each
device's share of the per-cell work and adds the partial sums across devices. The program is
the same one as on a single device (the same random draws, the same sums in another order),
so a fit on several devices gives the single-device answer up to float rounding, and a user
who outgrows one GPU changes one argument. On a CPU, JAX shows several devices when
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set before it is imported.

References
----------
Xu, Y. et al. (2021). GSPMD: general and scalable parallelization for ML computation graphs.
arXiv:2105.04663.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DataParallel", "data_parallel", "gather"]

#: Name of the mesh axis that the batch's cells are split over.
AXIS = "batch"


class DataParallel(NamedTuple):
    """How a fit uses several devices: ``replicated`` for data and state, ``split`` for the
    plate's indices (first axis over the devices)."""

    replicated: NamedSharding
    split: NamedSharding

    @property
    def count(self) -> int:
        return self.split.mesh.size

    def constrain(self, indices, plate: str):
        """``indices`` of one batch of ``plate``, split over the devices.

        Raises
        ------
        ValueError
            When the batch cannot be split evenly.
        """
        if indices.shape[0] % self.count:
            raise ValueError(
                f"A step sees {indices.shape[0]} elements of the plate {plate!r}, which "
                f"{self.count} devices cannot share evenly: pass a batch_size that is a "
                f"multiple of {self.count}."
            )
        return jax.lax.with_sharding_constraint(indices, self.split)


def data_parallel(devices: int | Sequence | None) -> DataParallel | None:
    """The shardings of a fit on ``devices`` (a count of JAX's devices, or the devices), or
    ``None`` for one device.

    Raises
    ------
    ValueError
        For a count below 1 or above the devices JAX sees.
    """
    if devices is None:
        return None
    available = jax.devices()
    if isinstance(devices, int | np.integer):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"devices={devices}, but JAX sees {len(available)} device(s) "
                f"({available[0].platform}). Pass at most {len(available)}; on a CPU, set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={max(int(devices), 1)} "
                "before importing jax to split it into that many devices."
            )
        devices = available[: int(devices)]
    devices = list(devices)
    if len(devices) == 1:
        return None
    mesh = Mesh(np.asarray(devices), (AXIS,))
    return DataParallel(
        NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(AXIS))
    )


def gather(tree):
    """``tree``'s arrays back on the default device, uncommitted (as a single-device fit leaves
    them), so later computations may mix them with any other array."""
    return jax.tree_util.tree_map(lambda leaf: jax.numpy.asarray(jax.device_get(leaf)), tree)
