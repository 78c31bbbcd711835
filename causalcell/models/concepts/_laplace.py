"""The decoder's output layer under a Laplace approximation (``decoder_posterior="laplace"``).

Given what the output layer reads (the features ``phi_c``: the hidden layer at the guide's
medians, each training cell's noise at its encoder mean, and a 1 for the baseline), every
gene's log-rate is linear in its readout ``r_g = (w_g, b_g)``: ``eta_cg = phi_c^T r_g``. Its
posterior is then approximated by ``N(r_g*, P_g^{-1})`` with
``P_g = sum_c I_cg phi_c phi_c^T + Lambda_0``: ``I_cg`` the Fisher information of count
``(c, g)`` about its log-rate (``mu theta / (mu + theta)`` for the negative binomial), ``Lambda_0``
the prior's precision (``width`` for the weights, ``1 / BASELINE_SCALE^2`` for the baseline) and
``r_g*`` the guide's median. Genes are independent given the features, so the covariance is
one ``(W + 1) x (W + 1)`` block per gene, not a matrix over every weight.

Why: a mean-field Gaussian over the weights takes each weight's variance from its own
curvature ``1 / P_g[i, i]``, while a counterfactual asks for a contrast
``(phi' - phi)^T r_g`` along which the tanh features are strongly correlated and the data weak;
the block's variance ``(phi' - phi)^T P_g^{-1} (phi' - phi)`` is the one the data leave (design
section 4.8 has the measured widths). Everything else keeps the fit's guide.

References
----------
MacKay, D. J. C. (1992). A practical Bayesian framework for backpropagation networks. Neural
Computation 4, 448-472.
Kristiadi, A., Hein, M., Hennig, P. (2020). Being Bayesian, even just a bit, fixes
overconfidence in ReLU networks. ICML.
Daxberger, E. et al. (2021). Laplace Redux: effortless Bayesian deep learning. NeurIPS.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from causalcell._core.keys import as_key
from causalcell._core.linalg import covariance_factor
from causalcell.data import MISSING_LEVEL
from causalcell.models.concepts._program import (
    BASELINE_SCALE,
    concept_embeddings,
    decoder_features,
)
from causalcell.models.concepts._scm import ConceptSpec
from causalcell.noise import NoiseModel

__all__ = [
    "Readout",
    "labelled_cells",
    "readout_features",
    "readout_posterior",
]

#: Most floats of one chunk's pairwise feature products ``[chunk, (W + 1)(W + 2) / 2]`` while
#: the precisions are summed over cells (64 MB).
CHUNK_FLOATS = 2**24


@dataclass(frozen=True)
class Readout:
    """Each gene's Gaussian readout: ``loc`` ``[W + 1, G]`` (the output weights, then the
    baseline) and ``factor`` ``[G, W + 1, W + 1]`` (lower; ``factor[g] @ factor[g].T`` is gene
    ``g``'s covariance)."""

    loc: np.ndarray
    factor: np.ndarray

    def draws(self, key, draws: Mapping) -> dict:
        """``draws`` of the globals ``{site: [S, ...]}`` with ``decoder_out`` and ``baseline``
        replaced by ``S`` draws of this Gaussian."""
        num_samples = next(iter(draws.values())).shape[0]
        noise = jax.random.normal(as_key(key), (num_samples, *self.loc.shape))
        weights = self.loc + jnp.einsum("gij,sjg->sig", self.factor, noise)
        return {**draws, "decoder_out": weights[:, :-1], "baseline": weights[:, -1]}

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"loc", "factor"}``, to save (``Readout(**arrays)`` reads them back)."""
        return {"loc": np.asarray(self.loc), "factor": np.asarray(self.factor)}


def labelled_cells(labels) -> np.ndarray:
    """The cells with every label (``[n, K]`` codes), which the readout is fitted to; raises
    when there is none (checked before a fit)."""
    cells = np.flatnonzero((np.asarray(labels) != MISSING_LEVEL).all(axis=1))
    if not len(cells):
        raise ValueError(
            "decoder_posterior='laplace' needs some cells with every label, and none has them: "
            "label some cells fully, or pass decoder_posterior='normal'."
        )
    return cells


def readout_features(values, spec: ConceptSpec, labels, own, rest) -> jax.Array:
    """``[..., W + 1]``: what the output layer reads (:func:`._program.decoder_features`) and a
    1 for the baseline, so that the log-rates are ``features @ [decoder_out; baseline]``."""
    features = decoder_features(values, concept_embeddings(values, spec, labels, own), rest)
    return jnp.concatenate([features, jnp.ones((*features.shape[:-1], 1), features.dtype)], -1)


@functools.partial(jax.jit, static_argnames=("spec", "noise"))
def _information(values, loc, spec, noise, labels, own, rest, size_factors, weight):
    """``sum_c weight_c I_cg phi_c phi_c^T`` over one chunk of cells, as each gene's upper
    triangle ``[G, (W + 1)(W + 2) / 2]`` (row-major), at the readout ``loc`` ``[W + 1, G]``:
    one matrix product of the informations with the features' pairwise products instead of a
    batched product per gene (design section 4.8 has the timings)."""
    features = readout_features(values, spec, labels, own, rest)
    mean = jnp.exp(noise.log_mean(features @ loc, size_factors))
    information = noise.information(mean, **noise.parameters_of(values)) * weight[:, None]
    rows, columns = np.triu_indices(features.shape[-1])
    return information.T @ (features[:, rows] * features[:, columns])


def readout_posterior(
    values: Mapping, spec: ConceptSpec, noise: NoiseModel, data: Mapping, encoded: Mapping
) -> Readout:
    """The Laplace approximation of every gene's readout (module docstring).

    ``values``: the globals' central values (:meth:`causalcell.inference.Posterior.median`);
    ``data``: the fit's (``labels``, ``size_factors``); ``encoded``: the training cells' local
    posterior (:meth:`~causalcell.inference.Posterior.encode`), read at its means. Cells that
    lack a label are left out (their features depend on the level summed out).
    """
    labels = np.asarray(data["labels"])
    cells = labelled_cells(labels)
    width, genes = values["decoder_out"].shape
    loc = jnp.concatenate([values["decoder_out"], values["baseline"][None]])
    rows, columns = np.triu_indices(width + 1)
    chunk = min(len(cells), max(1, CHUNK_FLOATS // len(rows)))
    own, rest = encoded["concept_noise"]["mean"], encoded["unexplained"]["mean"]
    sizes = jnp.asarray(data["size_factors"])
    triangle = jnp.zeros((genes, len(rows)), jnp.float32)
    for start in range(0, len(cells), chunk):
        chosen = cells[start : start + chunk]
        weight = np.zeros(chunk, np.float32)
        weight[: len(chosen)] = 1.0
        chosen = np.pad(chosen, (0, chunk - len(chosen)), constant_values=cells[0])  # one shape
        cell_arrays = (labels[chosen], own[chosen], rest[chosen], sizes[chosen], weight)
        triangle = triangle + _information(dict(values), loc, spec, noise, *cell_arrays)
    information = jnp.zeros((genes, width + 1, width + 1), jnp.float32)
    information = information.at[:, rows, columns].set(triangle).at[:, columns, rows].set(triangle)
    prior = np.append(np.full(width, float(width)), BASELINE_SCALE**-2.0).astype(np.float32)
    factor = covariance_factor(information + jnp.diag(prior))
    return Readout(loc=np.asarray(loc), factor=np.asarray(factor))
