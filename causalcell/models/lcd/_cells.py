"""The AnnData of generated and counterfactual cells, built in one place for linear and neural
predictions and for counterfactual worlds."""

from __future__ import annotations

import functools

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse

from causalcell.preprocessing import normalize_log1p

__all__ = ["cells_anndata", "generated_cells"]


def cells_anndata(counts, obs: pd.DataFrame, genes, latent, count_data=True) -> anndata.AnnData:
    """The AnnData of generated (or counterfactual) cells: ``X`` the counts (CSR, float32; for
    continuous data the values, dense), ``layers["expression"]`` (the scale cells are compared
    on, :func:`causalcell.evaluation.observed_expression`'s: log1p-normalised counts, or the
    values), ``layers["log1p"]`` for counts, and ``obsm["latent"]``.

    Like observed cells (scanpy's ``normalize_total`` + ``log1p``), each cell is normalised by
    its own total count, not by the library size the model drew.
    """
    counts = np.asarray(counts, np.float32)
    matrix = scipy.sparse.csr_matrix(counts) if count_data else counts
    result = anndata.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=list(genes)))
    if count_data:
        result.layers["log1p"] = normalize_log1p(counts, np.maximum(counts.sum(axis=1), 1.0))
    result.layers["expression"] = result.layers["log1p"] if count_data else counts.copy()
    result.obsm["latent"] = np.asarray(latent, np.float32)
    return result


@functools.partial(jax.jit, static_argnums=0)
def _draw_counts(noise, size_key, count_key, library_sizes, log_rate, parameters):
    """Library sizes drawn from the training cells' and observations drawn through ``noise``,
    as one compiled program cached across calls of the same shapes (op by op, the gamma
    sampler alone took seconds to compile for each new number of cells)."""
    sizes = jax.random.choice(size_key, library_sizes, (log_rate.shape[0],))
    return sizes, noise.distribution(log_rate, sizes, **parameters).sample(count_key)


def generated_cells(
    latent,
    parameters,
    noise,
    library_sizes,
    names,
    flags,
    num_cells: int,
    genes,
    size_key,
    count_key,
    log_rate=None,
) -> anndata.AnnData:
    """The AnnData of :meth:`LCD.predict`: latents ``[P * n, m]`` (perturbation-major,
    ``n = num_cells``) with log-rates ``log_rate`` ``[P * n, genes]`` (the latents themselves
    when every gene is a coordinate) pushed through the noise model, with library sizes
    drawn from the training cells. ``parameters``: the noise parameters by name, each
    ``[P * n, genes]``."""
    log_rate = latent if log_rate is None else log_rate
    sizes, counts = _draw_counts(
        noise, size_key, count_key, jnp.asarray(library_sizes), log_rate, parameters
    )
    counts = np.asarray(counts, np.float32)
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(np.repeat(names, num_cells)),
            "prior_only": np.repeat(flags, num_cells),
            "size_factor": np.asarray(sizes),
        },
        index=[f"generated{index}" for index in range(counts.shape[0])],
    )
    return cells_anndata(counts, obs, genes, latent, noise.is_count_model)
