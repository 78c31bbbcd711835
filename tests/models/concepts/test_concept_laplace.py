"""The Laplace readout of the concept model's decoder (``decoder_posterior="laplace"``): the
exact Gaussian posterior of a linear-Gaussian decoder's output layer, summed over chunks of
cells, and draws from it."""

import jax
import numpy as np

import causalcell as cc
from causalcell.models.concepts import _laplace, readout_posterior


def test_the_readout_of_a_linear_gaussian_decoder_is_its_exact_posterior(
    monkeypatch, linear_gaussian_cells
):
    """With a linear decoder and Gaussian values, each gene's values are a linear regression on
    the features ``[e, h, 1]`` (at the encoder's means): the readout's covariance must be
    ``(F^T F / s_g^2 + Lambda_0)^{-1}``, built here from the sites themselves, and summing the
    precision over chunks (the last one padded) must not change it."""
    adata = linear_gaussian_cells(300, 6, seed=4)
    model = cc.ConceptModel.fit(
        adata,
        ["drug", "batch"],
        genes=None,
        hidden=0,
        noise="gaussian",
        dimension=2,
        unexplained=2,
        num_steps=200,
        progress_bar=False,
    )
    values = {name: np.asarray(value) for name, value in model.posterior.median().items()}
    encoded = model.posterior.encode()
    own = np.asarray(encoded["concept_noise"]["mean"])
    rest = np.asarray(encoded["unexplained"]["mean"])
    labels = np.asarray(model.posterior.data["labels"])
    parts = [
        values[f"embedding_{name}"][labels[:, k]] + values["spread"][k] * own[:, 2 * k : 2 * k + 2]
        for k, name in enumerate(model.spec.names)
    ]
    features = np.concatenate([*parts, rest, np.ones((len(labels), 1))], axis=1)
    width = features.shape[1] - 1
    prior = np.diag(np.append(np.full(width, float(width)), 0.25))  # 1 / 2^2 for the baseline
    for gene, scale in enumerate(values["noise_scale"]):
        expected = np.linalg.inv(features.T @ features / scale**2 + prior)
        factor = model.readout.factor[gene]
        # float32 sums over 300 cells and a float32 factorisation: errors of about 1e-5 of the
        # largest entry (measured 2e-5), so 1e-4 of it.
        atol = 1e-4 * np.abs(expected).max()
        np.testing.assert_allclose(factor @ factor.T, expected, rtol=0, atol=atol)
    np.testing.assert_allclose(
        model.readout.loc, np.vstack([values["decoder_out"], values["baseline"][None]])
    )
    # 7 features, 28 pairwise products per cell: chunks of 23 cells, the last of 300 padded.
    monkeypatch.setattr(_laplace, "CHUNK_FLOATS", 28 * 23)
    chunked = readout_posterior(values, model.spec, model.noise, model.posterior.data, encoded)
    atol = 1e-4 * np.abs(model.readout.factor).max()  # float32 sums in another order
    np.testing.assert_allclose(chunked.factor, model.readout.factor, rtol=0, atol=atol)


def test_readout_draws_have_its_mean_and_covariance():
    rng = np.random.default_rng(0)
    loc = rng.normal(size=(3, 2)).astype(np.float32)
    lower = np.tril(rng.normal(size=(2, 3, 3))) + 2 * np.eye(3)
    readout = cc.models.concepts.Readout(loc=loc, factor=lower.astype(np.float32))
    draws = {"baseline": np.zeros((20000, 2)), "spread": np.ones((20000, 1))}
    drawn = readout.draws(jax.random.key(1), draws)
    assert drawn["decoder_out"].shape == (20000, 2, 2) and drawn["baseline"].shape == (20000, 2)
    np.testing.assert_array_equal(drawn["spread"], draws["spread"])  # other sites kept
    weights = np.concatenate([drawn["decoder_out"], drawn["baseline"][:, None]], axis=1)
    for gene in range(2):
        column = np.asarray(weights[:, :, gene], np.float64)
        covariance = lower[gene] @ lower[gene].T
        # 20,000 draws: a variance's relative sd is sqrt(2 / 20000) = 0.01; 5 sds.
        np.testing.assert_allclose(np.cov(column.T), covariance, rtol=0.05, atol=0.05)
        np.testing.assert_allclose(column.mean(0), loc[:, gene], atol=0.1)
