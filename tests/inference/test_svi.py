"""fit(): SVI against exact posteriors, parameter recovery, divergence, checkpoints, seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from causalcell import CausalcellWarning
from causalcell.inference import (
    FULL_RANK_LIMIT,
    POINT_SCALE,
    AmortizedGuide,
    EarlyStopping,
    FitDivergedError,
    _svi,
    fit,
)
from causalcell.inference._posterior_files import guide_spec, rebuild_guide

PRIOR_SD = 10.0


def normal_mean(x):
    """x_i ~ N(mu, 1), mu ~ N(0, 10^2): the posterior of mu is Gaussian in closed form."""
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("cells", x.shape[0]) as index:
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x[index])


def exact_posterior(x):
    precision = x.shape[0] + PRIOR_SD**-2
    return x.sum() / precision, precision**-0.5


@pytest.fixture(scope="module")
def normal_data():
    return np.random.default_rng(0).normal(1.7, 1.0, size=2000).astype(np.float32)


def test_minibatch_svi_matches_the_conjugate_posterior(normal_data):
    posterior = fit(
        normal_mean,
        {"x": normal_data},
        guide="normal",
        optimizer=optax.adam(optax.exponential_decay(0.05, 1000, 0.1)),
        num_steps=2000,
        batch_size=200,
        key=1,
        progress_bar=False,
    )
    draws = posterior.sample(jax.random.key(2), 4000)["mu"]
    mean, sd = exact_posterior(normal_data)
    # Minibatch gradients leave optimisation noise of a fraction of the posterior sd (0.022)
    # after the step size decays 10-fold; 4000 draws add 0.0004. Allow half a posterior sd.
    assert float(draws.mean()) == pytest.approx(mean, abs=0.5 * sd)
    # The fitted scale of a Gaussian posterior under a Gaussian guide: within 30% (a scale
    # parameter sees noisier gradients than the mean).
    assert float(draws.std()) == pytest.approx(sd, rel=0.3)
    assert posterior.losses.shape == (2000,)


def negative_binomial(counts, size_factors):
    """counts_cg ~ NB(mean l_c exp(mu_g), concentration theta_g)."""
    genes = counts.shape[1]
    mu = numpyro.sample("log_mean", dist.Normal(0.0, 3.0).expand([genes]).to_event(1))
    theta = numpyro.sample("concentration", dist.LogNormal(1.0, 1.0).expand([genes]).to_event(1))
    with numpyro.plate("cells", counts.shape[0]) as index:
        mean = size_factors[index, None] * jnp.exp(mu)
        numpyro.sample("counts", dist.NegativeBinomial2(mean, theta).to_event(1), obs=counts[index])


def test_fit_recovers_negative_binomial_means_and_dispersions():
    rng = np.random.default_rng(3)
    cells, genes = 3000, 40
    true_mean = rng.normal(0.0, 1.0, genes)
    true_theta = np.exp(rng.uniform(np.log(0.5), np.log(20.0), genes))
    sizes = np.exp(rng.normal(0.0, 0.3, cells))
    mean = sizes[:, None] * np.exp(true_mean)
    counts = rng.negative_binomial(true_theta, true_theta / (true_theta + mean)).astype(np.float32)
    posterior = fit(
        negative_binomial,
        {"counts": counts, "size_factors": sizes.astype(np.float32)},
        guide="normal",
        optimizer=optax.adam(0.02),
        num_steps=1500,
        batch_size=512,
        key=0,
        progress_bar=False,
    )
    draws = posterior.sample(jax.random.key(0), 500)
    fitted_mean = np.asarray(draws["log_mean"].mean(0))
    fitted_theta = np.asarray(jnp.log(draws["concentration"]).mean(0))
    # Log-means are pinned by 3000 cells (s.e. ~ 0.02-0.05 on a spread of 1): r > 0.99.
    assert np.corrcoef(fitted_mean, true_mean)[0, 1] > 0.99
    # log concentration has s.e. ~ sqrt(2 / n) * (1 + theta / mean) ~ 0.03-0.4 over a spread of
    # 1.1 (log-uniform on [0.5, 20]); the weakest genes (low mean, high theta) are noisy: r > 0.9.
    assert np.corrcoef(fitted_theta, np.log(true_theta))[0, 1] > 0.9


def exploding(x):
    """The likelihood overflows once the location parameter passes ~4.5: a divergence."""
    a = numpyro.sample("a", dist.Normal(0.0, 10.0))
    with numpyro.plate("cells", x.shape[0]) as index:
        numpyro.sample("x", dist.Normal(jnp.exp(jnp.exp(a)), 1.0), obs=x[index])


def test_divergence_stops_with_the_step_and_keeps_the_last_good_parameters():
    data = {"x": jnp.full(10, 50.0)}  # pulls a upward until exp(exp(a)) overflows
    settings = dict(
        guide="delta", optimizer=optax.sgd(0.5), num_steps=300, chunk_size=50, progress_bar=False
    )
    with pytest.raises(
        FitDivergedError, match=r"non-finite at step \d+; stopped and kept"
    ) as caught:
        fit(exploding, data, **settings)
    posterior = caught.value.posterior
    step = posterior.config["diverged_at"]
    assert 0 < step < 300 and posterior.losses.shape == (step,)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(posterior.params))
    with pytest.warns(CausalcellWarning, match="non-finite"):
        warned = fit(exploding, data, on_divergence="warn", **settings)
    np.testing.assert_array_equal(warned.params["a_auto_loc"], posterior.params["a_auto_loc"])


def test_same_key_same_result_and_different_key_different_result(normal_data):
    settings = dict(guide="normal", num_steps=200, batch_size=100, progress_bar=False)
    first = fit(normal_mean, {"x": normal_data}, key=5, **settings)
    second = fit(normal_mean, {"x": normal_data}, key=5, **settings)
    other = fit(normal_mean, {"x": normal_data}, key=6, **settings)
    for name, value in first.params.items():
        np.testing.assert_array_equal(value, second.params[name])
    assert not np.array_equal(first.losses, other.losses)


def test_resume_from_a_checkpoint_is_bit_for_bit(normal_data, tmp_path, monkeypatch):
    settings = dict(
        guide="normal",
        num_steps=400,
        batch_size=100,
        chunk_size=50,
        checkpoint_every=200,
        key=3,
        progress_bar=False,
    )
    uninterrupted = fit(
        normal_mean, {"x": normal_data}, checkpoint=tmp_path / "full.npz", **settings
    )

    original = _svi._save_checkpoint

    def crash_after_first_save(path, state, losses, step, config):
        original(path, state, losses, step, config)
        raise KeyboardInterrupt  # the machine went away right after step 200 was saved

    monkeypatch.setattr(_svi, "_save_checkpoint", crash_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        fit(normal_mean, {"x": normal_data}, checkpoint=tmp_path / "resumed.npz", **settings)
    monkeypatch.setattr(_svi, "_save_checkpoint", original)
    resumed = fit(normal_mean, {"x": normal_data}, checkpoint=tmp_path / "resumed.npz", **settings)
    for name, value in uninterrupted.params.items():
        np.testing.assert_array_equal(value, resumed.params[name])
    np.testing.assert_array_equal(uninterrupted.losses, resumed.losses)
    with pytest.raises(ValueError, match="different settings"):
        fit(
            normal_mean,
            {"x": normal_data},
            checkpoint=tmp_path / "resumed.npz",
            **{**settings, "batch_size": 50},
        )


def test_early_stopping_ends_a_converged_fit(normal_data):
    posterior = fit(
        normal_mean,
        {"x": normal_data},
        guide="normal",
        optimizer=optax.adam(0.1),
        num_steps=5000,
        chunk_size=100,
        early_stopping=EarlyStopping(patience=3, min_delta=1e-3),
        progress_bar=False,
    )
    stopped = posterior.config["stopped_early_at"]
    assert stopped < 5000
    assert posterior.losses.shape == (stopped,)
    # Replay the rule on the chunk means: the fit ends at the first chunk that makes `patience`
    # in a row without a relative improvement of min_delta over the best mean so far.
    means = [float(chunk.mean()) for chunk in np.asarray(posterior.losses).reshape(-1, 100)]
    best, stale, end = means[0], 0, None
    for position, mean in enumerate(means[1:], start=1):
        best, stale = (mean, 0) if mean < best - 1e-3 * abs(best) else (best, stale + 1)
        if stale == 3:
            end = position + 1
            break
    assert end == len(means)
    # The loss falls over the first chunks (the fit starts at the prior median, mu = 0, far
    # from 1.7), so the first chunk is an improvement to build on, not a stale one.
    assert len(means) > 3 and means[1] < means[0]


def test_amortized_guide_recovers_per_cell_latents():
    rng = np.random.default_rng(4)
    cells, genes = 600, 30
    loadings = rng.normal(0.0, 1.0, (2, genes))
    latent = rng.normal(size=(cells, 2))
    counts = rng.poisson(np.exp(0.6 * latent @ loadings + 1.5)).astype(np.float32)

    def factor_model(counts):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2, counts.shape[1]]).to_event(2))
        b = numpyro.sample("b", dist.Normal(0.0, 2.0).expand([counts.shape[1]]).to_event(1))
        with numpyro.plate("cells", counts.shape[0]) as index:
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            numpyro.sample(
                "counts", dist.Poisson(jnp.exp(0.6 * z @ w + b)).to_event(1), obs=counts[index]
            )

    posterior = fit(
        factor_model,
        {"counts": counts},
        optimizer=optax.adam(0.01),
        num_steps=2000,
        batch_size=128,
        key=0,
        progress_bar=False,
    )
    encoded = posterior.encode(batch_size=256)["z"]["mean"]
    # The latents are identified up to a linear map: regress the truth on the encoded means.
    design = np.c_[encoded, np.ones(cells)]
    coefficients, *_ = np.linalg.lstsq(design, latent, rcond=None)
    residual = latent - design @ coefficients
    r_squared = 1 - residual.var(0) / latent.var(0)
    # 30 Poisson genes at ~5 counts carry most of a 2-d signal: R^2 > 0.75 per axis.
    assert np.all(r_squared > 0.75), r_squared


# -- AmortizedGuide options ------------------------------------------------------------------------
def offset_model(counts):
    """Global loc [3]; per-cell z_c ~ N(loc, 1); Poisson counts with log-rate z_c."""
    loc = numpyro.sample("loc", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with numpyro.plate("cells", counts.shape[0]) as index:
        z = numpyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        numpyro.sample("counts", dist.Poisson(jnp.exp(z)).to_event(1), obs=counts[index])


OFFSET_COUNTS = jnp.asarray(np.random.default_rng(7).poisson(2.0, (6, 3)), jnp.float32)


def initial_params(guide):
    svi = SVI(offset_model, guide, optax.adam(0.01), Trace_ELBO())
    return svi.get_params(svi.init(jax.random.key(0), counts=OFFSET_COUNTS))


def test_init_values_set_where_the_global_guide_starts_and_unknown_names_raise():
    start = jnp.array([0.5, -1.0, 2.0])
    params = initial_params(AmortizedGuide(offset_model, hidden=(4,), init_values={"loc": start}))
    # Normal support is the real line, so the unconstrained loc is the value itself, exactly.
    np.testing.assert_array_equal(params["loc_global_loc"], start)
    broadcast = initial_params(AmortizedGuide(offset_model, hidden=(4,), init_values={"loc": 0.5}))
    np.testing.assert_array_equal(broadcast["loc_global_loc"], jnp.full(3, 0.5))
    for name in ("z", "nope"):  # a per-cell site, a site the model does not have
        with pytest.raises(ValueError, match=rf"init_values names \['{name}'\]"):
            initial_params(AmortizedGuide(offset_model, init_values={name: 0.0}))


def test_encoder_offsets_add_exactly_to_the_encoded_loc():
    def offset(data, index):
        return jnp.log1p(data["counts"][index]) + 10.0

    plain = AmortizedGuide(offset_model, hidden=(4,))
    shifted = AmortizedGuide(offset_model, hidden=(4,), encoder_offsets={"z": offset})
    params = initial_params(plain)  # same key, same encoder: one set of params serves both
    index = jnp.arange(6)
    loc, scale = plain.encode(params, {"counts": OFFSET_COUNTS}, index)["z"]
    initial_params(shifted)
    shifted_loc, shifted_scale = shifted.encode(params, {"counts": OFFSET_COUNTS}, index)["z"]
    expected = loc + offset({"counts": OFFSET_COUNTS}, index)
    # One float32 addition in both: equal up to its rounding.
    np.testing.assert_allclose(shifted_loc, expected, rtol=1e-6)
    np.testing.assert_array_equal(shifted_scale, scale)
    # The guide itself samples z from that law.
    law = trace(seed(shifted, 0)).get_trace(counts=OFFSET_COUNTS)["z"]["fn"]
    np.testing.assert_allclose(law.mean, expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"encoder_offsets names \['loc'\]"):
        initial_params(AmortizedGuide(offset_model, encoder_offsets={"loc": offset}))


def test_local_posterior_replaces_the_per_cell_law_and_encode_returns_its_moments():
    def local_posterior(values, data, index, heads):
        loc, scale = heads["z"]
        return {"z": dist.Normal(values["loc"] + 2.0 * loc, 3.0 * scale).to_event(1)}

    plain = AmortizedGuide(offset_model, hidden=(4,))
    custom = AmortizedGuide(offset_model, hidden=(4,), local_posterior=local_posterior)
    params = initial_params(plain)
    initial_params(custom)
    index = jnp.arange(6)
    loc, scale = plain.encode(params, {"counts": OFFSET_COUNTS}, index)["z"]
    mean, sd = custom.encode(params, {"counts": OFFSET_COUNTS}, index)["z"]
    # encode() evaluates the law at the global guide's median, loc itself for a Normal site.
    np.testing.assert_allclose(mean, params["loc_global_loc"] + 2.0 * loc, rtol=1e-6)
    np.testing.assert_allclose(sd, 3.0 * scale, rtol=1e-6)  # sqrt of the variance
    # In the guide, the law is built from the globals drawn in the same call.
    sites = trace(seed(substitute(custom, params), 1)).get_trace(counts=OFFSET_COUNTS)
    expected = sites["loc"]["value"] + 2.0 * loc
    np.testing.assert_allclose(sites["z"]["fn"].mean, expected, rtol=1e-6)
    np.testing.assert_allclose(jnp.sqrt(sites["z"]["fn"].variance), 3.0 * scale, rtol=1e-6)


def test_guide_spec_rebuilds_only_guides_the_file_describes():
    def offset(data, index):
        return data["counts"][index]

    def local_posterior(values, data, index, heads):
        return {"z": dist.Normal(*heads["z"]).to_event(1)}

    rebuildable = {
        "default": AmortizedGuide(offset_model),
        # Where the fit started does not change what the fitted guide computes.
        "init_values": AmortizedGuide(offset_model, init_values={"loc": 0.0}),
    }
    for guide in rebuildable.values():
        spec = guide_spec(guide)
        assert spec["default_inputs"] is True
        rebuilt = rebuild_guide(spec, offset_model)
        assert (rebuilt.hidden, rebuilt.key, rebuilt.plate) == (guide.hidden, guide.key, "cells")
    custom = {
        "encoder_inputs": AmortizedGuide(offset_model, encoder_inputs=offset),
        "encoder_offsets": AmortizedGuide(offset_model, encoder_offsets={"z": offset}),
        "local_posterior": AmortizedGuide(offset_model, local_posterior=local_posterior),
    }
    for name, guide in custom.items():
        spec = guide_spec(guide)
        assert spec["default_inputs"] is False, name
        with pytest.raises(ValueError, match="cannot be rebuilt"):
            rebuild_guide(spec, offset_model)


def regression_with_cell_effects(x, y):
    """y_c = beta . x_c + z_c + e_c with z_c ~ N(0, 1), e_c ~ N(0, 0.5^2), beta ~ N(0, I).

    Collapsing z gives y_c ~ N(beta . x_c, 1.25): the posterior of beta is Gaussian in closed
    form, and correlated when the columns of x are.
    """
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("cells", x.shape[0]) as index:
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x[index] @ beta + z, 0.5), obs=y[index])


def exact_z_posterior(values, data, index, heads):
    """z_c | beta, y_c: the product of N(0, 1) and N(y_c - beta . x_c, 0.25)."""
    residual = data["y"][index] - data["x"][index] @ values["beta"]
    return {"z": dist.Normal(residual / 1.25, (0.25 / 1.25) ** 0.5)}


def test_full_global_guide_matches_a_correlated_gaussian_posterior():
    rng = np.random.default_rng(3)
    shared = rng.normal(size=(400, 1))
    x = np.concatenate([shared, shared + 0.3 * rng.normal(size=(400, 1))], axis=1)  # corr 0.96
    y = x @ np.array([1.0, -0.5]) + rng.normal(0.0, 1.25**0.5, size=400)
    data = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    precision = x.T @ x / 1.25 + np.eye(2)
    covariance = np.linalg.inv(precision)
    mean = covariance @ (x.T @ y / 1.25)
    draws = {}
    for kind in ("full", "normal"):
        guide = AmortizedGuide(
            regression_with_cell_effects,
            hidden=(4,),
            global_guide=kind,
            local_posterior=exact_z_posterior,
            encoder_inputs=lambda data, index: data["x"][index],
        )
        posterior = fit(
            regression_with_cell_effects,
            data,
            guide=guide,
            optimizer=optax.adam(optax.exponential_decay(0.02, 3000, 0.1)),
            num_steps=3000,
            key=0,
            progress_bar=False,
        )
        draws[kind] = np.asarray(posterior.sample(jax.random.key(1), 4000)["beta"])
    # With the exact conditional of z, the ELBO's optimum over a full-covariance Gaussian is
    # the exact posterior. Its sds are ~0.18 (correlation 0.96); a tenth of an sd leaves room
    # for stochastic-gradient noise and 4000 draws (Monte Carlo error of a mean 0.003).
    sd = np.sqrt(np.diag(covariance))
    np.testing.assert_allclose(draws["full"].mean(axis=0), mean, atol=0.1 * sd.min())
    # Scales see noisier gradients than means: 20%.
    np.testing.assert_allclose(draws["full"].std(axis=0), sd, rtol=0.2)
    correlation = covariance[0, 1] / (sd[0] * sd[1])
    fitted = np.corrcoef(draws["full"].T)[0, 1]
    assert fitted == pytest.approx(correlation, abs=0.03)  # 0.96 +- Monte Carlo and SGD noise
    # Mean-field cannot: its marginal sds collapse to the conditional sds sqrt(1/precision_ii),
    # about 0.27x the true ones at this correlation.
    conditional = 1.0 / np.sqrt(np.diag(precision))
    np.testing.assert_allclose(draws["normal"].std(axis=0), conditional, rtol=0.2)
    assert np.all(draws["normal"].std(axis=0) < 0.5 * sd)


def test_auto_global_guide_picks_full_covariance_only_for_few_globals():
    def model(y, size):
        numpyro.sample("w", dist.Normal(0.0, 1.0).expand([size]).to_event(1))
        with numpyro.plate("cells", y.shape[0]) as index:
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y[index])

    y = jnp.zeros(4)
    for size, expected in (
        (FULL_RANK_LIMIT, AutoMultivariateNormal),
        (FULL_RANK_LIMIT + 1, AutoNormal),
    ):
        guide = AmortizedGuide(
            model,
            hidden=(2,),
            global_guide="auto",
            encoder_inputs=lambda data, index: data["y"][index, None],
        )
        guide._setup({"y": y, "size": size})  # what the first guide call does
        assert type(guide.global_guide) is expected
    with pytest.raises(ValueError, match="global_guide must be one of"):
        AmortizedGuide(model, global_guide="diagonal")


def gaussian_offset_model(observations):
    """loc ~ N(0, 1) [3]; per cell z_c ~ N(loc, 1), y_c ~ N(z_c, 1): y_c ~ N(loc, 2) marginally."""
    loc = numpyro.sample("loc", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with numpyro.plate("cells", observations.shape[0]) as index:
        z = numpyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        numpyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=observations[index])


def test_point_estimates_are_held_at_a_negligible_scale_and_reach_the_map():
    observations = jnp.asarray(np.random.default_rng(8).normal(1.5, 1.4, (40, 3)), jnp.float32)

    def exact_local(values, data, index, heads):
        # The exact posterior of z_c given loc and y_c, so the ELBO is the log marginal
        # likelihood of loc plus the prior: its maximiser is the MAP sum(y) / (n + 2).
        mean = 0.5 * (values["loc"] + data["observations"][index])
        return {"z": dist.Normal(mean, jnp.sqrt(0.5)).to_event(1)}

    posterior = fit(
        gaussian_offset_model,
        {"observations": observations},
        guide_kwargs={
            "local_posterior": exact_local,
            "point_estimates": ("loc",),
            "hidden": (4,),
            "encoder_inputs": lambda data, index: data["observations"][index],
        },
        optimizer=optax.adam(optax.exponential_decay(0.05, 1500, 0.02)),
        num_steps=1500,
        key=0,
        progress_bar=False,
    )
    guide = posterior.guide
    law = trace(seed(substitute(guide, posterior.params), 1)).get_trace(observations=observations)[
        "loc"
    ]["fn"]
    np.testing.assert_allclose(law.base_dist.scale, POINT_SCALE)  # held, whatever is stored
    # The stored scale never moved from its start (the held value replaces it: no gradient);
    # the start went through float32 softplus and back: ~1e-6 relative.
    np.testing.assert_allclose(posterior.params["loc_global_scale"], POINT_SCALE, rtol=1e-5)
    expected = np.asarray(observations).sum(axis=0) / (observations.shape[0] + 2)
    # Reparameterised gradients through z (sd 0.7 per cell, 40 cells) leave Adam's end point
    # within a few 1e-3 of the optimum once the step size has decayed to 1e-3.
    np.testing.assert_allclose(law.base_dist.loc, expected, atol=0.01)
    draws = posterior.sample(0, 50)["loc"]
    assert float(np.std(draws, axis=0).max()) < 1e-4  # point estimates: no posterior spread
    with pytest.raises(ValueError, match=r"point_estimates name \['z'\]"):
        initial_params(AmortizedGuide(offset_model, point_estimates=("z",)))


def test_a_truncated_or_foreign_checkpoint_is_named_in_one_clear_error(normal_data, tmp_path):
    settings = dict(guide="normal", num_steps=50, batch_size=100, key=3, progress_bar=False)
    path = tmp_path / "checkpoint.npz"
    fit(normal_mean, {"x": normal_data}, checkpoint=path, **settings)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the disk filled up while another tool copied it
    with pytest.raises(ValueError, match=r"checkpoint\.npz is not a file causalcell wrote, or"):
        fit(normal_mean, {"x": normal_data}, checkpoint=path, **settings)
    path.write_text("not an archive")
    with pytest.raises(ValueError, match=r"checkpoint\.npz is not a file causalcell wrote \(not"):
        fit(normal_mean, {"x": normal_data}, checkpoint=path, **settings)
