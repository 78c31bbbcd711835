"""LocalImportanceELBO against the exact log evidence of a Poisson-lognormal model (quadrature):
the bound rises with the particles towards it, and a subsampled plate's cells are shared by
every particle."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import special, stats

from causalcell.inference import LocalImportanceELBO

LOC, SPREAD = 1.0, 0.5
COUNTS = np.array([0, 20] * 10, dtype=np.float32)  # alike cells would hide a mixed-up batch


def model(counts, batch=None):
    loc = numpyro.sample("loc", dist.Normal(0.0, 1.0))
    with numpyro.plate("cells", counts.shape[0], subsample_size=batch) as index:
        latent = numpyro.sample("latent", dist.Normal(loc, SPREAD))
        numpyro.sample("counts", dist.Poisson(jnp.exp(latent)), obs=counts[index])


def guide(counts, batch=None):
    numpyro.sample("loc", dist.Delta(numpyro.param("loc_value", LOC)))
    with numpyro.plate("cells", counts.shape[0], subsample_size=batch):
        numpyro.sample("latent", dist.Normal(LOC, SPREAD))  # the prior: a poor local q


def exact_log_evidence():
    """``log p(loc) + sum_i log int Poisson(y_i; e^x) N(x; loc, spread) dx`` (60 nodes)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    latent = LOC + SPREAD * nodes
    per_cell = special.logsumexp(
        stats.poisson.logpmf(COUNTS[:, None], np.exp(latent)) + np.log(weights / weights.sum()),
        axis=1,
    )
    return stats.norm.logpdf(LOC) + per_cell.sum()


def bounds(particles, batch=None, draws=200):
    """``draws`` estimates of the bound (one per seed)."""
    objective = LocalImportanceELBO(particles)

    def one(key):
        params = {"loc_value": jnp.asarray(LOC)}
        return -objective.loss(key, params, model, guide, jnp.asarray(COUNTS), batch)

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(0), draws)))


def test_the_bound_rises_with_the_particles_to_the_exact_log_evidence():
    exact = exact_log_evidence()
    gaps = {k: exact - bounds(k).mean() for k in (1, 16, 256)}
    # Gaps of about 164, 46 and 7 nats with Monte Carlo standard errors of 1.9, 0.7 and 0.3
    # (200 draws): each ordered beyond its error, the last a bound (not above the evidence
    # by more than 3 errors), falling with K roughly as 1 / K.
    assert gaps[1] > gaps[16] > gaps[256] > -1.0
    assert gaps[256] < 0.1 * gaps[1]


def test_subsampled_cells_are_the_same_in_every_particle():
    # The scaled minibatch bound is unbiased for the full one whatever cells a draw takes, as
    # long as all particles weigh the same cells: with each particle drawing its own cells,
    # mixing cells of 0 and 20 counts in one log-mean-exp moved it from -142 to -62 (standard
    # error 1.0 here).
    full = bounds(64).mean()
    subsampled = bounds(64, batch=4, draws=2000)
    error = subsampled.std() / np.sqrt(subsampled.size)
    assert abs(subsampled.mean() - full) < 4 * error


def test_particles_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="particles must be a positive integer"):
        LocalImportanceELBO(0)
