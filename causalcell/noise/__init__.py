"""Observation noise: how latent log-expression becomes the measured data (DESIGN 2.4).

A noise model turns the latent log-expression ``x[..., cell, gene]`` (the log of a cell's
expected count per unit of size factor) and the per-cell size factors ``l[..., cell]`` (observed
library sizes by default) into a NumPyro distribution over the observation of that cell and gene.
The expected count is ``l_c * exp(x_cg)`` with ``link="exp"`` or ``l_c * softmax(x_c)_g`` with
``link="softmax"``; it is always formed in log space, ``log l_c + x_cg``, so that very large or very
small rates and size factors stay finite.

Every noise model offers the same four pieces:

- ``sample_parameters(num_genes)``, called inside a NumPyro model (once, outside any plate over
  cells), declares the per-gene noise parameters as sample sites named ``f"{prefix}_{name}"`` and
  returns them as a dict keyed by ``name``;
- ``distribution(log_rate, size_factors, **parameters)`` returns the distribution of the
  observation, with batch shape ``log_rate.shape`` (broadcast with ``size_factors[..., None]``);
- ``observation(counts, size_factors)`` returns the array that distribution models;
- ``is_count_model`` says whether that array is the raw counts.

The softmax link normalises over the last axis, so it needs every gene in that axis: subsample
cells, not genes, with it. With ``link="exp"`` genes can be subsampled; index the parameters
returned by ``sample_parameters`` with the subsample indices before calling ``distribution``.

Examples
--------
>>> import jax, numpyro
>>> noise = NegativeBinomial()
>>> def model(counts, size_factors):
...     num_cells, num_genes = counts.shape
...     parameters = noise.sample_parameters(num_genes)
...     with numpyro.plate("cells", num_cells, dim=-2), numpyro.plate("genes", num_genes):
...         log_rate = numpyro.sample("x", numpyro.distributions.Normal(-5.0, 1.0))
...         likelihood = noise.distribution(log_rate, size_factors, **parameters)
...         numpyro.sample("counts", likelihood, obs=noise.observation(counts, size_factors))
>>> counts = jax.numpy.array([[3, 0], [1, 4]])
>>> trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(counts, counts.sum(1))
>>> sorted(trace)
['cells', 'counts', 'genes', 'noise_concentration', 'x']

References
----------
Hilbe, J. M. (2011). *Negative Binomial Regression* (2nd ed.). Cambridge University Press.

Lopez, R., Regier, J., Cole, M. B., Jordan, M. I., & Yosef, N. (2018). Deep generative modeling
for single-cell transcriptomics. *Nature Methods*, 15, 1053-1058.

Svensson, V. (2020). Droplet scRNA-seq is not zero-inflated. *Nature Biotechnology*, 38, 147-150.

Hafemeister, C., & Satija, R. (2019). Normalization and variance stabilization of single-cell
RNA-seq data using regularized negative binomial regression. *Genome Biology*, 20, 296.
"""

from causalcell.noise._base import LINKS, NoiseModel, validate_counts
from causalcell.noise._models import (
    Gaussian,
    LogNormalizedGaussian,
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
)

__all__ = [
    "LINKS",
    "NOISE_MODELS",
    "Gaussian",
    "LogNormalizedGaussian",
    "NegativeBinomial",
    "NoiseModel",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "noise_model",
    "validate_counts",
]

#: The noise models by the names the models' ``fit(noise=...)`` take.
NOISE_MODELS = {
    "negative_binomial": NegativeBinomial(),
    "zero_inflated_negative_binomial": ZeroInflatedNegativeBinomial(),
    "poisson": Poisson(),
    "gaussian": Gaussian(),
}


def noise_model(name: str) -> NoiseModel:
    """The noise model named ``name`` (:data:`NOISE_MODELS`), with a message for unknown names."""
    if name not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {sorted(NOISE_MODELS)}, got {name!r}.")
    return NOISE_MODELS[name]
