"""The AnnData of generated and counterfactual cells, built in one place for linear and neural
predictions and for counterfactual worlds."""

from __future__ import annotations

import anndata
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.sparse

from causalcell.noise import NegativeBinomial
from causalcell.preprocessing import normalize_log1p

__all__ = ["cells_anndata", "generated_cells"]


def cells_anndata(counts, obs: pd.DataFrame, genes, latent) -> anndata.AnnData:
    """The AnnData of generated (or counterfactual) cells: ``X`` the counts (CSR, float32),
    ``layers["log1p"]`` and ``obsm["latent"]``.

    Like observed cells (scanpy's ``normalize_total`` + ``log1p``), each cell is normalised by
    its own total count, not by the library size the model drew.
    """
    counts = np.asarray(counts, np.float32)
    result = anndata.AnnData(
        X=scipy.sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=list(genes))
    )
    result.layers["log1p"] = normalize_log1p(counts, np.maximum(counts.sum(axis=1), 1.0))
    result.obsm["latent"] = np.asarray(latent, np.float32)
    return result


@jax.jit
def _draw_counts(size_key, count_key, library_sizes, log_rate, concentration):
    """Library sizes drawn from the training cells' and negative binomial counts, as one
    compiled program cached across calls of the same shapes (op by op, the gamma sampler alone
    took seconds to compile for each new number of cells)."""
    sizes = jax.random.choice(size_key, library_sizes, (log_rate.shape[0],))
    counts = NegativeBinomial().distribution(log_rate, sizes, concentration=concentration)
    return sizes, counts.sample(count_key)


def generated_cells(
    latent,
    concentration,
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
    when every gene is a coordinate) pushed through the negative binomial, with library sizes
    drawn from the training cells."""
    log_rate = latent if log_rate is None else log_rate
    sizes, counts = _draw_counts(
        size_key, count_key, jnp.asarray(library_sizes), log_rate, concentration
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
    return cells_anndata(counts, obs, genes, latent)
