"""Per-cell posterior of LCD's latents: the exact Gaussian update of the cell's stationary law
by a Laplace message from its counts.

For linear drift the latent prior of a cell in condition ``p`` is ``N(mu_p, Sigma_p)``. Each
gene's count ``y`` under a negative binomial with mean ``l e^x`` and concentration ``theta``
has log-likelihood ``y x - (y + theta) log(l e^x + theta)``; its mode is ``x = log(y / l)`` and
its curvature there ``y theta / (y + theta)``. With a half pseudo-count (so that zeros have a
mode) this gives a Gaussian message ``N(m, 1 / lambda)`` per gene, and the guide is the exact
product ``q(x) = N(P^{-1} (Sigma_p^{-1} mu_p + lambda m), P^{-1})`` with
``P = Sigma_p^{-1} + diag(lambda)``, a full-covariance posterior that is exact for Gaussian
messages. The precision ``lambda`` is taken at the condition's mean count (it saturates at
``theta`` for counts well above it, so it varies little between cells of a condition).
Built from the globals drawn in the same guide call, it tracks the model during the fit, so
there is no amortization gap to close: the encoder only adds a learned correction to the
message mean.

In a reduced gene space (:mod:`._lcd_decoder`) the log-rates are ``D_full z + o`` with
``D_full`` stacking identity rows for the modelled genes and the loadings ``D`` for decoded
genes (offsets ``o = c - D baseline``, zero for modelled genes). The same messages then give
the exact update ``P = Sigma_p^{-1} + D_full^T diag(lambda) D_full`` and information
``Sigma_p^{-1} mu_p + D_full^T (lambda (m - o))``, and the encoder's correction ``delta`` (in
latent coordinates) moves every message mean by ``D_full delta``. Factorisations stay per
condition (``m x m``); a cell costs matrix-vector products of size ``genes x m``.

References
----------
Johnson, M. J. et al. (2016). Composing graphical models with neural networks for structured
representations and fast inference. NeurIPS (conjugate likelihood messages in a guide).
"""

from __future__ import annotations

import jax.numpy as jnp

from causalcell._gaussian import MultivariateNormal
from causalcell._linalg import cho_solve, cholesky
from causalcell.models._lcd_decoder import decoder_from_sites
from causalcell.models._lcd_program import condition_laws

__all__ = ["lcd_local_posterior", "message_mean", "message_precision"]

#: Pseudo-count added to every count so that zero counts have a finite message mode.
PSEUDO_COUNT = 0.5


def message_mean(counts, size_factors):
    """Mode of each count's likelihood in log-expression, ``log((y + 0.5) / l)`` ``[cells, d]``."""
    return jnp.log((counts + PSEUDO_COUNT) / size_factors[..., None])


def message_precision(counts, concentration=None):
    """Curvature of the NB log-likelihood at its mode, ``y theta / (y + theta)`` (pseudo-counted).

    ``concentration`` ``[d]`` of a negative binomial; ``None`` for Poisson (``theta`` infinite,
    curvature ``y``).
    """
    pseudo = counts + PSEUDO_COUNT
    if concentration is None:
        return pseudo
    return pseudo * concentration / (pseudo + concentration)


def lcd_local_posterior(intervention: str, condition_counts, programs: int = 0):
    """The ``local_posterior`` of :class:`causalcell.inference.AmortizedGuide` for linear LCD.

    ``condition_counts`` ``[P, genes]``: mean counts of each gene in each condition (training
    data, columns as the model's counts: modelled genes, then decoded genes). ``programs``: the
    model's number of latent programs. The message precision of a cell is its condition's (from
    these mean counts), so that the posterior covariance is shared within a condition: every
    factorisation is per condition (``P`` of them), and a cell costs matrix-vector products
    only. Batched LAPACK calls over cells are avoided on purpose: jaxlib 0.10 on CPU can
    deadlock when two of them run concurrently on a two-thread pool.
    """
    condition_counts = jnp.asarray(condition_counts)

    def local_posterior(values, data, index, heads):
        _, means, covariances = condition_laws(
            values, data["condition_targets"], intervention, data.get("prior_mask")
        )
        eye = jnp.broadcast_to(jnp.eye(means.shape[-1]), covariances.shape)
        prior_precision = cho_solve((cholesky(covariances), True), eye)
        precision_of_counts = message_precision(condition_counts, values.get("noise_concentration"))
        modelled = means.shape[-1] - programs
        own = _pad(precision_of_counts[:, :modelled], programs)  # identity rows of D_full
        precision = prior_precision + eye * own[:, None, :]
        decoder = decoder_from_sites(values)
        if decoder is not None:
            loadings, decoded_precision = decoder["loadings"], precision_of_counts[:, modelled:]
            through = jnp.einsum("gi,pg,gj->pij", loadings, decoded_precision, loadings)
            precision = precision + through
        posterior_covariance = cho_solve((cholesky(precision), True), eye)
        prior_information = jnp.einsum("pij,pj->pi", prior_precision, means)
        condition = data["condition_index"][index]
        loc, _ = heads["latent"]
        mode = message_mean(data["counts"][index], data["size_factors"][index])
        information = prior_information[condition] + own[condition] * (
            _pad(mode[:, :modelled], programs) + loc
        )
        if decoder is not None:
            offset = decoder["offset"] - loadings @ values["baseline"]
            residual = mode[:, modelled:] - offset + loc @ loadings.T
            information = information + (decoded_precision[condition] * residual) @ loadings
        mean = jnp.einsum("cij,cj->ci", posterior_covariance[condition], information)
        factor = cholesky(posterior_covariance)
        return {"latent": MultivariateNormal(mean, scale_tril=factor[condition])}

    return local_posterior


def _pad(values, programs: int):
    """``values`` ``[..., modelled]`` with ``programs`` zero columns appended (no copy at 0)."""
    if programs == 0:
        return values
    return jnp.concatenate([values, jnp.zeros((*values.shape[:-1], programs), values.dtype)], -1)
