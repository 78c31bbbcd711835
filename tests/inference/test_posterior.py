"""Posterior (draws, encodings, predictions, files) and fit_nuts, against closed forms."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.diagnostics import effective_sample_size
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from causalcell._core import arviz_adapter as _arviz
from causalcell.inference import _svi as svi_module
from causalcell.inference import fit
from causalcell.inference._guides import AmortizedGuide
from causalcell.inference._nuts import fit_nuts
from causalcell.inference._posterior import Posterior
from causalcell.inference._serialization import load_tree, read_metadata, save_tree

PRIOR_SCALE = 10.0
NUM_CELLS = 40
NUM_GENES = 6
NUTS_SETTINGS = {
    "num_warmup": 300,
    "num_samples": 1000,
    "num_chains": 2,
    "key": 0,
    "progress_bar": False,
}


def normal_mean(values=None, *, noise):
    """Conjugate model: mean ~ N(0, 10^2), values_c ~ N(mean, noise_c^2) with known noise."""
    mean = numpyro.sample("mean", dist.Normal(0.0, PRIOR_SCALE))
    with numpyro.plate("cells", noise.shape[0]) as index:
        observed = None if values is None else values[index]
        numpyro.sample("values", dist.Normal(mean, noise[index]), obs=observed)


def latent_counts(counts=None, *, size_factors, latent_dim=2):
    """Poisson factor model: global loadings, per-gene rates (a "genes" plate), per-cell z."""
    loadings = numpyro.sample(
        "loadings", dist.Normal(0, 1).expand([latent_dim, NUM_GENES]).to_event(2)
    )
    with numpyro.plate("genes", NUM_GENES):
        log_rate = numpyro.sample("log_rate", dist.Normal(0, 1))
    with numpyro.plate("cells", size_factors.shape[0]) as index:
        z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
        rate = jnp.exp(z @ loadings + log_rate) * size_factors[index, None]
        observed = None if counts is None else counts[index]
        numpyro.sample("counts", dist.Poisson(rate).to_event(1), obs=observed)


def latent_counts_with_depth(counts=None, *, size_factors, latent_dim=2):
    """The same model with one more global site (for the wrong-model checks)."""
    numpyro.sample("depth", dist.Normal(0, 1))
    latent_counts(counts, size_factors=size_factors, latent_dim=latent_dim)


@pytest.fixture(scope="module")
def conjugate():
    noise = jnp.linspace(0.5, 2.0, NUM_CELLS)
    values = 1.5 + noise * jax.random.normal(jax.random.key(0), (NUM_CELLS,))
    precision = PRIOR_SCALE**-2 + jnp.sum(noise**-2)
    exact_mean = float(jnp.sum(values / noise**2) / precision)
    return {"values": values, "noise": noise}, exact_mean, float(precision**-0.5)


@pytest.fixture(scope="module")
def nuts_posterior(conjugate):
    data, _, _ = conjugate
    return fit_nuts(normal_mean, data, **NUTS_SETTINGS)


@pytest.fixture(scope="module")
def normal_posterior(conjugate):
    data, _, _ = conjugate
    guide = AutoNormal(normal_mean)
    svi = SVI(normal_mean, guide, optax.adam(0.02), Trace_ELBO(num_particles=4))
    result = svi.run(jax.random.key(1), 3000, progress_bar=False, **data)
    return Posterior(
        normal_mean,
        method="svi",
        data=data,
        guide=guide,
        params=result.params,
        losses=result.losses,
        config={"num_steps": 3000},
    )


@pytest.fixture(scope="module")
def amortized_posterior():
    counts = jax.random.poisson(jax.random.key(1), 3.0, (20, NUM_GENES)).astype(jnp.float32)
    data = {"counts": counts, "size_factors": jnp.linspace(0.5, 1.5, 20)}
    guide = AmortizedGuide(latent_counts, hidden=(8,))
    svi = SVI(latent_counts, guide, optax.adam(1e-2), Trace_ELBO())
    state = svi.init(jax.random.key(0), **data)  # unfitted parameters do for these checks
    return Posterior(
        latent_counts,
        method="svi",
        data=data,
        guide=guide,
        params=svi.get_params(state),
        losses=jnp.array([30.5, 20.25, 18.0]),
        config={"num_steps": 3, "optimizer": "adam(1e-2)"},
    )


def assert_trees_identical(first, second):
    leaves, treedef = jax.tree.flatten(first)
    other, other_treedef = jax.tree.flatten(second)
    assert treedef == other_treedef
    for leaf, other_leaf in zip(leaves, other):
        assert leaf.dtype == other_leaf.dtype
        np.testing.assert_array_equal(leaf, other_leaf)  # bit for bit


# -- fit_nuts ------------------------------------------------------------------------------------
def test_nuts_matches_closed_form_posterior(nuts_posterior, conjugate):
    _, exact_mean, exact_sd = conjugate
    draws = np.asarray(nuts_posterior.samples["mean"])
    size = effective_sample_size(draws.reshape(2, -1))
    assert size > 500  # a well-mixed 1-d Gaussian: ESS near the 2000 draws
    # Monte Carlo standard errors of the mean and of the sd are sd/sqrt(ESS) and
    # sd/sqrt(2 ESS); four of them bound the error with probability > 0.9999.
    assert abs(draws.mean() - exact_mean) < 4 * exact_sd / np.sqrt(size)
    assert abs(draws.std() / exact_sd - 1) < 4 / np.sqrt(2 * size)
    assert nuts_posterior.num_chains == 2 and nuts_posterior.num_draws == 2000
    assert nuts_posterior.config["divergences"] == 0
    assert nuts_posterior.sample_stats["diverging"].shape == (2, 1000)


def test_fit_nuts_same_key_same_draws(nuts_posterior, conjugate):
    again = fit_nuts(normal_mean, conjugate[0], **NUTS_SETTINGS)  # the fixture's settings
    assert_trees_identical(again.samples, nuts_posterior.samples)  # same key, same draws
    chains = np.asarray(again.samples["mean"]).reshape(2, -1)
    assert not np.array_equal(chains[0], chains[1])  # each chain has its own key


def test_nuts_sample_selects_stored_draws(nuts_posterior):
    stored = np.asarray(nuts_posterior.samples["mean"])
    np.testing.assert_array_equal(nuts_posterior.sample(0, num_samples=None)["mean"], stored)
    chosen = np.asarray(nuts_posterior.sample(1, num_samples=500)["mean"])
    assert chosen.shape == (500,) and np.isin(chosen, stored).all()
    # Without replacement: no value is picked more often than it is stored (NUTS repeats a
    # draw when a transition is rejected, so values themselves need not be unique).
    values, counts = np.unique(chosen, return_counts=True)
    assert (counts <= (stored[:, None] == values).sum(0)).all()
    with pytest.raises(ValueError, match="Only 2000 NUTS draws"):
        nuts_posterior.sample(0, num_samples=3000)


def test_nuts_encode_summarises_stored_local_draws():
    draws = jax.random.normal(jax.random.key(5), (50, 4))
    posterior = Posterior(
        normal_mean,
        method="nuts",
        data={"values": None, "noise": jnp.ones(4)},
        samples={"mean": jnp.zeros(50), "values": draws},
    )
    assert posterior.local_sites == ("values",)  # unobserved, so a per-cell latent site
    encoded = posterior.encode(num_samples=10, key=0)["values"]
    np.testing.assert_allclose(encoded["mean"], draws.mean(0), rtol=1e-6)  # float32 rounding
    np.testing.assert_allclose(encoded["scale"], draws.std(0, ddof=1), rtol=1e-6)
    assert encoded["draws"].shape == (10, 4) and np.isin(encoded["draws"], draws).all()


# -- SVI posteriors ------------------------------------------------------------------------------
def test_svi_sample_matches_closed_form_posterior(normal_posterior, conjugate):
    _, exact_mean, exact_sd = conjugate
    draws = np.asarray(normal_posterior.sample(jax.random.key(2), 4000)["mean"])
    assert draws.shape == (4000,)
    # AutoNormal holds the exact (Gaussian) posterior; what remains is stochastic-gradient
    # jitter of the fitted loc and scale (a few % of a sd after 3000 Adam steps) plus the
    # Monte Carlo error of 4000 draws (1.6 % of a sd): 0.2 sd and 10 % are loose bounds.
    assert abs(draws.mean() - exact_mean) < 0.2 * exact_sd
    assert abs(draws.std() / exact_sd - 1) < 0.1


def test_amortized_sample_draws_from_the_global_guide(amortized_posterior):
    posterior, params = amortized_posterior, amortized_posterior.params
    assert posterior.global_sites == ("loadings", "log_rate")  # "genes"-plate sites are global
    assert posterior.local_sites == ("z",) and posterior.num_cells == 20
    draws = posterior.sample(jax.random.key(3), 2000)
    assert set(draws) == {"loadings", "log_rate"}
    assert draws["loadings"].shape == (2000, 2, NUM_GENES)
    for site in draws:
        loc, scale = params[f"{site}_global_loc"], params[f"{site}_global_scale"]
        # Gaussian draws: the mean is off by scale/sqrt(2000) per entry; 5 of them bound all
        # 18 entries with probability > 0.9999.
        np.testing.assert_array_less(np.abs(draws[site].mean(0) - loc), 5 * scale / np.sqrt(2000))
        np.testing.assert_allclose(draws[site].std(0), scale, rtol=0.15)  # sd of 2000: 1.6 %


def test_encode_in_batches_equals_one_encode_call(amortized_posterior):
    posterior, guide = amortized_posterior, amortized_posterior.guide
    whole = jax.jit(guide.encode)(posterior.params, posterior.data, jnp.arange(20))
    for batch_size in (7, 20, 1024):  # 7: a last batch of 6 padded to 7
        encoded = posterior.encode(batch_size=batch_size)["z"]
        np.testing.assert_array_equal(encoded["mean"], whole["z"][0])  # exact
        np.testing.assert_array_equal(encoded["scale"], whole["z"][1])
    with_draws = posterior.encode(batch_size=7, num_samples=400, key=jax.random.key(4))["z"]
    assert with_draws["draws"].shape == (400, 20, 2)
    standardised = (with_draws["draws"] - whole["z"][0]) / whole["z"][1]
    # 16,000 standard normal values: mean within 4/sqrt(16000) = 0.03, sd within 2 %.
    assert abs(float(standardised.mean())) < 0.03
    assert abs(float(standardised.std()) - 1) < 0.02
    subset = {name: value[:5] for name, value in posterior.data.items()}
    np.testing.assert_array_equal(posterior.encode(data=subset)["z"]["mean"], whole["z"][0][:5])


def test_encode_needs_an_amortized_guide(normal_posterior):
    with pytest.raises(NotImplementedError, match="AmortizedGuide"):
        normal_posterior.encode()


# -- predictive ----------------------------------------------------------------------------------
def test_predictive_simulates_values_around_the_posterior_mean(normal_posterior, conjugate):
    data, _, _ = conjugate
    loc = float(normal_posterior.params["mean_auto_loc"])
    scale = float(normal_posterior.params["mean_auto_scale"])
    draws = normal_posterior.predictive(jax.random.key(5), 1000, values=None)["values"]
    assert draws.shape == (1000, NUM_CELLS)
    # Grand mean of 1000 x 40 draws: variance scale^2/1000 + sum(noise^2)/(1000 * 40^2).
    error = np.sqrt(scale**2 / 1000 + float(jnp.sum(data["noise"] ** 2)) / (1000 * NUM_CELLS**2))
    assert abs(float(draws.mean()) - loc) < 4 * error
    # Per-cell predictive variance scale^2 + noise_c^2; the average of 40 ratios of sample to
    # true variance (each with sd sqrt(2/999) = 4.5 %) is within 5 % of 1.
    ratio = np.mean(np.var(draws, axis=0) / (scale**2 + data["noise"] ** 2))
    assert abs(ratio - 1) < 0.05


def test_nuts_predictive(nuts_posterior, conjugate):
    _, exact_mean, exact_sd = conjugate
    draws = nuts_posterior.predictive(jax.random.key(6), 500, values=None)["values"]
    assert draws.shape == (500, NUM_CELLS)
    assert abs(float(draws.mean()) - exact_mean) < 0.5 * exact_sd  # MC error ~0.07 sd


def test_amortized_predictive_encodes_observed_counts_and_simulates(amortized_posterior):
    draws = amortized_posterior.predictive(
        jax.random.key(7), 100, counts=None, return_sites=["z", "counts"]
    )
    assert draws["counts"].shape == (100, 20, NUM_GENES)
    assert (draws["counts"] >= 0).all() and (draws["counts"] == jnp.round(draws["counts"])).all()
    # The guide still encodes the observed counts (only the model simulates): z follows the
    # encoder's Gaussian; its mean over 100 draws is within 5 standard errors for all 40 entries.
    encoded = amortized_posterior.encode()["z"]
    error = np.abs(draws["z"].mean(0) - encoded["mean"])
    np.testing.assert_array_less(error, 5 * encoded["scale"] / np.sqrt(100))


# -- ArviZ ---------------------------------------------------------------------------------------
def test_to_arviz_svi_holds_the_sampled_global_sites(amortized_posterior):
    data = amortized_posterior.to_arviz(num_samples=50, key=jax.random.key(8))
    posterior = _arviz.get_group(data, "posterior")
    assert set(posterior.data_vars) == {"loadings", "log_rate"}
    draws = amortized_posterior.sample(jax.random.key(8), 50)
    assert posterior["log_rate"].shape == (1, 50, NUM_GENES)  # one chain for SVI
    np.testing.assert_array_equal(posterior["log_rate"].values[0], draws["log_rate"])


def test_to_arviz_nuts_keeps_the_chains(nuts_posterior):
    data = nuts_posterior.to_arviz()
    posterior = _arviz.get_group(data, "posterior")
    expected = np.asarray(nuts_posterior.samples["mean"]).reshape(2, 1000)
    np.testing.assert_array_equal(posterior["mean"].values, expected)
    assert _arviz.get_group(data, "sample_stats")["diverging"].shape == (2, 1000)


# -- files ---------------------------------------------------------------------------------------
def test_save_load_round_trip_amortized(amortized_posterior, tmp_path):
    path = tmp_path / "posterior.npz"
    amortized_posterior.save(path)
    assert os.listdir(tmp_path) == ["posterior.npz"]  # the temporary file was renamed away
    data = amortized_posterior.data
    fresh_guide = AmortizedGuide(latent_counts, hidden=(8,))
    for guide in (None, fresh_guide):  # None: rebuilt from the settings in the file
        loaded = Posterior.load(path, latent_counts, data=data, guide=guide)
        assert_trees_identical(loaded.params, amortized_posterior.params)
        np.testing.assert_array_equal(loaded.losses, amortized_posterior.losses)
        assert loaded.config == amortized_posterior.config
        assert_trees_identical(loaded.encode(batch_size=7), amortized_posterior.encode(7))
    metadata = read_metadata(path)
    assert metadata["method"] == "svi" and metadata["num_cells"] == 20
    assert metadata["model"]["name"] == f"{__name__}.latent_counts"


def test_save_load_round_trip_nuts(nuts_posterior, conjugate, tmp_path):
    path = tmp_path / "nuts.npz"
    nuts_posterior.save(path)
    loaded = Posterior.load(path, normal_mean, data=conjugate[0])
    assert_trees_identical(loaded.samples, nuts_posterior.samples)
    assert_trees_identical(loaded.sample_stats, nuts_posterior.sample_stats)
    assert loaded.num_chains == 2 and loaded.config == nuts_posterior.config
    fewer_cells = {name: value[:10] for name, value in conjugate[0].items()}
    loaded = Posterior.load(path, normal_mean, data=fewer_cells)  # no per-cell latents: fine
    assert loaded.num_cells == 10


def test_save_load_round_trip_auto_normal(normal_posterior, conjugate, tmp_path):
    normal_posterior.save(tmp_path / "normal.npz")
    loaded = Posterior.load(tmp_path / "normal.npz", normal_mean, data=conjugate[0])
    assert isinstance(loaded.guide, AutoNormal)  # rebuilt from the file
    assert_trees_identical(loaded.params, normal_posterior.params)
    key = jax.random.key(9)
    assert_trees_identical(loaded.sample(key, 10), normal_posterior.sample(key, 10))


def test_load_with_a_different_model_raises(amortized_posterior, tmp_path):
    path = tmp_path / "posterior.npz"
    amortized_posterior.save(path)
    data = amortized_posterior.data
    with pytest.raises(ValueError, match=r"latent_counts_with_depth.*site 'depth'") as error:
        Posterior.load(path, latent_counts_with_depth, data=data)
    assert f"{__name__}.latent_counts but" in str(error.value)  # names both models
    with pytest.raises(ValueError, match=r"site 'z' has shape \['cells', 2\].*\['cells', 3\]"):
        Posterior.load(path, latent_counts, data=data, model_kwargs={"latent_dim": 3})
    with pytest.raises(ValueError, match="saved with guide"):
        Posterior.load(path, latent_counts, data=data, guide=AutoNormal(latent_counts))


def test_load_refuses_a_newer_format_version(amortized_posterior, tmp_path):
    path = tmp_path / "posterior.npz"
    amortized_posterior.save(path)
    with np.load(path) as archive:
        members = {name: archive[name] for name in archive.files}
    header = json.loads(members["header"].tobytes())
    header["format_version"] = 99
    members["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as file:
        np.savez(file, **members)
    with pytest.raises(ValueError, match="format_version 99"):
        Posterior.load(path, latent_counts, data=amortized_posterior.data)


def test_save_tree_round_trips_keys_modules_and_checks_the_template(tmp_path):
    import equinox as eqx

    tree = {
        "key": jax.random.key(3),
        "layer": eqx.nn.Linear(2, 3, key=jax.random.key(0)),
        "losses": np.arange(4.0, dtype=np.float32),
    }
    save_tree(tmp_path / "tree", tree, {"step": np.int64(7)})
    loaded, metadata = load_tree(tmp_path / "tree", jax.eval_shape(lambda: tree))
    assert metadata == {"step": 7}
    np.testing.assert_array_equal(
        jax.random.key_data(loaded["key"]), jax.random.key_data(tree["key"])
    )
    np.testing.assert_array_equal(loaded["layer"].weight, tree["layer"].weight)
    shorter = {**tree, "losses": np.zeros(0)}
    with pytest.raises(ValueError, match=r"\['losses'\] has shape \(4,\)"):
        load_tree(tmp_path / "tree", shorter)
    loaded, _ = load_tree(tmp_path / "tree", shorter, allow_shape_change=("losses",))
    np.testing.assert_array_equal(loaded["losses"], tree["losses"])
    with pytest.raises(TypeError, match="JSON"):
        save_tree(tmp_path / "other", tree, {"function": print})


# -- construction and repr -----------------------------------------------------------------------
def test_repr_and_validation(amortized_posterior, conjugate):
    text = repr(amortized_posterior)
    assert "global sites: loadings (2, 6), log_rate (6)" in text
    assert "local sites: z (cells, 2)" in text and "cells=20" in text
    with pytest.raises(ValueError, match="method must be"):
        Posterior(normal_mean, method="mcmc", data=conjugate[0])
    with pytest.raises(ValueError, match="needs the fitted guide"):
        Posterior(normal_mean, method="svi", data=conjugate[0])


def test_sites_of_a_model_that_reads_concrete_values():
    def thresholded(values=None, *, noise):
        scale = PRIOR_SCALE if float(noise.max()) < 5 else 1.0  # needs a concrete array
        mean = numpyro.sample("mean", dist.Normal(0.0, scale))
        with numpyro.plate("cells", noise.shape[0]):
            numpyro.sample("values", dist.Normal(mean, noise), obs=values)

    data = {"values": jnp.zeros(3), "noise": jnp.ones(3)}
    posterior = Posterior(thresholded, method="nuts", data=data, samples={"mean": jnp.ones(2)})
    assert posterior.global_sites == ("mean",) and posterior.num_cells == 3  # traced eagerly


def scale_then_loadings(counts=None, *, size_factors):
    """Globals sampled out of alphabetical order (``scale`` before ``loadings``)."""
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 0.5))
    loadings = numpyro.sample("loadings", dist.Normal(0, 1).expand([NUM_GENES]).to_event(1))
    with numpyro.plate("cells", size_factors.shape[0]) as index:
        z = numpyro.sample("z", dist.Normal(0, 1))
        rate = jnp.exp(scale * z[:, None] * loadings) * size_factors[index, None]
        observed = None if counts is None else counts[index]
        numpyro.sample("counts", dist.Poisson(rate).to_event(1), obs=observed)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_loaded_full_rank_guide_draws_what_its_fit_drew(compiled, tmp_path, monkeypatch):
    # NumPyro flattens an auto-guide's latents in program order when it sets up eagerly and
    # by site name when traced; the loaded guide must set up as its fit did (a compiled
    # initialisation, or an eager one for data above JIT_INIT_LIMIT), or every draw is read
    # off the wrong coordinates (a silent wrong answer until session 15).
    if not compiled:
        monkeypatch.setattr(svi_module, "JIT_INIT_LIMIT", 0)
    counts = jax.random.poisson(jax.random.key(1), 3.0, (30, NUM_GENES)).astype(jnp.float32)
    data = {"counts": counts, "size_factors": jnp.linspace(0.5, 1.5, 30)}
    fitted = fit(
        scale_then_loadings,
        data,
        guide_kwargs={"global_guide": "full", "hidden": (4,)},
        num_steps=30,
        batch_size=10,
        progress_bar=False,
    )
    assert fitted.config["compiled_setup"] is compiled
    fitted.save(tmp_path / "posterior.npz")
    guide = AmortizedGuide(scale_then_loadings, global_guide="full", hidden=(4,))
    loaded = Posterior.load(tmp_path / "posterior.npz", scale_then_loadings, data=data, guide=guide)
    ours, theirs = fitted.sample(jax.random.key(5), 7), loaded.sample(jax.random.key(5), 7)
    for name in ("scale", "loadings"):
        np.testing.assert_array_equal(ours[name], theirs[name])
